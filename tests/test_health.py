"""The health server as a probe sees it: real HTTP on loopback, a real Redis behind /readyz."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from poller import health, metrics
from poller.health import HealthServer, Readiness


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_pinger(url: str) -> Callable[[], Awaitable[bool]]:
    """What the daemon hands to Readiness: PING on a fresh short-timeout connection."""

    async def ping() -> bool:
        client = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(await client.ping())
        except (OSError, RedisError):
            return False
        finally:
            await client.aclose()

    return ping


@pytest.fixture
def readiness(redis_url: str) -> Readiness:
    """Everything healthy: bootstrapped, Redis up, polled just now."""
    state = Readiness(max_poll_age=60, redis_check=redis_pinger(redis_url), bootstrapped=True)
    state.poll_succeeded()
    return state


@pytest.fixture
async def server(readiness: Readiness) -> AsyncIterator[HealthServer]:
    srv = HealthServer(readiness, "127.0.0.1", 0)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def client(server: HealthServer) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=base, timeout=5, trust_env=False) as http:
        yield http


async def _failing(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    return {name: c["detail"] for name, c in body["checks"].items() if not c["ok"]}


async def test_livez_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/livez")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz_ok_when_all_checks_pass(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == set(health.CHECKS)
    assert all(c["ok"] for c in body["checks"].values())


async def test_readyz_names_bootstrap_before_bootstrap(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    readiness.bootstrapped = False
    assert set(await _failing(client)) == {"bootstrap"}


async def test_readyz_names_redis_when_redis_is_down(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    readiness.redis_check = redis_pinger(f"redis://127.0.0.1:{_closed_port()}/0")
    failing = await _failing(client)
    assert set(failing) == {"redis"}
    assert "PING" in failing["redis"]


async def test_readyz_redis_check_that_hangs_or_raises(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    async def hangs() -> bool:
        await asyncio.sleep(30)
        return True

    async def raises() -> bool:
        raise RuntimeError("boom")

    readiness.redis_timeout = 0.2
    readiness.redis_every = 0.0  # a new probe for every request, for this test
    readiness.redis_check = hangs
    assert "within 0.2 s" in (await _failing(client))["redis"]
    readiness.redis_check = raises
    assert "boom" in (await _failing(client))["redis"]


async def test_readyz_names_shutdown_when_stopping(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    readiness.stopping = True
    assert set(await _failing(client)) == {"shutdown"}


async def test_readyz_names_spool_when_full(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    readiness.spool_full = True
    assert set(await _failing(client)) == {"spool"}


async def test_readyz_names_last_poll_when_too_old(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    readiness.last_poll_ok = time.monotonic() - 61
    failing = await _failing(client)
    assert set(failing) == {"last_poll"}
    assert "limit 60 s" in failing["last_poll"]


async def test_last_poll_before_first_poll_has_a_start_allowance(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    readiness.last_poll_ok = None
    readiness.started = time.monotonic()
    assert (await client.get("/readyz")).status_code == 200
    readiness.started = time.monotonic() - 61
    assert "since start" in (await _failing(client))["last_poll"]


async def test_metrics_exposes_poller_metrics(client: httpx.AsyncClient) -> None:
    metrics.set_applications(["health-test"])
    metrics.MESSAGES_PULLED.labels(app="health-test").inc(3)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for doc in metrics.METRICS:
        assert f"# TYPE {doc.name.removesuffix('_total')}" in text, doc.name
    assert 'poller_messages_pulled_total{app="health-test"} 3.0' in text
    assert 'poller_pulls_total{outcome="throttled"} 0.0' in text


def test_metrics_doc_list_covers_the_registry() -> None:
    documented = {doc.name.removesuffix("_total") for doc in metrics.METRICS}
    registered = {
        family.name
        for family in metrics.REGISTRY.collect()
        if family.name.startswith("poller_") or family.name == "poller"
    }
    assert {name.removesuffix("_info") for name in documented} >= registered - {"poller"}
    assert "| `poller_spool_rows` | gauge |" in metrics.markdown_table()


async def test_unknown_path_and_method(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nope")).status_code == 404
    assert (await client.post("/readyz")).status_code == 405


async def test_blocked_loop_fails_livez_afterwards(readiness: Readiness) -> None:
    srv = HealthServer(
        readiness, "127.0.0.1", 0, block_threshold=0.2, block_window=1.0, heartbeat=0.02
    )
    await srv.start()
    try:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            url = f"http://127.0.0.1:{srv.port}/livez"
            assert (await http.get(url)).status_code == 200

            async def hog() -> None:
                time.sleep(0.5)  # blocks the whole loop, as a sync call in a coroutine would

            await asyncio.create_task(hog())
            await asyncio.sleep(0.1)  # the heartbeat wakes late and records the block
            response = await http.get(url)
            assert response.status_code == 503
            assert "blocked" in response.json()["detail"]
            await asyncio.sleep(1.0)  # past the window: alive again
            assert (await http.get(url)).status_code == 200
    finally:
        await srv.stop()


async def test_check_against_the_server(server: HealthServer, readiness: Readiness) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert await health.check(base, timeout=5) == (True, "ready")
    readiness.stopping = True
    ok, reason = await health.check(base + "/readyz", timeout=5)
    assert not ok
    assert reason == "not ready: shutdown: shutting down"


async def test_check_against_a_closed_port() -> None:
    url = health.local_url("0.0.0.0", _closed_port())
    assert url.startswith("http://127.0.0.1:")
    ok, reason = await health.check(url, timeout=2)
    assert not ok
    assert reason == f"health server not reachable at {url}"


async def test_check_against_a_server_that_does_not_answer() -> None:
    # A listener that accepts but never replies: the probe must give up on time.
    writers: list[asyncio.StreamWriter] = []
    released = asyncio.Event()

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await released.wait()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        ok, reason = await health.check(f"http://127.0.0.1:{port}", timeout=0.3)
    finally:
        released.set()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        listener.close()
        await listener.wait_closed()
    assert not ok
    assert "did not answer within 0.3 s" in reason


def test_local_url_for_wildcard_binds() -> None:
    assert health.local_url("::", 9464) == "http://[::1]:9464/readyz"
    assert health.local_url("10.1.2.3", 1, "/livez") == "http://10.1.2.3:1/livez"


async def test_a_crowd_of_probes_shares_one_redis_ping_per_second(
    server: HealthServer, readiness: Readiness
) -> None:
    # Tried: 300 concurrent /readyz requests over 32 connections (each request once opened
    # a Redis connection of its own).
    pings = 0
    ping = readiness.redis_check

    async def counted() -> bool:
        nonlocal pings
        pings += 1
        return await ping()

    readiness.redis_check = counted
    limits = httpx.Limits(max_connections=32)
    base = f"http://127.0.0.1:{server.port}"
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base, limits=limits, trust_env=False) as client:
        answers = await asyncio.gather(*(client.get("/readyz") for _ in range(300)))
    elapsed = time.monotonic() - started
    assert {a.status_code for a in answers} == {200}
    assert pings <= 2 + elapsed / readiness.redis_every  # about one a second, not 300


async def test_a_get_with_a_body_and_a_stalled_request_are_not_waited_for(
    server: HealthServer,
) -> None:
    # Tried: a GET announcing a 10-byte body that never comes; headers that never finish.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.startswith(b"HTTP/1.1 400")
    writer.close()
    stalled = await asyncio.open_connection("127.0.0.1", server.port)
    stalled[1].write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert await asyncio.wait_for(stalled[0].read(), health.REQUEST_TIMEOUT + 5) == b""
    assert time.monotonic() - started < health.REQUEST_TIMEOUT + 2
    stalled[1].close()


async def test_a_crowd_of_silent_connections_cannot_lock_out_a_probe(
    server: HealthServer, client: httpx.AsyncClient
) -> None:
    # Tried: twice the cap of connections that send nothing (each once held a place for the
    # 30 s idle timeout, and /livez answered 503 meanwhile: a liveness probe would restart
    # the pod); then a probe while they are all still open.
    held = [
        await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(2 * health.MAX_CONNECTIONS)
    ]
    try:
        for path in ("/livez", "/readyz"):
            assert (await client.get(path)).status_code == 200, path
        # The oldest silent ones made room; the open connections stay within the cap.
        assert server._server.open_connections <= health.MAX_CONNECTIONS
        assert await asyncio.wait_for(held[0][0].read(), 5) == b""
    finally:
        for _reader, held_writer in held:
            held_writer.close()


async def test_a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout(
    server: HealthServer,
) -> None:
    # Tried: connect and send nothing (it was kept for the 30 s idle timeout).
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), health.REQUEST_TIMEOUT + 10) == b""
    assert time.monotonic() - started < health.REQUEST_TIMEOUT + 2
    writer.close()
