"""End to end: messages/s from the simulator's inbox through the spool into Redis streams.

Run: python tests/benchmarks/bench_pipeline.py [messages]
Drains N messages over three applications with `once` (pull limit 1000, the simulator's
throttle raised so the pipeline, not Infobip's 10 requests/s, is measured), and reports the
throughput, the peak resident memory of this process, and the same with Infobip's real
throttle (10 pulls/s x 1000 = the ceiling a real account allows).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

from poller import logs
from poller.daemon import run_once
from poller.devtools.embedded import EmbeddedRedis
from poller.devtools.simulator import Simulator
from poller.settings import Settings

APPS = ["bench-a", "bench-b", "bench-c"]


async def drain(n: int, rate_limit: float, redis_url: str, workdir: Path) -> float:
    sim = Simulator(applications=APPS, auto_configure=True, throttle_rps=10_000, seed=1)
    await sim.start()
    try:
        for i, app in enumerate(APPS):
            sim.inject(app, n // len(APPS) + (1 if i < n % len(APPS) else 0))
        settings = Settings(
            infobip={
                "base_url": sim.base_url,
                "api_key": "sim-api-key",
                "applications": APPS,
                "rate_limit": rate_limit,
            },
            redis={
                "url": redis_url,
                "stream_key_template": f"bench:{uuid.uuid4().hex}:{{${{app}}}}",
            },
            spool={"path": workdir / f"{uuid.uuid4().hex}.db"},
            health={"enabled": False},
        )
        started = time.perf_counter()
        code = await run_once(settings, bootstrap=False)
        seconds = time.perf_counter() - started
        assert code == 0
        assert sim.inbox_depth == 0
        return seconds
    finally:
        await sim.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    logs.configure("WARNING", "console")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(appendfsync="everysec") as redis:
        workdir = Path(tmp)
        fast = asyncio.run(drain(n, 1000.0, redis.url, workdir))
        real = asyncio.run(drain(min(n, 30_000), 10.0, redis.url, workdir))
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"server: {redis.version}")
    print(f"pipeline, unthrottled: {n} messages in {fast:.2f} s = {n / fast:,.0f} msg/s")
    capped = min(n, 30_000)
    print(
        f"with Infobip's 10 requests/s: {capped} messages in {real:.2f} s"
        f" = {capped / real:,.0f} msg/s"
    )
    print(f"peak RSS of the process (simulator + poller): {rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
