"""The consumer helper reads what the sink wrote, acks, and takes over stale entries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from redis.asyncio import Redis

from poller.consumer import StreamConsumer
from poller.sink import MO_SCHEMA
from poller.spool import SpoolEntry
from tests.support import redis_sink


def entry(seq: int) -> SpoolEntry:
    payload = {"messageId": f"m{seq}", "text": f"hi {seq}", "extra": {"n": seq}}
    return SpoolEntry(
        seq, "app1", f"m{seq}", "2024-05-01T10:00:00Z", "2024-05-01T10:00:01Z", json.dumps(payload)
    )


async def fill(redis_url: str, key_template: str, count: int) -> str:
    sink = redis_sink(url=redis_url, key_template=key_template, instance_id="c")
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


async def test_a_consumer_that_dies_before_acking_has_its_message_delivered_to_another(
    redis_url: str, key_template: str, redis_client: Redis
) -> None:
    # Tried: worker-1 takes three messages and dies (its task cancelled) after acking one;
    # worker-2 gets the other two once they have been idle past the claim time.
    key = await fill(redis_url, key_template, 3)
    first = StreamConsumer(redis_client, key, "g", "worker-1")
    got: list[str] = []

    async def dies() -> None:
        async for delivery in first.deliveries(claim_idle_ms=200, block_ms=50):
            got.append(delivery.message.message_id)
            if len(got) == 1:
                await delivery.ack()

    task = asyncio.create_task(dies())
    while len(got) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    second = StreamConsumer(redis_client, key, "g", "worker-2")
    rescued: list[tuple[str, int]] = []
    async with asyncio.timeout(5):
        async for delivery in second.deliveries(claim_idle_ms=200, block_ms=50):
            rescued.append((delivery.message.message_id, delivery.deliveries))
            await delivery.ack()
            if len(rescued) == 2:
                break
    assert rescued == [("m2", 2), ("m3", 2)]
    assert (await redis_client.xpending(key, "g"))["pending"] == 0


async def test_a_poison_message_goes_to_the_dead_letter_stream_after_n_deliveries(
    redis_url: str, key_template: str, redis_client: Redis
) -> None:
    # Tried: a consumer that fails on m2 every time (never acks it), max 3 deliveries.
    key = await fill(redis_url, key_template, 3)
    consumer = StreamConsumer(redis_client, key, "g", "w")
    handled: list[str] = []
    seen_m2 = 0

    async def work() -> None:
        nonlocal seen_m2
        async for delivery in consumer.deliveries(claim_idle_ms=100, block_ms=20, max_deliveries=3):
            if delivery.message.message_id == "m2":
                seen_m2 += 1
                continue  # fails: no ack
            handled.append(delivery.message.message_id)
            await delivery.ack()

    task = asyncio.create_task(work())
    try:
        async with asyncio.timeout(10):
            while not await redis_client.xlen(key + ":dead"):
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert handled == ["m1", "m3"]
    assert seen_m2 == 3
    (dead,) = await redis_client.xrange(key + ":dead")
    fields = {k.decode(): v.decode() for k, v in dead[1].items()}
    assert json.loads(fields["raw"])["messageId"] == "m2"
    assert "delivered 4 times to group g" in fields["reason"]
    assert fields["schema"] == "infobip.push.mo.dead.v1"
    assert (await redis_client.xpending(key, "g"))["pending"] == 0


async def test_the_example_consumer_reads_and_acks_what_the_poller_wrote(
    redis_url: str, key_template: str, redis_client: Redis
) -> None:
    key = await fill(redis_url, key_template, 3)
    example = Path(__file__).resolve().parents[1] / "examples" / "consumer.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(example), redis_url, key, "example", "e1", "--count", "3",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert out.decode().splitlines() == [f"m{n} app1: 'hi {n}'" for n in (1, 2, 3)]
    assert (await redis_client.xpending(key, "example"))["pending"] == 0
