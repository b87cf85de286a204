"""The `poller` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
import traceback
from collections.abc import Sequence
from typing import Any

from poller import __version__, redact
from poller.cli import admin
from poller.cli.output import emit_json, error, table
from poller.settings import CONFIG_ENV, Settings, SettingsError, load_settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

REQUIRED_SETTINGS_HELP = """\
settings it needs (environment, .env or --config; `poller config show` prints them):
  POLLER_INFOBIP__BASE_URL      your account's base URL, https://xxxxx.api.infobip.com
  POLLER_INFOBIP__API_KEY       or the credentials of POLLER_INFOBIP__AUTH (basic, ibsso,
                                oauth2)
  POLLER_INFOBIP__APPLICATIONS  the application codes to bootstrap and pull (and/or
                                POLLER_FORWARD__APPLICATIONS); none only with
                                POLLER_INFOBIP__BOOTSTRAP=false or `once
                                --no-bootstrap` (the account's inbox as it is)
  POLLER_REDIS__URL             default redis://127.0.0.1:6379/0
  POLLER_SPOOL__PATH            default poller-spool.db in the working directory
Every setting is checked before anything is written; a bad one exits 2 naming it."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="poller",
        description="Move Infobip mobile-app inbound push messages into Redis streams, none lost.",
        epilog="Settings come from POLLER_* environment variables, a .env file and --config; "
        "see `poller config show`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="FILE", help=f"TOML settings file (also ${CONFIG_ENV})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "run",
        help="the daemon: bootstrap, then pull on the schedule until stopped",
        description=_wrap(
            "The daemon. Flushes what an earlier run left in the spool, bootstraps each"
            " application (a configuration with a PULL action, or an HTTP_FORWARD action),"
            " serves /livez, /readyz and /metrics, then pulls the Infobip inbox on the"
            " schedule into the spool and flushes it into Redis streams, until SIGTERM or"
            " SIGINT."
        ),
        epilog=REQUIRED_SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    once = sub.add_parser(
        "once",
        help="drain the inbox into Redis and exit (non-zero if anything stayed behind)",
        description=_wrap(
            "Bootstrap, pull until Infobip reports nothing pending, flush the spool into Redis"
            " and exit: 0 when everything reached Redis, 1 when messages stayed in the spool"
            " (the next run flushes them). For cron jobs and tests."
        ),
        epilog=REQUIRED_SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    once.add_argument("--no-bootstrap", action="store_true", help="skip the bootstrap step")

    boot = sub.add_parser(
        "bootstrap", help="ensure each application has a configuration with a PULL action"
    )
    boot.add_argument("--dry-run", action="store_true", help="report, change nothing")
    boot.add_argument("--json", action="store_true", help="print JSON")

    demo = sub.add_parser(
        "demo", help="run everything locally: simulator, embedded Valkey/Redis and the daemon"
    )
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: Ctrl-C)")
    demo.add_argument("--rate", type=float, default=50.0, help="simulated messages per second")
    demo.add_argument(
        "--applications", default="shop-ios,shop-android,news-app", help="application codes"
    )
    demo.add_argument("--plain", action="store_true", help="no live view, log lines only")
    demo.add_argument(
        "--forward",
        action="store_true",
        help="receive the applications by HTTP forward (a receiver on a free loopback port)"
        " instead of pulling them",
    )

    sub.add_parser("check", help="exit 0 when the running daemon is ready, else 1 (for probes)")
    status = sub.add_parser("status", help="spool, last poll, streams and consumer groups")
    status.add_argument("--json", action="store_true", help="print JSON")

    config = sub.add_parser("config", help="settings")
    cverbs = config.add_subparsers(dest="verb", required=True, metavar="VERB")
    show = cverbs.add_parser("show", help="print the effective settings (secrets masked)")
    show.add_argument("--json", action="store_true", help="print JSON")

    from poller.cli import tail

    tail.add_arguments(sub)
    simulate = sub.add_parser("simulate", help="serve the Infobip simulator on loopback")
    import poller.simulator.cli as simulator_cli

    simulator_cli.add_arguments(simulate)
    admin.add_arguments(sub)
    _describe_subcommands(parser)
    return parser


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=78)


