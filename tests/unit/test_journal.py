"""The body journal: a kill while an answer arrives loses only what was still in the socket.

Also the item-by-item reading of answers that it relies on: text kept as sent, and every
whole item of a cut answer found, wherever the cut falls.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from poller.devtools.simulator import Simulator
from poller.infobip.body import scan_pull
from poller.sources.pull import rows_from_body
from tests.support import (
    ids_in_streams,
    make_settings,
    poller_command,
    run_poller,
    settings_env,
    stream_entries,
    stream_of,
)

PULL_PATH = "/push/1/inbox/reports"


def item(n: int, app: str = "app-alpha", size: int = 0) -> dict[str, object]:
    return {
        "messageId": f"m-{n:05d}",
        "applicationCode": app,
        "receivedAt": "2026-11-30T10:00:00.000+0000",
        "text": f"message {n} " + "x" * size,
        "customPayload": {"n": n, "nested": [1, {"deep": "é"}]},
    }


def test_items_keep_the_text_infobip_sent() -> None:
    # Tried: odd spacing, number spellings JSON allows but a re-encoder would change, an
    # unknown field, a big integer: the kept text must be byte for byte what arrived.
    raw_items = [
        '{"messageId":"a","applicationCode":"x","price":1.50,"big":123456789012345678901234567890}',
        '{ "messageId" : "b" , "applicationCode" : "x", "exp": 1E+2, "unknown": [ ] }',
    ]
    body = ('{"results": [' + ",\n ".join(raw_items) + '], "messageCount": 2,'
            ' "pendingMessageCount": 7}').encode()  # fmt: skip
    scan = scan_pull(body)
    assert scan.error is None
    assert [data.decode() for data, _value in scan.items] == raw_items
    assert (scan.message_count, scan.pending_message_count) == (2, 7)


def test_a_cut_answer_gives_every_whole_item_wherever_the_cut_falls() -> None:
    # Tried: the same answer cut after every one of its bytes.
    items = [item(n) for n in range(6)]
    body = json.dumps({"results": items, "messageCount": 6, "pendingMessageCount": 0}).encode()
    texts = [json.dumps(i) for i in items]
    for cut in range(len(body)):
        prefix = body[:cut]
        rows = rows_from_body(prefix, "t", "cut")
        whole = [i["messageId"] for i, t in zip(items, texts, strict=True)
                 if prefix.find(t.encode()) != -1]  # fmt: skip
        assert [m.message_id for m in rows.messages] == whole, cut
        # What is not whole is quarantined, never dropped: the bytes from the first cut item.
        kept = b"".join(q.raw for q in rows.quarantined)
        if len(whole) == len(items):
            assert not rows.quarantined, cut
        elif cut:
            assert prefix.endswith(kept), cut
            if items[len(whole)]["messageId"].encode() in prefix:  # type: ignore[union-attr]
                assert items[len(whole)]["messageId"].encode() in kept  # type: ignore[union-attr]


async def test_a_kill_while_a_large_answer_arrives_loses_no_item_that_had_arrived(
    configured_simulator: Simulator, redis_url: str, redis_client: Redis, key_template: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Tried: a 1,000-message answer (~600 KB) whose server stops sending after 400,000
    # bytes; `poller once` is SIGKILLed while it waits for the rest; then started again.
    sent = [item(n, size=500) for n in range(1000)]
    configured_simulator.inject_raw(sent)
    configured_simulator.add_fault("stall", count=1, path=PULL_PATH, at=400_000, delay=60)
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    journal = settings.spool.path.with_name(settings.spool.path.name + ".journal")
    proc = await asyncio.create_subprocess_exec(
        *poller_command("once", "--no-bootstrap"),
        env=settings_env(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        prefix = await _journaled_body(journal, want=400_000)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    ids = [str(m["messageId"]) for m in sent]
    # Item i arrived whole when item i + 1 had begun to arrive.
    arrived = [ids[i] for i in range(len(ids) - 1) if ids[i + 1].encode() in prefix]
    assert 500 < len(arrived) < 1000

    configured_simulator.clear_faults()
    restart = await asyncio.create_subprocess_exec(
        *poller_command("once", "--no-bootstrap"),
        env=settings_env(settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(restart.wait(), 60) == 0
    counts = await ids_in_streams(redis_client, key_template)
    assert sorted(counts) == arrived
    assert set(counts.values()) == {1}
    entries = await stream_entries(redis_client, stream_of(settings, "app-alpha"))
    assert [json.loads(e["payload"]) for e in entries] == sent[: len(arrived)]
    # The item cut in the middle is in the dead-letter stream, as its bytes arrived.
    (dead,) = await stream_entries(redis_client, stream_of(settings, None) + ":dead")
    assert ids[len(arrived)] in dead["raw"]
    assert "earlier run" in dead["reason"]
    assert not list(journal.iterdir())


async def _journaled_body(journal: Path, want: int, timeout: float = 30) -> bytes:
    """The body bytes of the one journal file, once it holds ``want`` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = list(journal.glob("*.body")) if journal.is_dir() else []
        if files:
            body = files[0].read_bytes().partition(b"\n")[2]
            if len(body) >= want:
                return body
        await asyncio.sleep(0.05)
    pytest.fail("the answer never reached the journal")


