"""`poller simulate`: run the simulator in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal

from poller.simulator.app import Simulator


def _applications(text: str) -> list[str]:
    codes = [code.strip() for code in text.split(",") if code.strip()]
    if not codes:
        raise argparse.ArgumentTypeError("give at least one application code")
    return codes


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError("give a number of seconds >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulate command's options to parser."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8089, help="port to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--api-key", default="sim-api-key", help="API key clients must send (default: %(default)s)"
    )
    parser.add_argument(
        "--applications",
        type=_applications,
        default=["app-alpha", "app-beta", "app-gamma"],
        help="comma-separated application codes (default: app-alpha,app-beta,app-gamma)",
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="generated messages per second (default: 0)"
    )
    parser.add_argument(
        "--auto-configure",
        action="store_true",
        help="create a configuration with a PULL action on every application at start",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for repeatable runs")
    parser.add_argument(
        "--throttle-rps",
        type=float,
        default=10.0,
        help="requests per second before 429, 0 for none (default: %(default)s)",
    )
    parser.add_argument(
        "--pull-delay",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="added to every pull answer, as a network round trip; the messages leave the"
        " inbox when the request arrives (default: %(default)s)",
    )


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    simulator = Simulator(
        api_key=args.api_key,
        applications=args.applications,
        auto_configure=args.auto_configure,
        rate=args.rate,
        throttle_rps=args.throttle_rps,
        pull_delay=args.pull_delay,
        seed=args.seed,
    )
    try:
        base_url = await simulator.start(args.host, args.port)
    except OSError as exc:
        print(f"poller simulate: cannot listen on {args.host}:{args.port}: {exc.strerror}")
        return 1
    print(f"Infobip simulator listening on {base_url}")
    print(
        f"export POLLER_INFOBIP__BASE_URL={base_url} POLLER_INFOBIP__API_KEY={args.api_key}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await simulator.stop()
    return 0
