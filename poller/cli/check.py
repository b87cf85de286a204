"""`poller check`: the running daemon's readiness as an exit code (exec probes, HEALTHCHECK)."""

from __future__ import annotations

import argparse
import asyncio

from poller.cli.output import say
from poller.health.probe import check, local_url
from poller.settings import Settings


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Ask the running daemon's /readyz; print one line; 0 when ready."""
    url = local_url(settings.health.host, settings.health.port)
    ok, reason = asyncio.run(check(url, timeout=5.0))
    say(reason if not ok else f"ok: {reason}")
    return 0 if ok else 1
