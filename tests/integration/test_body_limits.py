"""Bounded memory for bodies: pulls shrink before an answer can pass the body limit (what is
not read of a pull answer is lost), and the receiver caps the bytes of requests in hand."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from redis.asyncio import Redis

from poller.devtools.simulator import Simulator
from poller.runtime import Runtime
from poller.settings import Settings
from poller.sources.pull import DrainResult
from tests.support import ids_in_streams, make_settings, open_runtime, stream_of

TOKEN = "forward-token-0123456789abcdef"


def big_message(n: int) -> dict[str, str]:
    return {
        "messageId": f"big-{n:05d}",
        "applicationCode": "app-alpha",
        "receivedAt": "2026-11-30T10:00:00.000+0000",
        "text": "x" * 1000,
    }


def limited(
    sim: Simulator, redis_url: str, tmp_path: Path, key_template: str, limit: int
) -> Settings:
    """app-alpha pulled one pull at a time under a body limit of ``limit`` bytes."""
    return make_settings(
        sim,
        redis_url,
        tmp_path,
        key_template,
        apps=["app-alpha"],
        infobip={"max_body_bytes": limit, "pulls_in_flight": 1},
    )


async def drain_batches(
    sim: Simulator, settings: Settings, batches: list[range]
) -> list[DrainResult]:
    """For each batch, its big messages put in the inbox, then one drain; then a flush."""
    results = []
    async with open_runtime(settings) as rt:
        for batch in batches:
            sim.inject_raw([big_message(n) for n in batch])
            results.append(await rt.pull.drain())
        await rt.flusher.flush()
    return results


async def test_pulls_ask_for_fewer_messages_before_an_answer_passes_the_body_limit(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    # Tried: a body limit of 256 KiB and messages of about 1.1 KB. The first answer (200
    # messages, ~220 KB) passes half the limit; 1,000 more wait. Asked for 1,000 at once
    # (1.1 MB), the answer would pass the limit and what was not read would be lost.
    settings = limited(configured_simulator, redis_url, tmp_path, key_template, 256 * 1024)
    first, rest = await drain_batches(
        configured_simulator, settings, [range(200), range(200, 1200)]
    )
    assert (first.pulled, first.quarantined) == (200, 0)
    assert (rest.pulled, rest.quarantined, rest.pull_error) == (1000, 0, None)
    assert rest.pulls >= 1000 // 119  # at most 128 KiB worth of messages per pull
    counts = await ids_in_streams(redis_client, key_template)
    assert counts == {f"big-{n:05d}": 1 for n in range(1200)}


async def test_an_answer_past_the_body_limit_is_read_on_to_disk_and_loses_nothing(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    # Tried: a body limit of 256 KiB and, at once, 1,000 messages of about 1.1 KB: the first
    # answer is 1.1 MB, four times the limit. Infobip hands them out once: the part past the
    # limit goes on into the answer's journal file (not memory), and every message is kept;
    # the next pulls ask for fewer.
    settings = limited(configured_simulator, redis_url, tmp_path, key_template, 256 * 1024)
    first, second = await drain_batches(
        configured_simulator, settings, [range(1000), range(1000, 1300)]
    )
    assert (first.pulled, first.quarantined) == (1000, 0)
    assert (second.pulled, second.quarantined, second.pull_error) == (300, 0, None)
    counts = await ids_in_streams(redis_client, key_template)
    assert counts == {f"big-{n:05d}": 1 for n in range(1300)}
    assert not list((tmp_path).rglob("*.body"))  # the journal file went once spooled


async def test_an_answer_past_eight_times_the_limit_keeps_every_whole_item_it_read(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    # Tried: a body limit of 64 KiB and a 1.1 MB answer, past 8 times the limit (512 KiB):
    # reading stops there, every whole item of those 512 KiB is kept, and the cut is recorded
    # in the dead-letter stream (what was never read cannot be).
    settings = limited(configured_simulator, redis_url, tmp_path, key_template, 64 * 1024)
    (result,) = await drain_batches(configured_simulator, settings, [range(1000)])
    # About 500 of the ~1.1 KB items fit into the 512 KiB read (the first 60 of 64 KiB would).
    assert 400 <= result.pulled < 1000
    assert result.quarantined == 1
    counts = await ids_in_streams(redis_client, key_template)
    assert counts == {f"big-{n:05d}": 1 for n in range(result.pulled)}
    dead = await redis_client.xrange(stream_of(settings, None) + ":dead")
    assert b"not read on" in dead[0][1][b"reason"]


async def test_the_receiver_refuses_a_body_past_its_bytes_in_flight_and_takes_it_later(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    # Tried: one request whose 40 KB body is still arriving holds its declared size; a second
    # of 40 KB with a cap of 64 KB in flight is answered 503 with Retry-After before its body
    # is read, and accepted once the first is done. A small one still fits beside the first.
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        forward={
            "applications": ["app-fwd"],
            "token": TOKEN,
            "port": 0,
            "max_bytes_in_flight": 64 * 1024,
            "read_timeout": 5.0,
        },
    )

    def body(first: int, count: int, size: int) -> bytes:
        items = [
            {"messageId": f"f-{n}", "applicationCode": "app-fwd", "text": "y" * size}
            for n in range(first, first + count)
        ]
        return json.dumps(items).encode()

    slow = body(0, 40, 1000)
    rt = await Runtime.open(settings)
    try:
        rt.start_flushing()
        assert rt.receiver is not None
        await rt.receiver.start()
        port = rt.receiver.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST /infobip/forward/{TOKEN} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(slow)}\r\n\r\n"
        )
        writer.write(head.encode() + slow[:100])
        await writer.drain()
        await asyncio.sleep(0.3)  # the receiver holds the first request's reservation
        url = f"http://127.0.0.1:{port}/infobip/forward/{TOKEN}"
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            refused = await client.post(url, content=body(100, 40, 1000), headers=headers)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            small = await client.post(url, content=body(200, 1, 10), headers=headers)
            assert small.status_code == 200
            writer.write(slow[100:])
            await writer.drain()
            status_line = await reader.readline()
            assert b" 200 " in status_line
            writer.close()
            again = await client.post(url, content=body(100, 40, 1000), headers=headers)
            assert again.status_code == 200
        for _ in range(100):
            if not rt.spool.stats().rows:
                break
            await asyncio.sleep(0.05)
    finally:
        rt.stop.request("test")
        await rt.finish()
        await rt.close()
    counts = await ids_in_streams(redis_client, key_template)
    expected = {f"f-{n}" for n in [*range(40), *range(100, 140), 200]}
    assert counts == dict.fromkeys(expected, 1)
