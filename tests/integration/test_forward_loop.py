"""No request holds the daemon's event loop: hostile bodies posted to the receiver running in
the test's loop (with its spool, its flusher and a real redis-server), while a sampler
measures how long the loop was held.

How it is measured, and why so: a task sleeps 10 ms again and again; the time it wakes late
is the loop's lag. On a loaded 2-core machine the whole process is also put off the CPU by
the kernel at times, which shows as lag that no code of ours caused, so each sample counts
only the part the process spent computing: ``min(lag, CPU time of the process meanwhile)``.
Code that holds the loop (on it, or in a thread holding the GIL: the regex engine, a full
collection of the cyclic garbage collector) computes through its lag; a process waiting for
a CPU does not. The bound on that computing part is 50 ms, half the 100 ms the loop may be
held by the clock: on a CPU shared two ways it is still within 100 ms. A request is measured
three times and its smallest worst sample counts: a real hold repeats, a stall of the
machine does not. The client sends from a thread, its bodies built before the sampler
starts. Measured on a loaded 2-core machine: at most 16 ms held (37 ms of wall lag); before
masking went window by window and the start's heap was frozen, 85 ms held (190 ms of wall
lag) for the body of 84,000 codes, 37 ms for 4 MiB that is not JSON."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from poller.devtools.simulator import Simulator
from tests.support import Forwarding, forwarding, make_settings

TOKEN = "forward-token-0123456789abcdef"
APP = "app-fwd"
MIB = 1024 * 1024
HELD_AT_MOST = 0.050
TICK = 0.01


class Sampler:
    """The worst time the loop was held while it ran (see the module's docstring)."""

    def __init__(self) -> None:
        self.held = 0.0
        self.lag = 0.0

    async def run(self) -> None:
        while True:
            wall, cpu = time.perf_counter(), time.process_time()
            await asyncio.sleep(TICK)
            lag = time.perf_counter() - wall - TICK
            self.lag = max(self.lag, lag)
            self.held = max(self.held, min(lag, time.process_time() - cpu))


@contextlib.asynccontextmanager
async def sampling() -> AsyncIterator[Sampler]:
    sampler = Sampler()
    task = asyncio.create_task(sampler.run())
    await asyncio.sleep(TICK * 2)
    try:
        yield sampler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def message(n: int, **extra: Any) -> dict[str, Any]:
    return {"messageId": f"fwd-{n:05d}", "applicationCode": APP, "text": f"hi {n}", **extra}


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


JSON = {"Content-Type": "application/json"}
GZIP = {**JSON, "Content-Encoding": "gzip"}


def hostile() -> dict[str, tuple[bytes, dict[str, str], int]]:
    """Name -> (body, headers, status expected)."""
    deep = b'{"messageId":"deep","applicationCode":"app-fwd","p":' + b"[" * 995 + b"]" * 995 + b"}"
    many = [message(n) | {"text": "x" * 440} for n in range(8_000)]
    return {
        "150 KB applicationCode of 'token'": (
            dumps([message(1, applicationCode="token" * 30_000)]),
            JSON,
            200,
        ),
        "995-deep nesting": (b"[" + deep + b"," + dumps(message(2)) + b"]", JSON, 200),
        "4 MiB of messages": (dumps(many), JSON, 200),
        "4 MiB that is not JSON": (b"token=" + b"token" * (4 * MIB // 5 - 2), JSON, 400),
        "84,000 codes": (
            dumps([{"messageId": str(n), "applicationCode": f"c{n}"} for n in range(84_000)]),
            JSON,
            200,
        ),
        "1 MB messageId": (dumps([message(3, messageId="i" * 1_000_000)]), JSON, 200),
        "gzip bomb past the cap": (gzip.compress(dumps(message(4, p=" " * 5 * MIB))), GZIP, 413),
        "gzip of 3 MiB": (gzip.compress(dumps(message(5, p=" " * 3 * MIB))), GZIP, 200),
        "latin-1 of 3 MiB": (
            json.dumps(message(6, text="é" * 3 * MIB), ensure_ascii=False).encode("latin-1"),
            {"Content-Type": "text/plain; charset=latin-1"},
            200,
        ),
    }


@pytest.fixture
async def receiver(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path, key_template: str
) -> AsyncIterator[Forwarding]:
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        forward={"applications": [APP], "token": TOKEN, "port": 0, "read_timeout": 30.0},
        spool={"max_rows": 1_000_000},
    )
    async with forwarding(settings) as started:
        # As `poller run` does once it has started (the test process' own heap frozen too).
        started.rt.freeze_heap()
        try:
            yield started
        finally:
            gc.unfreeze()


async def held_by(receiver: Forwarding, send: Callable[[], int], want: int) -> Sampler:
    """The worst hold of the loop while ``send`` runs in a thread and the spool empties."""
    async with sampling() as sampler:
        status = await asyncio.to_thread(send)
        assert status == want
        await receiver.settled()
    return sampler


def post_to(
    client: httpx.Client, url: str, headers: dict[str, str], body: bytes = b"{}"
) -> Callable[[], int]:
    return lambda: client.post(url, content=body, headers=headers).status_code


async def test_no_hostile_request_holds_the_loop_past_100_ms(receiver: Forwarding) -> None:
    """Tried: each body of ``hostile()`` (a 150 KB code of "token" blocked the loop 49.8 s
    when masking was quadratic), and an unauthenticated request whose header is "token" *
    1,600 (164 ms a request in aiohttp's error log line), and one of "token" * 2,000 (past
    the header limit: aiohttp's parser refuses it). Each, three times."""
    client = httpx.Client(timeout=60, trust_env=False)

    cases = {
        name: (post_to(client, receiver.url, headers, body), want)
        for name, (body, headers, want) in hostile().items()
    }
    no_token = receiver.url.rsplit("/", 1)[0]
    for times, want in ((1_600, 403), (2_000, 400)):  # a wrong token; past the header limit
        header = {"X-Forward-Token": "token" * times, **JSON}
        cases[f"header of 'token' * {times:,}"] = (post_to(client, no_token, header), want)
    report: dict[str, tuple[float, float]] = {}
    try:
        for name, (send, want) in cases.items():
            runs = [await held_by(receiver, send, want) for _ in range(3)]
            best = min(runs, key=lambda s: s.held)
            report[name] = (best.held, max(s.lag for s in runs))
    finally:
        client.close()
    for name, (held, lag) in report.items():
        print(f"{name}: held {held * 1000:.0f} ms (worst wall lag {lag * 1000:.0f} ms)")
    assert {n: round(h, 3) for n, (h, _) in report.items() if h > HELD_AT_MOST} == {}
