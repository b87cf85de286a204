"""`poller dead list|show|retry|purge`: the dead letters, as an operator inspects and re-drives
them. ``poller.deadletters`` does the work through the sink's ``DeadLetters``; this module
prints. Everything a letter holds is printed escaped (``output.printable``, as `poller tail`
does) with secrets masked."""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from poller import deadletters
from poller.cli.output import emit_json, error, printable, say
from poller.deadletters import RetryReport, StreamSummary
from poller.settings import Settings
from poller.sink import DeadLetter, SinkError
from poller.sink.factory import open_sink

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# What stands for "bodies with no application" where an application code is asked for.
NO_APP = "-"
# Entry ids printed per reason by `dead list` (--json gives every one).
IDS_SHOWN = 10


def command(args: argparse.Namespace, settings: Settings) -> int:
    """`poller dead VERB`."""
    return asyncio.run(run(args, settings))


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Connect, run the verb, close; a sink error is one line and exit 1."""
    ids = list(getattr(args, "ids", None) or ([args.id] if getattr(args, "id", None) else []))
    bad = deadletters.bad_ids(ids)
    if bad:
        error(
            f"not a dead letter id: {printable(', '.join(bad))} (ids look like"
            " 1767261600000-0: `poller dead list` prints them)"
        )
        return EXIT_USAGE
    sink = open_sink(settings, "dead")
    try:
        await sink.connect()
        dead = sink.dead_letters()
        apps = _apps(args)
        if args.verb == "list":
            _print_list(await deadletters.summary(dead, apps), as_json=args.json)
            return EXIT_OK
        if args.verb == "show":
            return _print_show(args.id, await dead.find([args.id], apps), as_json=args.json)
        if args.verb == "retry":
            report = await deadletters.retry(
                dead,
                apps=apps,
                reason=args.reason,
                ids=ids,
                dry_run=args.dry_run,
                forward_apps=settings.forward.applications,
            )
            _print_retry(report, as_json=args.json)
            return EXIT_FAILURE if report.missing else EXIT_OK
        removed = await deadletters.purge(dead, args.older_than, apps, dry_run=args.dry_run)
        _print_purge(removed, args, as_json=args.json)
        return EXIT_OK
    except SinkError as exc:
        error(str(exc))
        return EXIT_FAILURE
    finally:
        await sink.close()


def _apps(args: argparse.Namespace) -> list[str]:
    named = getattr(args, "apps", None) or getattr(args, "app", None) or []
    return ["" if app == NO_APP else app for app in named]


def _n(count: int, word: str) -> str:
    """``1 message``, ``2 messages``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _when(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _app_shown(app: str) -> str:
    return app if app else f"{NO_APP} (no application)"


def _print_list(summaries: list[StreamSummary], *, as_json: bool) -> None:
    if as_json:
        emit_json(
            [
                {
                    "stream": s.stream.stream,
                    "app": s.app,
                    "length": s.stream.length,
                    "redriven_total": s.stream.redriven,
                    "purged_total": s.stream.purged,
                    "reasons": [
                        {
                            "reason": r.reason,
                            "count": r.count,
                            "newest": _when(r.newest),
                            "ids": r.ids,
                        }
                        for r in s.reasons
                    ],
                }
                for s in summaries
            ]
        )
        return
    if not summaries:
        say("no dead-letter stream found")
        return
    for s in summaries:
        say(
            printable(
                f"{s.stream.stream}{'' if s.app is None else f'  app {_app_shown(s.app)}'}:"
                f" {_n(s.stream.length, 'dead letter')}"
                f" (re-driven so far: {_n(s.stream.redriven, 'message')},"
                f" purged: {s.stream.purged})"
            )
        )
        for r in s.reasons:
            say(printable(f"  {r.count:>6}  {r.reason}  (newest {_when(r.newest)})"))
            more = f" (+{len(r.ids) - IDS_SHOWN} more: --json lists every id)"
            shown = " ".join(r.ids[:IDS_SHOWN]) + (more if len(r.ids) > IDS_SHOWN else "")
            say(f"          ids: {shown}")


def _raw_text(raw: bytes) -> str:
    """The bytes as text a terminal shows and does not act on: bytes that are not UTF-8 as
    ``\\xNN``, control characters escaped as `poller tail` escapes them."""
    return printable(raw.decode("utf-8", "backslashreplace"))


def _print_show(entry_id: str, letters: list[DeadLetter], *, as_json: bool) -> int:
    if not letters:
        error(f"no dead letter {entry_id} (`poller dead list` prints the ids)")
        return EXIT_FAILURE
    if as_json:
        emit_json([_letter_json(letter) for letter in letters])
        return EXIT_OK
    for index, letter in enumerate(letters):
        if index:
            say("")
        for name, value in (
            ("stream", letter.stream),
            ("id", letter.entry_id),
            ("dead since", _when(letter.dead_at)),
            ("app", _app_shown(letter.app)),
            ("pulled at", letter.pulled_at),
            ("reason", letter.reason),
            ("raw", f"{len(letter.raw)} bytes, escaped:"),
        ):
            say(printable(f"{name:<11} {value}"))
        say(_raw_text(letter.raw))
    return EXIT_OK


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "stream": letter.stream,
        "id": letter.entry_id,
        "dead_since": _when(letter.dead_at),
        "app": letter.app,
        "pulled_at": letter.pulled_at,
        "reason": letter.reason,
        "raw": _raw_text(letter.raw),
        "raw_base64": base64.b64encode(letter.raw).decode(),
    }


