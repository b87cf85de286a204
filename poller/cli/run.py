"""`poller run` (the daemon) and `poller once` (burst mode)."""

from __future__ import annotations

import argparse
import asyncio

from poller.daemon import run_daemon, run_once
from poller.settings import Settings


def command(args: argparse.Namespace, settings: Settings) -> int:
    """Run the daemon, or drain the inbox once."""
    if args.command == "once":
        return asyncio.run(run_once(settings, bootstrap=not args.no_bootstrap, early=args.early))
    return asyncio.run(run_daemon(settings, early=args.early))
