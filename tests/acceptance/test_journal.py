"""The body journal: a kill while an answer arrives loses only what was still in the socket, and
an answer echoing our request keeps no secret in quarantine."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from poller.devtools.simulator import Simulator
from tests.support import (
    ids_in_streams,
    inbox_item,
    make_settings,
    poller_command,
    run_poller,
    settings_env,
    stream_entries,
    stream_of,
)

PULL_PATH = "/push/1/inbox/reports"


async def test_a_kill_while_a_large_answer_arrives_loses_no_item_that_had_arrived(
    configured_simulator: Simulator, redis_url: str, redis_client: Redis, key_template: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Tried: a 1,000-message answer (~600 KB) whose server stops sending after 400,000
    # bytes; `poller once` is SIGKILLed while it waits for the rest; then started again.
    sent = [inbox_item(n, size=500) for n in range(1000)]
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
