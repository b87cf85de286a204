"""`poller bootstrap [--dry-run] [--json]`: what each application had and what was created."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import asdict

from poller.bootstrap import AppReport, bootstrap_settings, forward_problem
from poller.cli.output import emit_json, error, table
from poller.infobip import InfobipClient
from poller.settings import Settings


def command(args: argparse.Namespace, settings: Settings) -> int:
    """`poller bootstrap`."""
    return asyncio.run(run(settings, dry_run=args.dry_run, as_json=args.json))


async def run(settings: Settings, *, dry_run: bool, as_json: bool) -> int:
    """Bootstrap every configured application and print a report."""
    apps = [*settings.infobip.applications, *settings.forward.applications]
    if not apps:
        error(
            "no applications configured: set POLLER_INFOBIP__APPLICATIONS=app1,app2"
            " (pulled) or POLLER_FORWARD__APPLICATIONS (forwarded)"
        )
        return 2
    problem = forward_problem(settings)
    if problem is not None:
        error(problem)
        return 2
    async with InfobipClient(settings.infobip) as client:
        reports = await bootstrap_settings(client, settings, apps, dry_run=dry_run)
    print_reports(reports, as_json=as_json, dry_run=dry_run)
    return 0 if all(r.error is None for r in reports) else 1


def print_reports(reports: Sequence[AppReport], *, as_json: bool, dry_run: bool) -> None:
    """Per application: what existed and what was created."""
    if as_json:
        emit_json([asdict(r) | {"ok": r.ok} for r in reports])
        return
    rows = []
    for r in reports:
        config = r.configuration or ("(would create)" if dry_run and not r.error else "-")
        if r.configuration:
            config += " (created)" if r.configuration_created else " (existed)"
        action = r.action or ("(would create)" if dry_run and not r.error else "-")
        if r.action:
            action += " (created)" if r.action_created else " (existed)"
        other = "PULL or HTTP_FORWARD" if r.mode == "forward" else "HTTP_FORWARD"
        notes = "; ".join(
            ([r.error] if r.error else [])
            + [f"{other} {k} present" for k in r.conflicting]
            + [f"removed {k}" for k in r.removed]
        )
        rows.append([r.app, r.mode, config, action, notes or "ok"])
    table(["application", "mode", "configuration", "action", "notes"], rows)
