"""Every reader the project ships goes on past an entry it cannot parse: entries written
straight into a real redis-server's stream with XADD (what the receiver never writes, what a
second writer or an older version might), between good ones."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis

from poller.consumer import StreamConsumer
from poller.schemas import MO as MO_SCHEMA
from poller.sink.redis.keys import stream_key

NODE = shutil.which("node")
NODE_EXAMPLE = Path(__file__).parents[1] / "examples" / "consumer.mjs"
ID_OF_LINE = re.compile(r'^\{"entry_id":"[^"]*","id":"([^"]*)"')


def fields(message_id: str, payload: str) -> dict[str, str]:
    """A message entry's fields, with the payload text given as is."""
    return {
        "id": message_id,
        "app": "app-x",
        "received_at": "",
        "pulled_at": "2026-01-01T00:00:00.000Z",
        "payload": payload,
        "schema": MO_SCHEMA,
    }


def good(message_id: str) -> str:
    return json.dumps({"messageId": message_id, "applicationCode": "app-x", "text": "fine"})


# Valid JSON that Python's reader refuses: more than 4,300 digits in an integer, and nesting
# deeper than the interpreter's stack allows; then JSON that is not even JSON.
HUGE_INTEGER = '{"messageId":"huge","applicationCode":"app-x","n":' + "9" * 5000 + "}"
DEEP = '{"messageId":"deep","applicationCode":"app-x","p":' + "[" * 995 + "]" * 995 + "}"
VERY_DEEP = '{"messageId":"very-deep","applicationCode":"app-x","p":' + "[" * 100_000
VERY_DEEP += "]" * 100_000 + "}"
BROKEN = '{"messageId":"broken",'
HOSTILE = {"huge": HUGE_INTEGER, "deep": DEEP, "very-deep": VERY_DEEP, "broken": BROKEN}


async def write_hostile(redis: Redis, key: str) -> dict[str, str]:
    """m1, the four hostile entries, m2; returns the hostile entries' ids by payload name."""
    await redis.xadd(key, fields("m1", good("m1")))
    hostile: dict[str, str] = {}
    for name, payload in HOSTILE.items():
        hostile[name] = (await redis.xadd(key, fields(name, payload))).decode()
    await redis.xadd(key, fields("m2", good("m2")))
    return hostile


async def test_deliveries_dead_letter_an_unparseable_entry_at_once_and_go_on(
    redis_client: Redis, key_template: str
) -> None:
    """Tried: m1, a 5,000-digit integer, 995- and 100,000-deep nesting, cut JSON, m2, all
    written with XADD. The loop hands over m1 and m2 only (before: the four came out with an
    empty payload and the README's loop acknowledged them as handled), moves each of the four
    to the dead-letter stream at its first delivery with its bytes and the parse error, and
    leaves nothing pending."""
    key = stream_key(key_template, "app-x")
    hostile = await write_hostile(redis_client, key)
    consumer = StreamConsumer(redis_client, key, "g", "w")
    handed: list[str] = []
    async with asyncio.timeout(20):
        async for delivery in consumer.deliveries(block_ms=20, max_deliveries=5):
            assert delivery.message.error is None
            handed.append(delivery.message.message_id)
            await delivery.ack()
            if delivery.message.message_id == "m2":
                break
    assert handed == ["m1", "m2"]
    dead = await redis_client.xrange(key + ":dead")
    assert len(dead) == len(hostile)
    by_raw = {
        raw: {k.decode(): v.decode() for k, v in entry.items()}
        for raw, entry in ((entry[b"raw"].decode(), entry) for _id, entry in dead)
    }
    for name, payload in HOSTILE.items():
        letter = by_raw[payload]  # the bytes as they were in the stream
        assert hostile[name] in letter["reason"]
        assert "cannot be parsed" in letter["reason"]
        assert len(letter["reason"]) < 600
        assert letter["schema"] == "infobip.push.mo.dead.v1"
    assert (await redis_client.xpending(key, "g"))["pending"] == 0


async def test_an_unparseable_entry_left_pending_by_a_dead_consumer_is_dead_lettered_on_claim(
    redis_client: Redis, key_template: str
) -> None:
    """Tried: a consumer of an older version read the hostile entries and died without an
    acknowledgement; the helper that claims them moves them to the dead-letter stream instead
    of handing them over, and its loop goes on to the good ones."""
    key = stream_key(key_template, "app-x")
    hostile = await write_hostile(redis_client, key)
    await redis_client.xgroup_create(key, "g", id="0")
    await redis_client.xreadgroup("g", "old", {key: ">"}, count=100)
    consumer = StreamConsumer(redis_client, key, "g", "w")
    handed: list[str] = []
    async with asyncio.timeout(20):
        async for delivery in consumer.deliveries(claim_idle_ms=50, block_ms=20):
            handed.append(delivery.message.message_id)
            await delivery.ack()
            if len(handed) == 2:
                break
    assert handed == ["m1", "m2"]
    assert await redis_client.xlen(key + ":dead") == len(hostile)
    assert (await redis_client.xpending(key, "g"))["pending"] == 0


@pytest.mark.skipif(NODE is None, reason="node (Node.js) is not on PATH")
async def test_the_node_example_consumer_goes_on_past_hostile_entries(
    redis_url: str, redis_client: Redis, key_template: str
) -> None:
    """Tried: the same entries read by tests/examples/consumer.mjs. V8's JSON.parse reads the
    huge integer (as Infinity) and any nesting, but JSON.stringify recurses: printing the
    100,000-deep payload stopped the example with "Maximum call stack size exceeded" (m2 never
    read). Now that entry and the cut JSON are reported on stderr and left pending, as the
    example documents; m2 after them is printed and acknowledged."""
    assert NODE is not None
    key = stream_key(key_template, "app-x")
    hostile = await write_hostile(redis_client, key)
    done = await asyncio.to_thread(
        subprocess.run,
        [NODE, str(NODE_EXAMPLE), redis_url, key, "g", "node-1", "--count", "6"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    # Python cannot read back the line of the 100,000-deep payload: its id is at the start.
    printed = [ID_OF_LINE.findall(line)[0] for line in done.stdout.splitlines()]
    assert printed == ["m1", "huge", "deep", "m2"]
    errors = [json.loads(line) for line in done.stderr.splitlines()]
    assert [e["entry_id"] for e in errors] == [hostile["very-deep"], hostile["broken"]]
    assert "call stack" in errors[0]["error"]
    pending = await redis_client.xpending_range(key, "g", "-", "+", 10)
    left = [p["message_id"].decode() for p in pending]
    assert left == [hostile["very-deep"], hostile["broken"]]