def _print_retry(report: RetryReport, *, as_json: bool) -> None:
    if as_json:
        emit_json(
            {
                "dry_run": report.dry_run,
                "missing": report.missing,
                "letters": [
                    {
                        "stream": o.letter.stream,
                        "id": o.letter.entry_id,
                        "status": o.status,
                        "messages": o.messages,
                        "reasons": o.reasons,
                        "kept": o.kept,
                    }
                    for o in report.outcomes
                ],
            }
        )
        return
    would = "would be " if report.dry_run else ""
    unchanged: Counter[str] = Counter()
    for o in report.outcomes:
        where = f"{o.letter.stream} {o.letter.entry_id}"
        to = ", ".join(f"{_n(n, 'message')} to {app}" for app, n in sorted(o.messages.items()))
        if o.status == "unchanged":
            unchanged[o.reasons[0] if o.reasons else o.letter.reason] += 1
        elif o.status == "already":
            say(printable(f"already     {where}: another retry took it first ({to})"))
        elif o.status == "redriven":
            left = f"; still failing in its place: {'; '.join(o.reasons)}" if o.reasons else ""
            say(printable(f"re-driven   {where}: {to}{left}"))
        else:
            now = f" (now {' '.join(o.kept)})" if o.kept else ""
            say(printable(f"still fails {where}: {'; '.join(o.reasons)}{now}"))
    for reason, count in unchanged.most_common():
        say(printable(f"unchanged   {_n(count, 'letter')}: {reason}"))
    for missing in report.missing:
        sys.stderr.write(f"poller: no dead letter {missing}\n")
    say(
        f"{_n(len(report.outcomes), 'letter')}: {report.count('redriven')} {would}re-driven"
        f" ({_n(report.messages, 'message')}), {report.count('failing')} still failing for a new"
        f" reason, {report.count('unchanged')} unchanged, {report.count('already')} taken by"
        " another retry"
    )


def _print_purge(removed: dict[str, int], args: argparse.Namespace, *, as_json: bool) -> None:
    if as_json:
        emit_json({"dry_run": args.dry_run, "removed": removed})
        return
    verb = "would purge" if args.dry_run else "purged"
    for stream, count in removed.items():
        if count:
            say(printable(f"{verb} {_n(count, 'dead letter')} from {stream}"))
    say(f"{verb} {_n(sum(removed.values()), 'dead letter')} in all")
