"""`poller simulate`: run the simulator in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal

from poller.devtools.simulator.app import Simulator
from poller.devtools.simulator.forward import ForwarderSettings
from poller.devtools.simulator.state import valid_forward_url


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


def _forward(text: str) -> tuple[str, str]:
    app, sep, url = text.partition("=")
    if not sep or not app.strip() or not valid_forward_url(url.strip()):
        raise argparse.ArgumentTypeError(f"expected APP=http(s)://URL, not {text!r}")
    return app.strip(), url.strip()


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("give an integer >= 0")
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
    defaults = ForwarderSettings()
    parser.add_argument(
        "--forward",
        type=_forward,
        action="append",
        default=[],
        metavar="APP=URL",
        help="give APP an HTTP_FORWARD action to URL: its messages are POSTed there instead of"
        " going to the pull inbox (repeatable)",
    )
    parser.add_argument(
        "--forward-batch",
        type=_count,
        default=defaults.batch_size,
        metavar="N",
        help="messages per forward POST, 1 for one per request (default: %(default)s)",
    )
    parser.add_argument(
        "--forward-in-flight",
        type=_count,
        default=defaults.in_flight,
        metavar="N",
        help="forward POSTs on their way at once, per URL (default: %(default)s)",
    )
    parser.add_argument(
        "--forward-timeout",
        type=_seconds,
        default=defaults.timeout,
        metavar="SECONDS",
        help="forward connect/read timeout; a timeout is retried (default: %(default)s)",
    )
    parser.add_argument(
        "--forward-max-attempts",
        type=_count,
        default=defaults.max_attempts,
        metavar="N",
        help="attempts per forwarded message before it is given up, 0 for no limit"
        " (default: %(default)s)",
    )


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    try:
        forward = ForwarderSettings(
            batch_size=args.forward_batch,
            in_flight=args.forward_in_flight,
            timeout=args.forward_timeout,
            max_attempts=args.forward_max_attempts or None,
        )
    except ValueError as exc:
        print(f"poller simulate: {exc}")
        return 2
    unknown = sorted({app for app, _ in args.forward} - set(args.applications))
    if unknown:
        print(f"poller simulate: --forward names applications not in --applications: {unknown}")
        return 2
    simulator = Simulator(
        api_key=args.api_key,
        applications=args.applications,
        auto_configure=args.auto_configure,
        rate=args.rate,
        throttle_rps=args.throttle_rps,
        pull_delay=args.pull_delay,
        forward=forward,
        seed=args.seed,
    )
    for app, url in args.forward:
        simulator.configure_forward(app, url)
    try:
        base_url = await simulator.start(args.host, args.port)
    except OSError as exc:
        print(f"poller simulate: cannot listen on {args.host}:{args.port}: {exc.strerror}")
        return 1
    print(f"Infobip simulator listening on {base_url}")
    for app, url in args.forward:
        print(f"{app}: messages forwarded to {url}")
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
