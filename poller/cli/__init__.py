"""The `poller` command line: presentation only. The domain modules return data; the modules
of this package read the settings, call them and print.

Each command lives in a module of its own, loaded when the command runs (``COMMANDS``), so
`poller --version` and `poller check` load neither the daemon nor the simulator.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from poller.cli.parser import parse
from poller.stop import EarlySignals

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Command -> the module whose ``command`` runs it.
COMMANDS = {
    "run": "poller.cli.run",
    "once": "poller.cli.run",
    "bootstrap": "poller.cli.bootstrap",
    "check": "poller.cli.check",
    "status": "poller.cli.status",
    "config": "poller.cli.config",
    "tail": "poller.cli.tail",
    "dead": "poller.cli.dead",
    "infobip": "poller.cli.admin",
    "demo": "poller.cli.devtools",
    "simulate": "poller.cli.devtools",
}
# Commands that run without the settings (the development tools bring their own).
NO_SETTINGS = frozenset({"demo", "simulate"})
# Commands whose start a signal must not cut short without a word (they hold the spool).
LONG_RUNNING = frozenset({"run", "once"})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `poller` console script."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    # Caught from here on, before the imports and the settings: a SIGTERM during start-up
    # then stops the daemon with a log line instead of killing it.
    early = EarlySignals() if LONG_RUNNING & set(args_list) else None
    try:
        args = parse(args_list)
        args.early = early
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout left (`poller tail | head`): nothing more to tell it, and no
        # error to report. stdout goes to /dev/null so the exit's flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    finally:
        if early is not None:
            early.restore()


def _dispatch(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(COMMANDS[args.command])
    except ModuleNotFoundError as exc:
        if args.command in NO_SETTINGS and (exc.name or "").startswith("poller.devtools"):
            sys.stderr.write(
                f"poller: error: `poller {args.command}` is a development tool this installation"
                " does not have (the container image ships the daemon only); run it from a"
                " clone of the repository: pip install -e '.[embedded]'\n"
            )
            return EXIT_FAILURE
        raise
    if args.command in NO_SETTINGS or getattr(args, "no_settings", False):
        return int(module.command(args))
    # The settings (and the libraries they validate with) are loaded for these commands only.
    common = importlib.import_module("poller.cli.common")
    return int(common.run_with_settings(module.command, args))


__all__ = ["COMMANDS", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main"]
