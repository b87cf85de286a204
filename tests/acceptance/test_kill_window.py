"""`poller run` SIGKILLed right after Infobip sent several answers at once, with both cores busy:
every message of those answers reaches its stream after the restart, once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from poller.devtools.embedded import EmbeddedRedis
from poller.settings import Settings
from tests.pull_burst import BurstSimProcess, busy_cores
from tests.support import Processes, ids_at, make_settings, poller_command, settings_env

pytestmark = pytest.mark.timeout(240)

APPS = ("kw-alpha", "kw-beta", "kw-gamma")
ROUNDS = 3  # kills, each of a fresh poller after a burst
PER_ROUND = 10_000  # messages handed out per round: SKIP + BURST answers of 1,000
SKIP = 6  # pulls answered as usual first: their rows keep the flusher busy
BURST = 4  # answers let out at once: the default pulls in flight
KILL_AFTER = 0.05  # seconds after the last of them was written in full


@pytest.fixture
async def processes() -> AsyncIterator[Processes]:
    started = Processes()
    yield started
    for p in started:
        await p.kill()


async def _burst_and_kill(
    sim: BurstSimProcess, redis: Redis, processes: Processes, settings: Settings, log: Path
) -> dict[str, Any]:
    """One round: `poller run` started, SKIP answers while Redis holds writes, the burst,
    the SIGKILL; the burst as the simulator reports it."""
    poller = await processes.start(settings, log)
    assert poller.proc is not None
    sim.arm(pid=poller.proc.pid, skip=SKIP, size=BURST, delay=KILL_AFTER)
    try:
        async with asyncio.timeout(90):
            # Its start flushed what the previous round left; from its first pull on, writes
            # wait, so that the flusher has the skipped answers' rows to work through.
            while sim.report()["seen"] == 0:
                assert poller.proc.returncode is None, poller.logs()
                await asyncio.sleep(0.01)
            await redis.client_pause(60_000, all=False)
            while sim.report()["state"] == "skipping":
                assert poller.proc.returncode is None, poller.logs()
                await asyncio.sleep(0.01)
            await redis.client_unpause()  # the flusher works while the burst arrives
            while (burst := sim.report())["state"] != "killed":
                await asyncio.sleep(0.01)
            assert await poller.proc.wait() == -9
    finally:
        await redis.client_unpause()
    assert len(burst["answers"]) == BURST
    assert all(answer["ok"] for answer in burst["answers"])
    return burst


async def _drain(settings: Settings, log: Path) -> None:
    """`poller once`: spools what the journal kept, flushes, pulls what is left."""
    with log.open("ab") as out:
        drain = await asyncio.create_subprocess_exec(
            *poller_command("once"),
            env=settings_env(settings),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    async with asyncio.timeout(90):
        assert await drain.wait() == 0, log.read_text()[-3000:]


async def test_answers_sent_in_full_50_ms_before_a_sigkill_are_all_kept(
    own_redis: EmbeddedRedis, key_template: str, tmp_path: Path, processes: Processes
) -> None:
    # Tried, three times, each against a fresh simulator in a process of its own with 10,000
    # messages waiting and a fresh spool: `poller run` (default pull limit 1000 and 4 pulls
    # in flight) gets 6 answers as usual while Redis holds writes (its flusher then has up to
    # 6,000 rows to work through), then the simulator holds the next 4 pull requests before
    # they take anything, lets them out together (about 1.8 MB) and SIGKILLs the poller 50 ms
    # after the last was written in full; two other processes spin on the cores; then
    # `poller once` drains. Before answers had reader threads of their own, the event loop,
    # busy with the first answers and the flusher, often left the last one in the socket's
    # buffers and the kill took it whole (1,000 messages): this test failed in 6 runs of 6
    # (1 or 2 of its 3 kills), tests/benchmarks/kill_window.py lost an answer in 2 to 9 kills
    # of 10 depending on the machine's load. After: 9 runs of 9 passed, and the benchmark
    # lost nothing down to a kill 5 ms after the last write. Not covered: a restart over a
    # spool that holds rows; there a parse holding the interpreter (msgspec, on a loaded
    # machine) was seen to stall the readers for 50 ms and more (the benchmarks' README).
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    redis = Redis.from_url(own_redis.url)
    bursts: list[dict[str, Any]] = []
    handed_out: list[str] = []
    try:
        for n in range(ROUNDS):
            sim = BurstSimProcess(APPS, tmp_path / f"sim-{n}.log", env, seed=n + 1)
            try:
                sim.backlog(PER_ROUND)
                spool = tmp_path / f"round-{n}"
                spool.mkdir()
                settings = make_settings(
                    sim,  # only its base_url is read
                    own_redis.url,
                    spool,
                    key_template,
                    infobip={"rate_limit_scope": "local"},
                    redis={"socket_timeout": 15.0},
                )
                with busy_cores(2):
                    burst = await _burst_and_kill(
                        sim, redis, processes, settings, spool / "run.log"
                    )
                await _drain(settings, spool / "once.log")
                handed_out += sim.handed_out()
            finally:
                sim.close()
            bursts.append(burst)
    finally:
        await redis.aclose()
    found = await ids_at(own_redis.url, key_template)
    lost = [
        (
            round(burst["killedAt"] - burst["writtenAt"], 3),
            len({mid for answer in burst["answers"] for mid in answer["ids"]} - set(found)),
        )
        for burst in bursts
    ]
    assert all(count == 0 for _before, count in lost), (
        f"(seconds between the last write and the kill, messages of the {BURST} answers in"
        f" no stream) per round: {lost}"
    )
    assert len(handed_out) == ROUNDS * PER_ROUND
    assert set(handed_out) <= set(found)
    assert max(found.values()) == 1
