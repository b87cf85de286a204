"""The health server as a probe sees it: real HTTP on loopback, a real Redis behind /readyz."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from poller import metrics
from poller.bootstrap import Bootstrapper
from poller.flusher import Flusher
from poller.health import probe
from poller.health import server as health
from poller.health.readiness import Readiness
from poller.health.server import HealthServer
from poller.infobip import InfobipClient
from poller.settings import Settings
from poller.sink.memory import MemorySink
from poller.sources.pull import PullSource
from poller.spool import NewMessage, Spool
from poller.stop import Stop
from tests.support import redis_sink


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RaisingSink(MemorySink):
    """A sink whose probe itself fails (a bug in a sink, which no server can produce)."""

    async def problem(self) -> str | None:
        raise RuntimeError("boom")


@dataclass
class Parts:
    """What readiness asks: the stop, the spool, the sink, a pull source, the bootstrap."""

    stop: Stop
    spool: Spool
    pull: PullSource
    bootstrapper: Bootstrapper
    readiness: Readiness


@pytest.fixture
async def parts(redis_url: str, tmp_path: Path) -> AsyncIterator[Parts]:
    """Everything healthy: bootstrapped, Redis up, polled just now."""
    settings = Settings(
        infobip={"base_url": "http://127.0.0.1:9", "api_key": "k", "applications": ["a"]},
        redis={"url": redis_url},
        spool={"path": tmp_path / "spool.db"},
    )
    stop = Stop(5)
    spool = Spool.open(settings.spool.path, max_rows=10, max_bytes=10**6)
    sink = redis_sink(redis_url, instance_id="health")
    await sink.connect()
    client = InfobipClient(settings.infobip)
    pull = PullSource(
        client,
        spool,
        None,
        Flusher(spool, sink, stop),
        stop,
        pull_limit=10,
        max_pulls=1,
        in_flight=1,
        max_poll_age=60,
    )
    pull.last_success = time.monotonic()
    bootstrapper = Bootstrapper(settings, client, stop)
    bootstrapper.done = True
    readiness = Readiness(stop=stop, spool=spool, sink=sink, sources=[pull], bootstrap=bootstrapper)
    try:
        yield Parts(stop, spool, pull, bootstrapper, readiness)
    finally:
        await client.aclose()
        await sink.close()
        spool.close()


@pytest.fixture
def readiness(parts: Parts) -> Readiness:
    return parts.readiness


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
    assert set(body["checks"]) == {"bootstrap", "sink", "spool", "shutdown", "pull"}
    assert all(c["ok"] for c in body["checks"].values())


async def test_readyz_names_bootstrap_before_bootstrap(
    client: httpx.AsyncClient, parts: Parts
) -> None:
    parts.bootstrapper.done = False
    assert set(await _failing(client)) == {"bootstrap"}


async def test_readyz_names_the_sink_when_redis_is_down(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    readiness.sink = redis_sink(f"redis://127.0.0.1:{_closed_port()}/0", socket_timeout=1.0)
    failing = await _failing(client)
    assert set(failing) == {"sink"}
    assert "PING" in failing["sink"]


async def test_readyz_sink_check_that_hangs_or_raises(
    client: httpx.AsyncClient, readiness: Readiness
) -> None:
    # Tried: a server that accepts the connection and never answers; a probe that raises.
    released = asyncio.Event()

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await released.wait()
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    readiness.sink_timeout = 0.2
    readiness.sink_every = 0.0  # a new probe for every request, for this test
    readiness.sink = redis_sink(f"redis://127.0.0.1:{port}/0", socket_timeout=5.0)
    try:
        assert "within 0.2 s" in (await _failing(client))["sink"]
    finally:
        released.set()
        listener.close()
    readiness.sink = RaisingSink()
    assert "boom" in (await _failing(client))["sink"]


async def test_readyz_names_shutdown_when_stopping(client: httpx.AsyncClient, parts: Parts) -> None:
    parts.stop.request("test")
    assert set(await _failing(client)) == {"shutdown"}


async def test_readyz_names_spool_when_full(client: httpx.AsyncClient, parts: Parts) -> None:
    rows = [NewMessage("a", f"m{i}", "", "", b"{}") for i in range(parts.spool.max_rows)]
    parts.spool.append(rows)
    failing = await _failing(client)
    assert set(failing) == {"spool"}
    assert "at its cap" in failing["spool"]


async def test_readyz_names_pull_when_the_last_poll_is_too_old(
    client: httpx.AsyncClient, parts: Parts
) -> None:
    parts.pull.last_success = time.monotonic() - 61
    failing = await _failing(client)
    assert set(failing) == {"pull"}
    assert "limit 60 s" in failing["pull"]


async def test_last_poll_before_first_poll_has_a_start_allowance(
    client: httpx.AsyncClient, parts: Parts
) -> None:
    parts.pull.last_success = None
    parts.pull.started = time.monotonic()
    assert (await client.get("/readyz")).status_code == 200
    parts.pull.started = time.monotonic() - 61
    assert "since start" in (await _failing(client))["pull"]


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


async def test_check_against_the_server(server: HealthServer, parts: Parts) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert await probe.check(base, timeout=5) == (True, "ready")
    parts.stop.request("test")
    ok, reason = await probe.check(base + "/readyz", timeout=5)
    assert not ok
    assert reason == "not ready: shutdown: shutting down"


async def test_check_against_a_closed_port() -> None:
    url = probe.local_url("0.0.0.0", _closed_port())
    assert url.startswith("http://127.0.0.1:")
    ok, reason = await probe.check(url, timeout=2)
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
        ok, reason = await probe.check(f"http://127.0.0.1:{port}", timeout=0.3)
    finally:
        released.set()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        listener.close()
        await listener.wait_closed()
    assert not ok
    assert "did not answer within 0.3 s" in reason


async def test_a_crowd_of_probes_shares_one_redis_ping_per_second(
    server: HealthServer, readiness: Readiness
) -> None:
    # Tried: 300 concurrent /readyz requests over 32 connections (each request once opened
    # a Redis connection of its own).
    pings = 0
    sink = readiness.sink

    class Counted:
        """The real sink, its probes counted."""

        def describe(self) -> str:
            return sink.describe()

        async def problem(self) -> str | None:
            nonlocal pings
            pings += 1
            return await sink.problem()

    readiness.sink = Counted()  # type: ignore[assignment]
    limits = httpx.Limits(max_connections=32)
    base = f"http://127.0.0.1:{server.port}"
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base, limits=limits, trust_env=False) as client:
        answers = await asyncio.gather(*(client.get("/readyz") for _ in range(300)))
    elapsed = time.monotonic() - started
    assert {a.status_code for a in answers} == {200}
    assert pings <= 2 + elapsed / readiness.sink_every  # about one a second, not 300


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