def test_numbers_python_cannot_hold_and_a_bad_byte_spoil_only_their_own_item() -> None:
    # Tried: a 5,000-digit integer and 1e400 (valid JSON that Python cannot hold, or that a
    # re-encoder would turn into Infinity), NaN and -Infinity (not JSON: a strict reader
    # refuses them; the words inside a string are fine), and an item with a byte that is not
    # UTF-8, between good items.
    items = [
        b'{"messageId":"a","applicationCode":"x","n":' + b"9" * 5000 + b"}",
        b'{"messageId":"b","applicationCode":"x","f":NaN,"g":1e400}',
        b'{"messageId":"c","applicationCode":"x","t":"\xff"}',
        b'{"messageId":"d","applicationCode":"x","t":"caf\xc3\xa9"}',
        b'{"messageId":"e","applicationCode":"x","g":1e400,"t":"NaN and -Infinity"}',
        b'{"messageId":"f","applicationCode":"x","h":[1,-Infinity]}',
    ]
    body = b'{"results":[' + b",".join(items) + b'],"messageCount":6,"pendingMessageCount":0}'
    rows = rows_from_body(body, "t")
    assert [(m.message_id, m.payload) for m in rows.messages] == [
        ("a", items[0]),
        ("d", items[3]),
        ("e", items[4]),
    ]
    assert [(q.raw, q.reason) for q in rows.quarantined] == [
        (items[1], "result item holds NaN, which JSON does not allow"),
        (items[2], "result item is not valid UTF-8 (byte 44)"),
        (items[5], "result item holds -Infinity, which JSON does not allow"),
    ]
    for message in rows.messages:  # what reaches a stream, a strict reader reads
        json.loads(message.payload, parse_int=str, parse_constant=pytest.fail)


async def test_an_answer_echoing_our_request_keeps_no_secret_in_quarantine(
    redis_url: str, redis_client: Redis, key_template: str, tmp_path: Path
) -> None:
    # Tried: POLLER_INFOBIP__BASE_URL pointing at a server that answers 200 with the request
    # echoed back, Authorization header included (a wrong URL, a debugging proxy).
    from poller.devtools.simulator.httpserver import HttpServer, Request, Response
    from poller.settings import Settings

    key = "distinctive-api-key-7f3a9c"

    async def echo(request: Request) -> Response:
        text = "".join(f"{k}: {v}\n" for k, v in request.headers.items())
        return Response(200, f"ECHO {request.method} {request.path}\n{text}".encode())

    server = HttpServer(echo)
    await server.start()
    try:
        settings = Settings(
            infobip={"base_url": f"http://127.0.0.1:{server.port}", "api_key": key},
            redis={"url": redis_url, "stream_key_template": key_template},
            spool={"path": tmp_path / "spool.db"},
            health={"enabled": False},
        )
        done = await asyncio.to_thread(run_poller, settings, "once", "--no-bootstrap")
    finally:
        await server.stop()
    assert key not in done.stdout + done.stderr
    dead = await stream_entries(redis_client, key_template.replace("${app}", "unknown") + ":dead")
    assert dead
    assert "ECHO GET /push/1/inbox/reports" in dead[0]["raw"]
    assert key not in dead[0]["raw"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
