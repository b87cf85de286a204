"""What the pollers of one account share through Redis: the request budget and the replica
registry, with real servers."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from poller.coordination import ReplicaState
from poller.devtools.embedded import EmbeddedRedis
from poller.sink.redis.budget import SharedBudget
from poller.sink.redis.replicas import RedisRegistry
from tests.support import redis_sink


def _account() -> str:
    return f"acct-{uuid.uuid4().hex[:8]}.api.infobip.com"


async def test_three_pollers_together_keep_to_the_account_rate(redis_url: str) -> None:
    # Tried: three processes' budgets (each its own connections) on one account at 50 req/s,
    # 20 requests each at once. Together they may not go faster than the rate.
    account = _account()
    sinks = [redis_sink(redis_url, instance_id=f"p{i}") for i in range(3)]
    budgets = [SharedBudget(s.connections, account, 50.0) for s in sinks]
    try:
        started = time.monotonic()
        await asyncio.gather(*(b.acquire() for b in budgets for _ in range(20)))
        elapsed = time.monotonic() - started
        # 60 turns, 20 ms apart: the last one at least 59 x 20 ms after the first.
        assert elapsed >= 59 * 0.020 * 0.95
        assert all(b.kind == "shared" for b in budgets)
    finally:
        for s in sinks:
            await s.close()


async def test_a_429_pauses_every_poller_of_the_account(redis_url: str) -> None:
    account = _account()
    sinks = [redis_sink(redis_url, instance_id=f"p{i}") for i in range(2)]
    first, second = (SharedBudget(s.connections, account, 100.0) for s in sinks)
    try:
        await first.acquire()
        first.pause(0.5)  # what a 429 with Retry-After: 0.5 does
        await asyncio.gather(*first._tasks)
        started = time.monotonic()
        await second.acquire()
        assert time.monotonic() - started >= 0.45
    finally:
        for s in sinks:
            await s.close()


async def test_redis_away_each_poller_keeps_to_its_share(own_redis: EmbeddedRedis) -> None:
    # Tried: the budget's Redis killed; two pollers were alive at the last heartbeat.
    sink = redis_sink(own_redis.url, instance_id="p", socket_timeout=0.5)
    budget = SharedBudget(sink.connections, _account(), 40.0, pollers=lambda: 2)
    try:
        await budget.acquire()
        own_redis.kill()
        started = time.monotonic()
        for _ in range(6):
            await budget.acquire()
        elapsed = time.monotonic() - started
        assert budget.kind == "local"
        # Its share is 20 req/s: 6 turns take at least 5 x 50 ms (the first may be at once).
        assert elapsed >= 5 * 0.050 * 0.95
        own_redis.restart()
        deadline = time.monotonic() + 30
        while budget.kind != "shared" and time.monotonic() < deadline:
            budget._down_until = 0.0  # ask Redis again now instead of in 5 s
            await budget.acquire()
        assert budget.kind == "shared"
    finally:
        await sink.close()


def _state(instance: str, rows: int, interval: float) -> ReplicaState:
    return ReplicaState(
        instance=instance,
        host="h",
        pid=1,
        version="t",
        spool=f"/var/lib/{instance}.db",
        rows=rows,
        oldest_age_s=None,
        sources=["pull"],
        interval=interval,
    )


async def test_a_poller_that_stops_with_rows_shows_as_stranded(redis_url: str) -> None:
    # Tried: two pollers beating; one stops while its spool holds 7 rows, the other leaves
    # with an empty spool.
    account = _account()
    sink = redis_sink(redis_url, instance_id="reg")
    registry = RedisRegistry(sink.connections, account)
    try:
        await registry.beat(_state("a", 7, 0.2))
        await registry.beat(_state("b", 0, 0.2))
        now, replicas = await registry.replicas()
        assert {r.instance for r in replicas if r.alive(now)} == {"a", "b"}
        await registry.leave(_state("b", 0, 0.2))
        deadline = time.monotonic() + 30
        while True:
            now, replicas = await registry.replicas()
            if any(r.stranded(now) for r in replicas) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert [(r.instance, r.rows, r.stranded(now)) for r in replicas] == [("a", 7, True)]
        # A poller started on that spool again (same instance id) is alive, not stranded.
        await registry.beat(_state("a", 0, 0.2))
        now, replicas = await registry.replicas()
        assert [r.alive(now) for r in replicas] == [True]
    finally:
        await sink.close()


@pytest.mark.parametrize("mode", ["cluster"])
async def test_budget_and_registry_work_on_a_cluster(
    redis_cluster: list[EmbeddedRedis], mode: str
) -> None:
    url = f"redis://127.0.0.1:{redis_cluster[0].port}/0"
    sink = redis_sink(url, instance_id="c", mode=mode)
    try:
        budget = SharedBudget(sink.connections, _account(), 100.0)
        await budget.acquire()
        assert budget.kind == "shared"
        registry = RedisRegistry(sink.connections, _account())
        _now, replicas = await registry.beat(_state("x", 1, 5.0))
        assert [r.instance for r in replicas] == ["x"]
    finally:
        await sink.close()
