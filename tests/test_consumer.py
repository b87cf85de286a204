"""The consumer helper reads what the sink wrote, acks, and takes over stale entries."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from poller.consumer import StreamConsumer, parse_entry
from poller.sink import MO_SCHEMA
from poller.sink.redis import RedisSink
from poller.spool import SpoolEntry


def entry(seq: int) -> SpoolEntry:
    payload = {"messageId": f"m{seq}", "text": f"hi {seq}", "extra": {"n": seq}}
    return SpoolEntry(
        seq, "app1", f"m{seq}", "2024-05-01T10:00:00Z", "2024-05-01T10:00:01Z", json.dumps(payload)
    )


async def fill(redis_url: str, key_template: str, count: int) -> str:
    sink = RedisSink(url=redis_url, key_template=key_template, instance_id="c")
    try:
        await sink.connect()
        await sink.write([entry(seq) for seq in range(1, count + 1)])
        return sink.stream_key("app1")
    finally:
        await sink.close()


async def test_group_read_and_ack(redis_url: str, key_template: str, redis_client: Redis) -> None:
    key = await fill(redis_url, key_template, 5)
    consumer = StreamConsumer(redis_client, key, "billing", "w1")
    assert await consumer.ensure_group() is True
    assert await consumer.ensure_group() is False
    messages = await consumer.read(count=3)
    assert [m.message_id for m in messages] == ["m1", "m2", "m3"]
    first = messages[0]
    assert first.app == "app1"
    assert first.schema == MO_SCHEMA
    assert first.payload == {"messageId": "m1", "text": "hi 1", "extra": {"n": 1}}
    assert first.error is None
    assert await consumer.ack([m.entry_id for m in messages]) == 3
    rest = await consumer.read(count=10, block_ms=10)
    assert [m.message_id for m in rest] == ["m4", "m5"]
    assert await consumer.read(count=10, block_ms=10) == []
    pending = await redis_client.xpending(key, "billing")
    assert pending["pending"] == 2


async def test_ensure_group_creates_the_stream(redis_client: Redis, key_template: str) -> None:
    key = key_template.replace("${app}", "fresh")
    consumer = StreamConsumer(redis_client, key, "g", "w1", start_id="$")
    assert await consumer.ensure_group()
    assert await redis_client.exists(key) == 1
    assert await consumer.read(count=1) == []


async def test_claim_stale_takes_over_a_crashed_consumer(
    redis_url: str, key_template: str, redis_client: Redis
) -> None:
    key = await fill(redis_url, key_template, 4)
    crashed = StreamConsumer(redis_client, key, "g", "crashed")
    await crashed.ensure_group()
    taken = await crashed.read(count=4)
    assert len(taken) == 4
    rescuer = StreamConsumer(redis_client, key, "g", "rescuer")
    assert await rescuer.claim_stale(min_idle_ms=60_000) == []
    await asyncio.sleep(0.05)
    claimed = await rescuer.claim_stale(min_idle_ms=20, count=3)
    assert [m.message_id for m in claimed] == ["m1", "m2", "m3"]
    claimed += await rescuer.claim_stale(min_idle_ms=20, count=10)
    assert [m.message_id for m in claimed] == ["m1", "m2", "m3", "m4"]
    assert await rescuer.ack([m.entry_id for m in claimed]) == 4


def test_malformed_entry_is_flagged_not_raised() -> None:
    message = parse_entry(b"1-1", {b"id": b"x", b"payload": b"{broken"})
    assert message.error is not None
    assert message.payload == {}
    assert message.entry_id == "1-1"
    assert parse_entry("1-2", {"payload": "[1]"}).error == "payload is not a JSON object"
