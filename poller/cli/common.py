"""What every command that reads the settings shares: reading them, setting up the logs, and
turning the errors a command may end with into one line and an exit code."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from poller import logs, redact
from poller.cli.output import error
from poller.cli.parser import settings_overrides
from poller.config import SettingsError
from poller.infobip.errors import InfobipError
from poller.settings import Settings, load_settings

EXIT_FAILURE = 1
EXIT_USAGE = 2
# Commands that answer a question rather than do the daemon's work.
ANSWERING = frozenset({"tail", "status", "check", "config", "dead"})

Command = Callable[[argparse.Namespace, Settings], int]


def run_with_settings(command: Command, args: argparse.Namespace) -> int:
    """Read the settings, set up the logs, run ``command``; every error it ends with
    becomes one line (a bad setting: exit 2)."""
    try:
        settings = load_settings(args.config, **settings_overrides(args))
        level = settings.log.level
        if (
            args.command in ANSWERING
            and level == "INFO"
            and getattr(args, "log_level", None) is None
        ):
            # Their output is the answer; progress lines ("redis connected") would be noise
            # on stderr. Warnings and errors still show, and DEBUG, when asked for, stays.
            level = "WARNING"
        logs.configure(level, settings.log.format)
        return command(args, settings)
    except SettingsError as exc:
        for line in exc.lines:
            sys.stderr.write(f"poller: bad setting: {redact.text(line)}\n")
        return EXIT_USAGE
    except InfobipError as exc:
        hint = getattr(exc, "hint", None)  # an AuthError says which scope or key is wrong
        error(f"{exc}: {hint}" if hint else str(exc))
        return EXIT_FAILURE
    except (BrokenPipeError, KeyboardInterrupt):
        raise
    except OSError as exc:
        error(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILURE
    except Exception:
        # Unexpected: the traceback is what a bug report needs, with every secret masked
        # (an exception's text may quote a URL, a header or a request body).
        sys.stderr.write(redact.text(traceback.format_exc()))
        return EXIT_FAILURE
