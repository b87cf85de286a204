"""Throughput of the Redis sink and the spool.

Run as a script (``python tests/benchmarks/bench_sink.py``) or on purpose with pytest
(``pytest tests/benchmarks/bench_sink.py -m benchmark -s``); the default run skips it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Literal

import pytest

from poller.devtools.embedded import EmbeddedRedis
from poller.spool import NewMessage, Spool, SpoolEntry
from tests.support import redis_sink

MESSAGES = 100_000
BATCH = 500
SPOOL_BATCH = 1000
RUNS = 3
APPS = ("app-a", "app-b", "app-c", "app-d")
Fsync = Literal["always", "everysec", "no"]


def payload(i: int, app: str) -> str:
    """A message of realistic size (about 400 bytes)."""
    return json.dumps(
        {
            "messageId": f"{uuid.UUID(int=i)}",
            "applicationCode": app,
            "receivedAt": "2024-05-01T10:00:00.000+0000",
            "from": f"pushRegistrationId-{i:012d}",
            "text": "Hello from the mobile app, this is an inbound message " * 2,
            "customPayload": {"orderId": i, "screen": "checkout", "tags": ["a", "b"]},
        }
    )


def spool_rows(count: int) -> list[SpoolEntry]:
    return [
        SpoolEntry(
            seq=i,
            app=APPS[i % len(APPS)],
            message_id=str(uuid.UUID(int=i)),
            received_at="2024-05-01T10:00:00.000+0000",
            pulled_at="2024-05-01T10:00:01Z",
            payload=payload(i, APPS[i % len(APPS)]),
        )
        for i in range(1, count + 1)
    ]


async def bench_write(appendonly: bool, fsync: Fsync, count: int = MESSAGES) -> float:
    """Best of ``RUNS`` messages/s through RedisSink.write, each run one flush of ``count``."""
    entries = spool_rows(count)
    rates: list[float] = []
    replays: list[float] = []
    with EmbeddedRedis(appendonly=appendonly, appendfsync=fsync) as server:
        for run in range(RUNS):
            sink = redis_sink(
                url=server.url,
                instance_id="bench",
                batch_size=BATCH,
                key_template=f"bench:{run}:{{${{app}}}}:mo",
            )
            try:
                await sink.connect()
                started = time.perf_counter()
                result = await sink.write(entries)
                rates.append(count / (time.perf_counter() - started))
                assert result.total_written == count
                started = time.perf_counter()
                again = await sink.write(entries)
                replays.append(count / (time.perf_counter() - started))
                assert again.total_skipped == count
            finally:
                await sink.close()
    label = f"appendonly={'yes' if appendonly else 'no'} appendfsync={fsync}"
    print(
        f"sink.write {label:<32} best {max(rates):>9,.0f} msg/s"
        f" median {statistics.median(rates):>9,.0f}; replay (all skipped)"
        f" {max(replays):,.0f} msg/s"
    )
    return max(rates)


def bench_spool(count: int = MESSAGES) -> tuple[float, float]:
    """Messages per second into the spool (1000 per append) and out (pending + commit)."""
    messages = [
        NewMessage(
            app=APPS[i % len(APPS)],
            message_id=str(uuid.UUID(int=i)),
            received_at="2024-05-01T10:00:00.000+0000",
            pulled_at="2024-05-01T10:00:01Z",
            payload=payload(i, APPS[i % len(APPS)]),
        )
        for i in range(count)
    ]
    with (
        tempfile.TemporaryDirectory() as tmp,
        Spool.open(Path(tmp) / "spool.db", max_rows=10**9, max_bytes=10**12) as spool,
    ):
        started = time.perf_counter()
        for start in range(0, count, SPOOL_BATCH):
            spool.append(messages[start : start + SPOOL_BATCH])
        append_rate = count / (time.perf_counter() - started)
        started = time.perf_counter()
        while rows := spool.pending(SPOOL_BATCH):
            spool.commit(rows[-1].seq)
        drain_rate = count / (time.perf_counter() - started)
    print(f"spool.append {SPOOL_BATCH}/transaction, synchronous=FULL   {append_rate:>10,.0f} msg/s")
    print(f"spool.pending+commit {SPOOL_BATCH} at a time            {drain_rate:>10,.0f} msg/s")
    return append_rate, drain_rate


async def main() -> None:
    for appendonly, fsync in ((False, "no"), (True, "everysec"), (True, "always")):
        await bench_write(appendonly, fsync)
    bench_spool()


@pytest.mark.benchmark
async def test_sink_write_throughput() -> None:
    assert await bench_write(True, "always") > 10_000


@pytest.mark.benchmark
def test_spool_throughput() -> None:
    append_rate, drain_rate = bench_spool()
    assert append_rate > 10_000
    assert drain_rate > 10_000


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
