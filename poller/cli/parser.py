"""The `poller` command line's arguments: argparse only, so `poller --version` and `--help`
import nothing else; each command's module is loaded when that command runs."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from poller import __version__
from poller.env import CONFIG_ENV

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
    _shared_options(parser, default=None)
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
    check = cverbs.add_parser(
        "check",
        help="try the settings before running them, changing nothing: spool, disk, ports,"
        " Redis and its ACL, Infobip and its scopes (exit 0 ok, 1 a check failed, 2 bad"
        " settings)",
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    example = cverbs.add_parser(
        "example", help="print a commented example TOML file of every setting at its default"
    )
    example.set_defaults(no_settings=True)

    _tail_arguments(sub)
    _dead_arguments(sub)
    sub.add_parser(
        "simulate",
        help="serve the Infobip simulator on loopback (`poller simulate --help` for its options)",
        add_help=False,
    )
    _infobip_arguments(sub)
    _describe_subcommands(parser)
    _share_options(parser)
    return parser


# Log settings the flags override (poller.settings.LogSettings; a test keeps them equal).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("auto", "json", "console")
# Commands that read no settings (poller.cli.NO_SETTINGS): they take none of the options below.
SELF_CONFIGURED = frozenset({"demo", "simulate"})


def _shared_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--config, --log-level and --log-format: before the command or after it. Below the top
    the default is SUPPRESS, so an option given before the command is not reset after it."""
    parser.add_argument(
        "--config", metavar="FILE", default=default, help=f"TOML settings file (also ${CONFIG_ENV})"
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default,
        help="overrides POLLER_LOG__LEVEL",
    )
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default=default, help="overrides POLLER_LOG__FORMAT"
    )


def _share_options(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand (and verb) that reads the settings the shared options."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if name not in SELF_CONFIGURED:
                    _shared_options(child, default=argparse.SUPPRESS)
                    _share_options(child)


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What the flags set over every other source of settings."""
    log = {
        name: value
        for name, value in (
            ("level", getattr(args, "log_level", None)),
            ("format", getattr(args, "log_format", None)),
        )
        if value is not None
    }
    return {"log": log} if log else {}


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments of one command; `poller simulate`'s own options are left in ``options``
    for the simulator's parser."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "simulate":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.options = extra
    return args


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


def _tail_arguments(sub: Any) -> None:
    """The tail subcommand."""
    tail = sub.add_parser(
        "tail",
        help="print messages from the streams: from the start, from now, or through a group",
    )
    tail.add_argument("apps", nargs="*", help="application codes (default: every stream)")
    tail.add_argument(
        "--from",
        dest="start",
        choices=["start", "now"],
        default="start",
        help="without --group: from the first entry, or only new ones (default: start)",
    )
    tail.add_argument("--group", help="read through this consumer group (created if missing)")
    tail.add_argument(
        "--consumer", help="consumer name in the group (default: host and process id)"
    )
    tail.add_argument("--ack", action="store_true", help="acknowledge what is printed (--group)")
    tail.add_argument("-f", "--follow", action="store_true", help="wait for new messages")
    tail.add_argument("--count", type=int, default=None, help="stop after this many messages")
    tail.add_argument("--dead", action="store_true", help="the dead-letter streams instead")
    tail.add_argument("--json", action="store_true", help="one JSON document per message")


def _dead_arguments(sub: Any) -> None:
    """`poller dead list|show|retry|purge`."""
    dead = sub.add_parser("dead", help="dead letters: count by reason, show, re-drive, purge")
    verbs = dead.add_subparsers(dest="verb", required=True, metavar="VERB")
    app_help = "this application's only (repeatable; - : bodies with no application)"
    listing = verbs.add_parser("list", help="dead letters by stream and reason, newest first")
    listing.add_argument("apps", nargs="*", metavar="APP", help="default: every stream")
    show = verbs.add_parser("show", help="one dead letter: its reason and raw bytes, escaped")
    show.add_argument("id", metavar="ID", help="an id `poller dead list` printed")
    retry = verbs.add_parser(
        "retry", help="parse dead letters again: what parses goes to its stream, once"
    )
    retry.add_argument("--reason", metavar="TEXT", help="only those whose reason contains TEXT")
    retry.add_argument("--id", dest="ids", nargs="+", action="extend", metavar="ID", help="these")
    purge = verbs.add_parser("purge", help="delete dead letters older than a duration")
    purge.add_argument(
        "--older-than", required=True, type=_duration, metavar="D", help="7d, 12h, 30m, 90s"
    )
    for verb in (show, retry, purge):
        verb.add_argument("--app", action="append", metavar="APP", help=app_help)
    for verb in (retry, purge):
        verb.add_argument("--dry-run", action="store_true", help="report, change nothing")
    for verb in (listing, show, retry, purge):
        _json_flag(verb)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not (number.isascii() and number.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number and a unit: 7d, 12h, 30m, 90s")
    return int(number) * units[unit]


def _infobip_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `infobip configurations|actions|pull`."""
    infobip = sub.add_parser("infobip", help="Infobip configurations, actions and pull by hand")
    groups = infobip.add_subparsers(dest="group", required=True, metavar="GROUP")

    configs = groups.add_parser("configurations", help="an application's configurations")
    cverbs = configs.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, helptext in (
        ("list", "list the configurations"),
        ("get", "show one configuration"),
        ("create", "create the configuration (409 if one exists)"),
        ("delete", "delete a configuration and its actions"),
    ):
        p = cverbs.add_parser(verb, help=helptext)
        _json_flag(p)
        p.add_argument("app", metavar="APPLICATION_CODE")
        if verb in ("get", "delete"):
            p.add_argument("key", metavar="CONFIGURATION_KEY")

    actions = groups.add_parser("actions", help="the actions on a configuration")
    averbs = actions.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, helptext in (
        ("list", "list the actions"),
        ("create", "create an action (PULL or HTTP_FORWARD)"),
        ("delete", "delete an action"),
    ):
        p = averbs.add_parser(verb, help=helptext)
        _json_flag(p)
        p.add_argument("app", metavar="APPLICATION_CODE")
        p.add_argument(
            "--configuration",
            metavar="KEY",
            help="configuration key (default: the application's only configuration)",
        )
        if verb == "create":
            p.add_argument("--type", choices=("PULL", "HTTP_FORWARD"), default="PULL")
            p.add_argument("--forward-url", help="where HTTP_FORWARD posts messages")
            p.add_argument("--callback-data", help="callbackData stored on the action")
        if verb == "delete":
            p.add_argument("action_key", metavar="ACTION_KEY")

    pull = groups.add_parser(
        "pull", help="pull messages once (they are consumed: Infobip hands each out only once)"
    )
    _json_flag(pull)
    pull.add_argument("--limit", type=_limit, default=50, help="1..1000 (default 50)")
    pull.add_argument("--out", metavar="FILE.jsonl", help="append the messages to this file")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return value
