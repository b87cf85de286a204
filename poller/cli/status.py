"""`poller status [--json]`: spool, the daemon's readiness, streams and consumer groups."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from poller.cli.output import emit_json, say, table
from poller.health.probe import failing
from poller.settings import Settings
from poller.status import status_report


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Print the status; 1 when something could not be found out."""
    report = asyncio.run(status_report(settings))
    if args.json:
        emit_json(report)
    else:
        _print(report)
    return 0 if not report["errors"] else 1


def _print(report: dict[str, Any]) -> None:
    spool = report["spool"]
    if spool:
        age = spool["oldest_age_seconds"]
        say(
            f"spool {spool['path']}: {spool['rows']} rows ({spool['bytes']} bytes) waiting"
            f"{f', oldest {age:.0f} s' if age is not None else ''}; "
            f"cap {spool['cap_rows']} rows / {spool['cap_bytes']} bytes; "
            f"{spool['quarantined']} quarantined ({spool['quarantine_pending']} not dead-lettered)"
        )
    health = report["health"]
    if health and health["reachable"]:
        body = health["body"]
        checks = body.get("checks", {}) if isinstance(body, dict) else {}
        last = checks.get("pull", {}).get("detail", "receiving by HTTP forward")
        state = "ready" if health["ready"] else "NOT READY: " + "; ".join(failing(body))
        say(f"daemon: {state}; {last}")
    elif health:
        say(f"daemon: not running here (no health server at {health['url']})")
    rows = []
    for stream in report["streams"] or []:
        if not stream["groups"]:
            rows.append([stream["key"], stream["length"], "-", "", "", ""])
        for g in stream["groups"]:
            lag = "?" if g["lag"] is None else g["lag"]
            rows.append(
                [stream["key"], stream["length"], g["name"], g["consumers"], g["pending"], lag]
            )
    if report["streams"] is not None:
        table(["stream", "length", "group", "consumers", "pending", "lag"], rows)
    if report.get("replicas") is not None:
        table(
            ["poller", "state", "host", "pid", "sources", "spool rows", "heartbeat"],
            [
                [
                    r["instance"],
                    r["state"].upper() if r["state"] == "stranded" else r["state"],
                    r["host"],
                    r["pid"],
                    ",".join(r["sources"]),
                    r["rows"],
                    f"{r['heartbeat_seconds_ago']:g} s ago",
                ]
                for r in report["replicas"]
            ],
        )
    for err in report["errors"]:
        say(f"problem: {err}")
