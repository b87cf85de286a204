"""Two `poller run` processes on one account: they share one request budget, and when one dies
while its spool holds rows, the other says so (metrics, `poller status`)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from redis.asyncio import Redis

from poller.devtools.embedded import free_port
from poller.devtools.simulator import Simulator
from tests.support import Processes, make_settings, run_poller, stream_of


async def _metric(port: int, name: str) -> float | None:
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_replica_killed_with_rows_in_its_spool_is_reported_stranded(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried: app-beta's stream key holds a string (WRONGTYPE), so a poller keeps app-beta's
    # rows in its spool; that poller is SIGKILLed. The other one must report the stranded
    # spool within a few heartbeats, and `poller status` must list it.
    sim = configured_simulator
    schedule = {"interval": 0.5, "hot_interval": 0.2}

    def health() -> dict[str, object]:
        return {"enabled": True, "port": free_port(), "heartbeat_interval": 0.5}

    first = make_settings(
        sim, redis_url, tmp_path / "a", key_template, health=health(), schedule=schedule
    )
    second = make_settings(
        sim, redis_url, tmp_path / "b", key_template, health=health(), schedule=schedule
    )
    await redis_client.set(stream_of(first, "app-beta"), "not a stream")
    a = await processes.start(first, tmp_path / "a.log")
    await a.wait_ready(200)
    sim.inject("app-beta", 20)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = await _metric(first.health.port, "poller_spool_rows")
        if rows and rows >= 20:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"poller a never spooled app-beta's rows\n{a.logs()}")
    b = await processes.start(second, tmp_path / "b.log")
    await b.wait_ready(200)
    await a.kill()
    deadline = time.monotonic() + 30
    stranded = None
    while time.monotonic() < deadline:
        stranded = await _metric(second.health.port, 'poller_replicas{state="stranded"}')
        if stranded == 1.0:
            break
        await asyncio.sleep(0.2)
    assert stranded == 1.0, b.logs()
    assert await _metric(second.health.port, "poller_replicas_stranded_rows") >= 20
    assert "stopped beating while its spool holds rows" in b.logs()
    done = await asyncio.to_thread(run_poller, second, "status", "--json")
    # Only this test's two pollers: earlier tests' pollers of the same account (the simulator
    # on loopback) may still be listed as gone on the shared server.
    ours = {a.proc.pid, b.proc.pid} if a.proc and b.proc else set()
    replicas = [r for r in json.loads(done.stdout)["replicas"] if r["pid"] in ours]
    states = sorted(r["state"] for r in replicas)
    assert states == ["alive", "stranded"], replicas
    gone = next(r for r in replicas if r["state"] == "stranded")
    assert gone["rows"] >= 20
    assert gone["spool"] == str(first.spool.path)
