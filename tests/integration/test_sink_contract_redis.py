"""The sink contract (tests/sink_contract.py) on the Redis sink and a real server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis

from poller.devtools.embedded import EmbeddedRedis
from poller.sink import Sink
from poller.sink.redis.sink import RedisSink
from tests import sink_contract as contract
from tests.support import redis_sink


@pytest.fixture
def apps() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"a-{suffix}", f"b-{suffix}"


@pytest.fixture
async def sink(redis_url: str, key_template: str) -> AsyncIterator[RedisSink]:
    made = redis_sink(redis_url, key_template, instance_id="contract")
    await made.connect()
    try:
        yield made
    finally:
        await made.close()


async def test_each_message_once(sink: RedisSink, apps: tuple[str, str]) -> None:
    await contract.check_each_message_once(sink, apps)


async def test_marks_are_per_writer(sink: RedisSink, apps: tuple[str, str]) -> None:
    await contract.check_marks_are_per_writer(sink, apps[0])


async def test_forwarded_duplicates(sink: RedisSink, apps: tuple[str, str]) -> None:
    await contract.check_forwarded_duplicates(sink, apps[0])


async def test_dead_letters(sink: RedisSink, apps: tuple[str, str]) -> None:
    await contract.check_dead_letters(sink, apps[0])


async def test_one_refusing_stream(
    sink: RedisSink, apps: tuple[str, str], redis_client: Redis
) -> None:
    # Tried: the stream's key holds a string (WRONGTYPE), as another program could leave it.
    async def refuse(s: Sink, app: str) -> Callable[[], Awaitable[None]]:
        key = sink.stream_key(app)
        await redis_client.set(key, "not a stream")

        async def undo() -> None:
            await redis_client.delete(key)

        return undo

    await contract.check_one_refusing_stream(sink, apps, refuse)


async def test_outage_raises(own_redis: EmbeddedRedis, key_template: str) -> None:
    sink = redis_sink(own_redis.url, key_template, instance_id="contract", socket_timeout=1.0)
    await sink.connect()

    async def down() -> None:
        own_redis.kill()

    try:
        await contract.check_outage_raises(sink, down)
    finally:
        await sink.close()


async def test_groups(sink: RedisSink, apps: tuple[str, str]) -> None:
    await contract.check_groups(sink, apps[0])


async def test_redrive_once(sink: RedisSink, apps: tuple[str, str]) -> None:
    await contract.check_redrive_once(sink, apps[0])


async def test_leftovers_take_the_letters_place(sink: RedisSink, apps: tuple[str, str]) -> None:
    await contract.check_leftovers_take_the_letters_place(sink, apps[0])


async def test_purge_spares_message_streams(sink: RedisSink, apps: tuple[str, str]) -> None:
    await contract.check_purge_spares_message_streams(sink, apps[0])
