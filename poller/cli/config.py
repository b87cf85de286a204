"""`poller config show|check|example`: the effective settings (secrets masked), a check of
them before they run, and a commented example file generated from the settings model."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict
from typing import Any

from poller import docs, preflight, redact
from poller.cli.output import emit_json, printable, say, table
from poller.env import env_name
from poller.settings import Settings

# How `config check` shows each outcome.
_MARKS = {"ok": "ok", "note": "note", "skip": "skip", "fail": "FAIL"}


def command(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Run one `config` verb (``example`` needs no settings)."""
    if args.verb == "example":
        sys.stdout.write(docs.example_toml())
        return 0
    assert settings is not None  # nosec B101  # every other verb is run with the settings
    if args.verb == "check":
        return check(settings, as_json=args.json)
    return show(settings, as_json=args.json)


def show(settings: Settings, *, as_json: bool) -> int:
    """Print the settings."""
    if as_json:
        emit_json(settings.model_dump(mode="json"))
        return 0
    rows = []
    for dotted, value in flatten(settings):
        shown = "" if value is None else value
        rows.append([dotted, shown, env_name(tuple(dotted.split(".")))])
    table(["setting", "value", "environment variable"], rows)
    return 0


def check(settings: Settings, *, as_json: bool) -> int:
    """Try the settings as `poller run` would use them; one line per check."""
    report = asyncio.run(preflight.check(settings))
    code = preflight.exit_code(report)
    if as_json:
        emit_json({"checks": [asdict(c) for c in report.checks], "exit": code})
        return code
    width = max(len(c.name) for c in report.checks)
    for c in report.checks:
        say(printable(f"{_MARKS[c.status]:<4}  {c.name:<{width}}  {c.detail}"))
    counts = {s: sum(c.status == s for c in report.checks) for s in _MARKS}
    verdict = {0: "ready to run", 1: "fix what failed", 2: "fix the settings"}[code]
    notes = f"{counts['note']} note" + ("" if counts["note"] == 1 else "s")
    say(
        f"config check: {counts['ok']} ok, {notes}, {counts['skip']} skipped,"
        f" {counts['fail']} failed: {verdict}"
    )
    return code


def flatten(settings: Settings) -> list[tuple[str, Any]]:
    """(dotted name, value) for every setting; secrets come out masked."""
    rows: list[tuple[str, Any]] = []
    for group, values in redact.strings(settings.model_dump(mode="json")).items():
        for name, value in values.items():
            rows.append((f"{group}.{name}", value))
    return rows
