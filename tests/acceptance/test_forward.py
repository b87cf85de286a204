"""`poller run` with the HTTP forward receiver: a kill before the answer loses nothing, bootstrap
points Infobip at the receiver, and silent connections under a low open-file limit leave the
daemon working."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from pathlib import Path

import httpx
from redis.asyncio import Redis

from poller.devtools.embedded import free_port
from poller.devtools.simulator import Simulator
from tests.fixtures_sim import SimulatorFactory
from tests.support import ids_in_streams, make_settings, poller_command, settings_env
from tests.support.forward import APP, TOKEN, message


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
