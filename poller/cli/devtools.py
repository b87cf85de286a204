"""`poller demo` and `poller simulate`: the development tools (``poller.devtools``), which an
installation without them (the container image) does not have."""

from __future__ import annotations

import argparse
import asyncio

from poller.cli.output import error
from poller.devtools import demo
from poller.devtools.embedded import EmbeddedRedisError
from poller.devtools.simulator import cli as simulator_cli


def command(args: argparse.Namespace) -> int:
    """Run the demo, or serve the simulator (its options parsed here, next to it)."""
    if args.command == "demo":
        try:
            return asyncio.run(demo.run_demo(args))
        except EmbeddedRedisError as exc:  # no server to run: what to install, in one line
            error(f"poller demo needs a Redis-compatible server: {exc}")
            return 1
    parser = argparse.ArgumentParser(
        prog="poller simulate", description="Serve the Infobip simulator on loopback."
    )
    simulator_cli.add_arguments(parser)
    return asyncio.run(simulator_cli.run(parser.parse_args(args.options)))