def _describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description its one-line help as one, so that
    `poller COMMAND --help` always says what COMMAND does."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, child in action.choices.items():
            if not child.description and helps.get(name):
                text = str(helps[name])
                child.description = text[0].upper() + text[1:] + "."
            _describe_subcommands(child)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `poller` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except SettingsError as exc:
        for line in exc.lines:
            sys.stderr.write(f"poller: bad setting: {redact.text(line)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout left (`poller tail | head`): nothing more to tell it, and no
        # error to report. stdout goes to /dev/null so the exit's flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except Exception:
        # Unexpected: the traceback is what a bug report needs, with every secret masked
        # (an exception's text may quote a URL, a header or a request body).
        sys.stderr.write(redact.text(traceback.format_exc()))
        return EXIT_FAILURE


# Commands that answer a question rather than do the daemon's work.
_ANSWERING_COMMANDS = frozenset({"tail", "status", "check", "config"})


def _dispatch(args: argparse.Namespace) -> int:
    from poller.infobip.errors import InfobipError

    if args.command == "simulate":
        import poller.simulator.cli as simulator_cli

        return asyncio.run(simulator_cli.run(args))
    if args.command == "demo":
        from poller.demo import run_demo

        return asyncio.run(run_demo(args))

    settings = load_settings(args.config)
    from poller import logs

    level = settings.log.level
    if args.command in _ANSWERING_COMMANDS and level.upper() == "INFO":
        # Their output is the answer; progress lines ("redis connected") would be noise on
        # stderr. Warnings and errors still show, and DEBUG, when asked for, stays DEBUG.
        level = "WARNING"
    logs.configure(level, settings.log.format)
    try:
        return _run_command(args, settings)
    except InfobipError as exc:
        hint = getattr(exc, "hint", None)  # an AuthError says which scope or key is wrong
        error(f"{exc}: {hint}" if hint else str(exc))
        return EXIT_FAILURE
    except BrokenPipeError:
        raise
    except OSError as exc:
        error(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILURE


def _run_command(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "config":
        _show_config(settings, as_json=args.json)
        return EXIT_OK
    if command == "infobip":
        return asyncio.run(admin.run(args, settings))
    if command == "bootstrap":
        from poller.bootstrap import run_bootstrap_command

        return asyncio.run(run_bootstrap_command(settings, dry_run=args.dry_run, as_json=args.json))
    if command == "run":
        from poller.daemon import run_daemon

        return asyncio.run(run_daemon(settings))
    if command == "once":
        from poller.daemon import run_once

        return asyncio.run(run_once(settings, bootstrap=not args.no_bootstrap))
    if command == "check":
        from poller.status import run_check

        return asyncio.run(run_check(settings))
    if command == "status":
        from poller.status import run_status

        return asyncio.run(run_status(settings, as_json=args.json))
    if command == "tail":
        from poller.cli import tail

        return asyncio.run(tail.run(args, settings))
    raise AssertionError(f"unknown command {command}")


def flatten(settings: Settings) -> list[tuple[str, Any]]:
    """(dotted name, value) for every setting; secrets come out masked."""
    rows: list[tuple[str, Any]] = []
    for group, values in redact.strings(settings.model_dump(mode="json")).items():
        for name, value in values.items():
            rows.append((f"{group}.{name}", value))
    return rows


def _show_config(settings: Settings, *, as_json: bool) -> None:
    from poller.settings import env_name

    if as_json:
        emit_json(settings.model_dump(mode="json"))
        return
    rows = []
    for dotted, value in flatten(settings):
        shown = "" if value is None else value
        rows.append([dotted, shown, env_name(tuple(dotted.split(".")))])
    table(["setting", "value", "environment variable"], rows)
