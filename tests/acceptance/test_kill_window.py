"""`poller run` SIGKILLed right after Infobip sent several answers at once, with both cores busy:
every message of those answers reaches its stream after the restart, once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from poller.devtools.embedded import EmbeddedRedis
from tests.pull_burst import BurstSimProcess, busy_cores
from tests.support import Processes, ids_at, make_settings, poller_command, settings_env

pytestmark = pytest.mark.timeout(180)

APPS = ("kw-alpha", "kw-beta", "kw-gamma")
BACKLOG = 10_000
SKIP = 6  # pulls answered as usual first: 6,000 rows for the flusher
BURST = 4  # answers let out at once: the default pulls in flight
KILL_AFTER = 0.05  # seconds after the last of them was written in full


@pytest.fixture
async def processes() -> AsyncIterator[Processes]:
    started = Processes()
    yield started
    for p in started:
        await p.kill()


@pytest.fixture
def burst_sim(tmp_path: Path) -> Iterator[BurstSimProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    sim = BurstSimProcess(APPS, tmp_path / "sim.log", env)
    try:
        yield sim
    finally:
        sim.close()


async def test_answers_sent_in_full_50_ms_before_a_sigkill_are_all_kept(
    burst_sim: BurstSimProcess,
    own_redis: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried: a backlog of 10,000; `poller run` (default pull limit 1000 and 4 pulls in flight)
    # gets 6 answers as usual while Redis holds writes (so its flusher has 6,000 rows to work
    # through), then the simulator (a process of its own) holds the next 4 pull requests
    # before they take anything, lets them out together (about 1.8 MB) and SIGKILLs the poller
    # 50 ms after the last was written in full; two other processes spin on the cores. Then
    # `poller once` drains. Before answers had reader threads of their own, the event loop,
    # busy with the first answers and the flusher, left the last one in the socket's buffers:
    # most runs lost it whole (1,000 messages; 9 of 10 runs of tests/benchmarks/kill_window.py).
    sim = burst_sim
    sim.backlog(BACKLOG)
    settings = make_settings(
        sim,  # only its base_url is read
        own_redis.url,
        tmp_path,
        key_template,
        infobip={"rate_limit_scope": "local"},
        redis={"socket_timeout": 15.0},
    )
    redis = Redis.from_url(own_redis.url)
    try:
        with busy_cores(2):
            await redis.client_pause(120_000, all=False)  # writes wait; reads go on
            poller = await processes.start(settings, tmp_path / "run.log")
            assert poller.proc is not None
            sim.arm(pid=poller.proc.pid, skip=SKIP, size=BURST, delay=KILL_AFTER)
            async with asyncio.timeout(90):
                while (burst := sim.report())["state"] == "skipping":
                    assert poller.proc.returncode is None, poller.logs()
                    await asyncio.sleep(0.01)
                await redis.client_unpause()  # the flusher works while the burst arrives
                while (burst := sim.report())["state"] != "killed":
                    await asyncio.sleep(0.01)
                assert await poller.proc.wait() == -9
    finally:
        await redis.client_unpause()
        await redis.aclose()
    assert len(burst["answers"]) == BURST
    assert all(answer["ok"] for answer in burst["answers"])

    with (tmp_path / "once.log").open("ab") as out:
        drain = await asyncio.create_subprocess_exec(
            *poller_command("once"),
            env=settings_env(settings),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    async with asyncio.timeout(90):
        assert await drain.wait() == 0, (tmp_path / "once.log").read_text()[-3000:]

    found = await ids_at(own_redis.url, key_template)
    sent_in_full = {mid for answer in burst["answers"] for mid in answer["ids"]}
    lost = sent_in_full - set(found)
    assert not lost, (
        f"{len(lost)} of the {len(sent_in_full)} messages sent in full"
        f" {burst['killedAt'] - burst['writtenAt']:.3f} s before the kill are in no stream"
    )
    handed_out = sim.handed_out()
    assert len(handed_out) == BACKLOG
    assert set(handed_out) <= set(found)
    assert max(found.values()) == 1
