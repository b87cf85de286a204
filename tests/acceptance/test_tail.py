"""`poller tail` as an operator runs it: a real process reading what the poller wrote."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from redis.asyncio import Redis

from poller.daemon import run_once
from poller.devtools.simulator import Simulator
from poller.settings import Settings
from tests.support import make_settings, run_poller, stream_of

APPS = ["app-alpha", "app-beta"]


async def drained(sim: Simulator, redis_url: str, tmp_path: Path, key_template: str) -> Settings:
    settings = make_settings(sim, redis_url, tmp_path, key_template, apps=APPS)
    sim.inject_raw(
        [
            {"messageId": "a1", "applicationCode": "app-alpha", "text": "first"},
            {"messageId": "b1", "applicationCode": "app-beta", "text": "clear\x1b[2J screen"},
            {"messageId": "a2", "applicationCode": "app-alpha", "text": "second\nline"},
            {"applicationCode": "app-alpha", "text": "no id"},
        ]
    )
    assert await run_once(settings, bootstrap=False) == 0
    return settings


async def test_tail_prints_every_stream_from_the_start_with_control_characters_escaped(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path, key_template: str
) -> None:
    settings = await drained(configured_simulator, redis_url, tmp_path, key_template)
    done = await asyncio.to_thread(run_poller, settings, "tail")
    assert done.returncode == 0, done.stderr
    assert settings.log.level == "INFO"
    assert done.stderr == ""  # the answer only: no "redis connected" progress line
    lines = done.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["a1", "a2", "b1"]  # per stream, in order
    assert "\x1b" not in done.stdout
    assert "clear\\x1b[2J screen" in done.stdout
    assert "second\\x0aline" in done.stdout
    one = await asyncio.to_thread(run_poller, settings, "tail", "app-beta", "--json")
    (entry,) = [json.loads(line) for line in one.stdout.splitlines()]
    assert entry["id"] == "b1"
    dead = await asyncio.to_thread(run_poller, settings, "tail", "--dead")
    assert "DEAD result item has no messageId" in dead.stdout


async def test_tail_through_a_group_acks_and_from_now_prints_only_what_comes(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    settings = await drained(configured_simulator, redis_url, tmp_path, key_template)
    first = await asyncio.to_thread(
        run_poller, settings, "tail", "app-alpha", "--group", "ops", "--ack", "--count", "1"
    )
    assert [line.split()[2] for line in first.stdout.splitlines()] == ["a1"]
    rest = await asyncio.to_thread(run_poller, settings, "tail", "app-alpha", "--group", "ops")
    assert [line.split()[2] for line in rest.stdout.splitlines()] == ["a2"]
    key = stream_of(settings, "app-alpha")
    assert (await redis_client.xpending(key, "ops"))["pending"] == 1  # a2: printed, not acked
    now = await asyncio.to_thread(run_poller, settings, "tail", "--from", "now")
    assert (now.returncode, now.stdout) == (0, "")
