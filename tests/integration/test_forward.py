"""The HTTP forward receiver against a real Redis/Valkey: durable before 2xx, once per message,
refusals with no side effect. Requests come from httpx or raw sockets, as any forwarder's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from poller.devtools.embedded import free_port
from poller.devtools.simulator import Simulator
from poller.runtime import Runtime
from poller.settings import Settings
from tests.fixtures_sim import SimulatorFactory
from tests.support import (
    assert_schema,
    ids_in_streams,
    make_settings,
    poller_command,
    settings_env,
    stream_entries,
    stream_of,
)

TOKEN = "forward-token-0123456789abcdef"
APP = "app-fwd"


def message(n: int, app: str = APP) -> dict[str, Any]:
    return {
        "messageId": f"fwd-{n:05d}",
        "applicationCode": app,
        "receivedAt": "2026-11-30T10:00:00.000+0000",
        "text": f"forwarded {n} ünïcödé 🚆",
        "price": 1.50,  # kept as sent, not re-encoded as 1.5
        "futureField": {"nested": [n]},
    }


def forward_settings(
    sim: Simulator, redis_url: str, tmp_path: Path, key_template: str, **forward: Any
) -> Settings:
    return make_settings(
        sim,
        redis_url,
        tmp_path,
        key_template,
        forward={
            "applications": [APP],
            "token": TOKEN,
            "port": 0,
            "read_timeout": 1.0,
            **forward,
        },
    )


class Receiver:
    """A runtime with its flusher and forward receiver running in the test's loop."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        assert rt.receiver is not None
        self.receiver = rt.receiver
        self.url = f"http://127.0.0.1:{rt.receiver.port}{rt.settings.forward.path}"

    async def post(self, body: bytes | str, *, token: str | None = TOKEN, **kw: Any) -> Any:
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        url = f"{self.url}/{token}" if token else self.url
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            content = body.encode() if isinstance(body, str) else body
            return await client.post(url, content=content, headers=headers, **kw)


@contextlib.asynccontextmanager
async def running(settings: Settings, *, flushing: bool = True) -> AsyncIterator[Receiver]:
    """A runtime with its receiver listening (and its flusher running), stopped after."""
    rt = await Runtime.open(settings)
    try:
        if flushing:
            rt.start_flushing()
        assert rt.receiver is not None
        await rt.receiver.start()
        yield Receiver(rt)
    finally:
        rt.stop.request("test")
        await rt.finish()
        await rt.close()


@pytest.fixture
async def receiver(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path, key_template: str
) -> AsyncIterator[Receiver]:
    settings = forward_settings(configured_simulator, redis_url, tmp_path, key_template)
    async with running(settings) as started:
        yield started


