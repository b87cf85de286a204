"""`poller config show [--json]`: the effective settings, secrets masked, and where each came
from (env, .env, secrets, TOML or default)."""

from __future__ import annotations

import argparse
from typing import Any

from poller import redact
from poller.cli.output import emit_json, table
from poller.env import env_name
from poller.settings import Settings


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Print the settings."""
    if args.json:
        emit_json(settings.model_dump(mode="json"))
        return 0
    rows = []
    for dotted, value in flatten(settings):
        shown = "" if value is None else value
        rows.append([dotted, shown, env_name(tuple(dotted.split("."))), settings.origin(dotted)])
    table(["setting", "value", "environment variable", "from"], rows)
    return 0


def flatten(settings: Settings) -> list[tuple[str, Any]]:
    """(dotted name, value) for every setting; secrets come out masked."""
    rows: list[tuple[str, Any]] = []
    for group, values in redact.strings(settings.model_dump(mode="json")).items():
        for name, value in values.items():
            rows.append((f"{group}.{name}", value))
    return rows
