"""The HTTP forward receiver against a real Redis/Valkey: durable before 2xx, once per message,
refusals with no side effect. Requests come from httpx or raw sockets, as any forwarder's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from poller.devtools.simulator import Simulator
from poller.runtime import Runtime
from poller.settings import Settings
from tests.support import assert_schema, ids_in_streams, make_settings, stream_entries, stream_of
from tests.support.forward import APP, TOKEN, message


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
        (TOKEN, {"Content-Encoding": "br"}, 415),
    ],
)
async def test_refused_requests_leave_nothing_behind(
    receiver: Receiver,
    redis_client: Redis,
    token: str | None,
    headers: dict[str, str],
    status: int,
) -> None:
    # Tried: no token, a wrong one, one a character short, an encoding not decoded here.
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