async def settled(rt: Runtime) -> None:
    """Wait until the spool is empty (everything forwarded reached Redis)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = rt.spool.stats()
        if not stats.rows and not stats.quarantine_pending:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the flusher did not empty the spool")


async def test_every_accepted_shape_reaches_the_stream_once_with_every_field(
    receiver: Receiver, redis_client: Redis
) -> None:
    # Tried: the pull envelope, one message object, an array; in the header-token form too.
    envelope = {"results": [message(1), message(2)], "messageCount": 2, "pendingMessageCount": 0}
    answer = await receiver.post(json.dumps(envelope))
    assert (answer.status_code, answer.json()) == (200, {"accepted": 2, "quarantined": 0})
    assert (await receiver.post(json.dumps(message(3)))).status_code == 200
    array = json.dumps([message(4), message(5)], ensure_ascii=False)
    array = array.replace('"price": 1.5', '"price": 1.50')  # as a sender may spell it
    answer = await receiver.post(array, token=None, headers={"X-Forward-Token": TOKEN})
    assert answer.status_code == 200
    await settled(receiver.rt)
    entries = await stream_entries(redis_client, stream_of(receiver.rt.settings, APP))
    assert [e["id"] for e in entries] == [f"fwd-{n:05d}" for n in range(1, 6)]
    for entry, n in zip(entries, range(1, 6), strict=True):
        assert json.loads(entry["payload"]) == message(n)
        assert entry["schema"] == "infobip.push.mo.v1"
        assert entry["app"] == APP
        assert entry["received_at"] == "2026-11-30T10:00:00.000+0000"
    assert '"price": 1.50' in entries[4]["payload"]  # the bytes as sent, not re-encoded
    assert_schema(entries, "infobip.push.mo.v1")


async def test_a_delivery_repeated_after_a_lost_2xx_is_written_once(
    receiver: Receiver, redis_client: Redis
) -> None:
    # Tried: the same request delivered three times (our 2xx lost on the way back each
    # time), once after the spool was flushed, once while the first copy may still wait.
    body = json.dumps({"results": [message(1), message(2)]})
    for _ in range(2):
        assert (await receiver.post(body)).status_code == 200
    await settled(receiver.rt)
    assert (await receiver.post(body)).status_code == 200
    await settled(receiver.rt)
    counts = await ids_in_streams(redis_client, receiver.rt.settings.redis.stream_key_template)
    assert counts == {"fwd-00001": 1, "fwd-00002": 1}


@pytest.mark.parametrize(
    ("token", "headers", "status"),
    [
        (None, {}, 401),
        ("wrong-token-0123456789abcdefxx", {}, 403),
        (TOKEN[:-1], {}, 403),
        (TOKEN, {"Content-Type": "text/plain"}, 415),
        (TOKEN, {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ],
)
async def test_refused_requests_leave_nothing_behind(
    receiver: Receiver,
    redis_client: Redis,
    token: str | None,
    headers: dict[str, str],
    status: int,
) -> None:
    # Tried: no token, a wrong one, one a character short, a wrong content type.
    answer = await receiver.post(json.dumps(message(1)), token=token, headers=headers)
    assert answer.status_code == status
    assert "error" in answer.json()
    stats = receiver.rt.spool.stats()
    assert (stats.rows, stats.quarantined) == (0, 0)
    assert not await redis_client.exists(stream_of(receiver.rt.settings, APP))


async def test_an_oversized_body_is_refused_before_and_while_it_is_read(
    receiver: Receiver,
) -> None:
    limit = receiver.rt.settings.forward.max_body_bytes
    big = b'{"results":[' + b" " * limit + b"]}"
    assert (await receiver.post(big)).status_code == 413  # declared length
    # No length declared (chunked): refused once the limit is passed.

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        answer = await client.post(
            f"{receiver.url}/{TOKEN}",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == 413
    assert receiver.rt.spool.stats().quarantined == 0


async def test_a_body_that_is_not_a_message_is_refused_and_kept(
    receiver: Receiver, redis_client: Redis
) -> None:
    # Tried: invalid JSON, a JSON string, an envelope cut short.
    for body in (b"{not json", b'"just a string"', b'{"results": [{"messageId": "x"'):
        answer = await receiver.post(body)
        assert answer.status_code == 400, body
        assert answer.json()["error"]
    await settled(receiver.rt)
    dead = await stream_entries(redis_client, stream_of(receiver.rt.settings, None) + ":dead")
    assert [d["raw"] for d in dead] == [
        "{not json",
        '"just a string"',
        '{"results": [{"messageId": "x"',
    ]
    assert all(d["reason"].startswith("forwarded body") for d in dead)


async def test_an_item_that_is_not_a_message_is_quarantined_and_the_others_accepted(
    receiver: Receiver, redis_client: Redis
) -> None:
    body = json.dumps({"results": [message(1), {"applicationCode": APP, "text": "no id"}]})
    answer = await receiver.post(body)
    assert answer.json() == {"accepted": 1, "quarantined": 1}
    await settled(receiver.rt)
    assert len(await stream_entries(redis_client, stream_of(receiver.rt.settings, APP))) == 1
    dead = await stream_entries(redis_client, stream_of(receiver.rt.settings, APP) + ":dead")
    assert "messageId" in dead[0]["reason"]


async def test_slow_clients_are_cut_off_and_connections_are_capped(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path, key_template: str
) -> None:
    # Tried: headers that never finish; bodies announced as 10 bytes that never come; more
    # connections than the cap (a new one once waited while headers that never finish held
    # a place); a connection that sends nothing.
    settings = forward_settings(
        configured_simulator, redis_url, tmp_path, key_template, max_connections=3
    )
    async with running(settings) as receiver:
        port = receiver.receiver.port
        slow = await asyncio.open_connection("127.0.0.1", port)
        slow[1].write(b"POST /infobip/forward HTTP/1.1\r\nHost: x\r\n")
        body = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST /infobip/forward/{TOKEN} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: 10\r\n\r\n".encode()
        )
        body[1].write(head)
        second_body = await asyncio.open_connection("127.0.0.1", port)
        second_body[1].write(head)
        await asyncio.sleep(0.1)
        # At the cap, a new connection takes the place of the oldest one still sending its
        # headers (a crowd of silent connections cannot lock Infobip out) ...
        third_body = await asyncio.open_connection("127.0.0.1", port)
        third_body[1].write(head)
        assert await asyncio.wait_for(slow[0].read(), 0.5) == b""
        await asyncio.sleep(0.1)
        # ... and with every place taken by a request in progress, one more is refused.
        fourth = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(fourth[0].read(), 5)
        assert refused.startswith(b"HTTP/1.1 503")
        # A body that never comes is answered 408 after the read timeout (1 s here).
        for reader, _writer in (body, second_body, third_body):
            answer = await asyncio.wait_for(reader.readline(), 5)
            assert answer.startswith(b"HTTP/1.1 408")
            assert await asyncio.wait_for(reader.read(), 5)  # the rest, then the close
        # A connection that sends nothing is closed after the read timeout too.
        silent = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(silent[0].read(), 5) == b""
        for _reader, writer in (slow, body, second_body, third_body, fourth, silent):
            writer.close()
        stats = receiver.rt.spool.stats()
        assert (stats.rows, stats.quarantined) == (0, 0)


async def test_a_stopping_receiver_or_a_full_spool_answers_503(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path, key_template: str
) -> None:
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        spool={"max_rows": 2},
        forward={"applications": [APP], "token": TOKEN, "port": 0},
    )
    async with running(settings, flushing=False) as receiver:
        assert (await receiver.post(json.dumps([message(1), message(2)]))).status_code == 200
        full = await receiver.post(json.dumps(message(3)))  # no flusher runs: spool at its cap
        assert (full.status_code, full.headers["Retry-After"]) == (503, "5")
        receiver.rt.start_flushing()
        await settled(receiver.rt)
        receiver.rt.stop.request("test")
        assert (await receiver.post(json.dumps(message(4)))).status_code == 503


async def test_basic_auth_when_configured(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path, key_template: str
) -> None:
    settings = forward_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        basic_username="infobip",
        basic_password="basic-secret-pw",
    )
    async with running(settings) as receiver:
        body = json.dumps(message(1))
        assert (await receiver.post(body)).status_code == 401
        assert (await receiver.post(body, auth=("infobip", "wrong"))).status_code == 401
        assert (await receiver.post(body, auth=("infobip", "basic-secret-pw"))).status_code == 200


async def test_a_kill_before_the_answer_loses_nothing_and_the_repeat_is_written_once(
    configured_simulator: Simulator, redis_url: str, redis_client: Redis, tmp_path: Path,
    key_template: str,
) -> None:  # fmt: skip
    # Tried: `poller run` SIGKILLed while a forwarder is sending a request (no 2xx can have
    # been sent), restarted; the forwarder delivers again, then a third time (its 2xx "lost").
    port = free_port()
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        apps=["app-alpha"],
        forward={"applications": [APP], "token": TOKEN, "port": port},
    )
    url = f"http://127.0.0.1:{port}/infobip/forward/{TOKEN}"
    sent = [message(n) for n in range(200)]
    body = json.dumps({"results": sent}).encode()

    async def start() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *poller_command("run"),
            env=settings_env(settings),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError("receiver never listened")

    proc = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /infobip/forward/{TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert await reader.read() == b""  # no answer: the forwarder must deliver again
    writer.close()

    proc = await start()
    try:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            for _ in range(2):
                answer = await client.post(
                    url, content=body, headers={"Content-Type": "application/json"}
                )
                assert answer.status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            counts = await ids_in_streams(redis_client, key_template)
            if len(counts) == len(sent):
                break
            await asyncio.sleep(0.1)
        assert counts == {m["messageId"]: 1 for m in sent}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_forward_end_to_end_bootstrap_points_infobip_at_the_receiver(
    simulator_factory: SimulatorFactory, redis_url: str, redis_client: Redis, tmp_path: Path,
    key_template: str,
) -> None:  # fmt: skip
    # Tried: `poller run` with one pulled and one forwarded application, bootstrap creating
    # the HTTP_FORWARD action with the token in its URL; the simulator creates messages for
    # both, forwards one kind (some deliveries cut after sending: retried), the other waits
    # in the pull inbox. Every message once in its stream, nothing in the spool at the end.
    sim = await simulator_factory(applications=["app-alpha", APP], auto_configure=False)
    sim.add_fault("forward_drop", count=3)
    port = free_port()
    settings = make_settings(
        sim,
        redis_url,
        tmp_path,
        key_template,
        apps=["app-alpha"],
        forward={
            "applications": [APP],
            "token": TOKEN,
            "port": port,
            "public_url": f"http://127.0.0.1:{port}/infobip/forward",
        },
    )
    proc = await asyncio.create_subprocess_exec(
        *poller_command("run"),
        env=settings_env(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        application = sim.account.applications[APP]
        while time.monotonic() < deadline and application.forward_action() is None:
            await asyncio.sleep(0.05)
        action = application.forward_action()
        assert action is not None
        assert action.forward_url == f"http://127.0.0.1:{port}/infobip/forward/{TOKEN}"
        pulled = sim.inject("app-alpha", 300)
        forwarded = sim.inject(APP, 300)
        await asyncio.wait_for(sim.ledger.wait_forwarded(), 30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            counts = await ids_in_streams(redis_client, key_template)
            if len(counts) == 600:
                break
            await asyncio.sleep(0.1)
        assert counts == dict.fromkeys([*pulled, *forwarded], 1)
        sends = sim.ledger.forward_sends()
        assert sum(sends.values()) > len(forwarded)  # the cut deliveries were sent again
        assert sim.ledger.forward_delivered_ids() == set(forwarded)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_silent_connections_under_a_low_open_file_limit_leave_the_daemon_working(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path, key_template: str
) -> None:
    # Tried: `poller run` with a receiver (cap 512, the default) under `ulimit -n 200`, and
    # 300 connections to it that send nothing. The descriptors ran out: /livez and /readyz
    # could not be reached, the spool refused writes ("Too many open files"), and asyncio
    # logged `socket.accept() out of system resource` about 70 MB in 20 s. (The soft and
    # hard limits are both 200: the daemon cannot raise its soft limit past it.)
    import resource

    health_port = free_port()
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        health={"enabled": True, "port": health_port},
        forward={"applications": [APP], "token": TOKEN, "port": free_port()},
    )
    log_path = tmp_path / "run.log"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *poller_command("run"),
            env=settings_env(settings),
            stdout=log,
            stderr=log,
            preexec_fn=low_limit,
        )
    held: list[socket.socket] = []
    try:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            base = f"http://127.0.0.1:{health_port}"
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            for _ in range(300):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", settings.forward.port))
                held.append(sock)
            await asyncio.sleep(2)
            for path in ("/livez", "/readyz"):
                assert (await client.get(f"{base}{path}")).status_code == 200, path
        logs = log_path.read_text()
        assert "out of system resource" not in logs
        assert "Too many open files" not in logs
        assert "connection cap lowered to fit the open-file limit" in logs
        assert len(logs) < 1_000_000
    finally:
        for sock in held:
            sock.close()
        proc.kill()
        await proc.wait()
