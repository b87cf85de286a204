"""Messages of odd application codes through a real drain, the receiver and Redis: one stream per
code, found again by `poller tail` and the consumer helper, and metric series kept bounded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from poller import metrics
from poller.consumer import StreamConsumer
from poller.daemon import run_once
from poller.devtools.simulator import Simulator
from poller.runtime import Runtime
from tests.support import make_settings, run_poller, stream_entries, stream_of
from tests.support.codes import FORWARDED, HUGE, ODD_CODES

TOKEN = "forward-token-0123456789abcdef"


def message(n: int, code: str, via: str) -> dict[str, Any]:
    return {
        "messageId": f"{via}-{n}",
        "applicationCode": code,
        "receivedAt": "2026-11-30T10:00:00.000+0000",
        "text": f"{via} {n}",
    }


async def test_pulled_and_forwarded_messages_of_odd_codes_reach_one_stream_per_code(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    # Tried: each odd code once pulled and once forwarded, plus an item with no application
    # (quarantined to the no-application dead-letter stream) among them.
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        apps=["app-alpha"],
        forward={"applications": FORWARDED, "token": TOKEN, "port": 0},  # only these forwarded
    )
    configured_simulator.inject_raw(
        [message(n, code, "pull") for n, code in enumerate(ODD_CODES)]
        + [{"messageId": "no-app", "text": "no application"}]
    )
    rt = await Runtime.open(settings)
    try:
        rt.start_flushing()
        assert rt.receiver is not None
        await rt.receiver.start()
        await rt.pull.drain()
        body = json.dumps([message(n, c, "fwd") for n, c in enumerate(ODD_CODES) if c in FORWARDED])
        url = f"http://127.0.0.1:{rt.receiver.port}{settings.forward.path}/{TOKEN}"
        async with httpx.AsyncClient(trust_env=False) as client:
            answer = await client.post(
                url, content=body, headers={"Content-Type": "application/json"}
            )
        assert answer.json() == {"accepted": len(FORWARDED), "quarantined": 0}
        for _ in range(200):
            stats = rt.spool.stats()
            if not stats.rows and not stats.quarantine_pending:
                break
            await asyncio.sleep(0.05)
    finally:
        rt.stop.request("test")
        await rt.finish()
        await rt.close()

    for n, code in enumerate(ODD_CODES):
        entries = await stream_entries(redis_client, stream_of(settings, code))
        assert [e["id"] for e in entries] == [f"pull-{n}", f"fwd-{n}"][: 1 + (code != HUGE)]
        assert {e["app"] for e in entries} == {code}  # the whole code, in the entry
        assert json.loads(entries[0]["payload"])["applicationCode"] == code
    (dead,) = await stream_entries(redis_client, stream_of(settings, None) + ":dead")
    assert dead["app"] == ""
    assert not await redis_client.exists(stream_of(settings, "unknown") + ":dead")
    prefix = key_template.split("{")[0]
    keys = [k async for k in redis_client.scan_iter(match=prefix + "*")]
    assert max(len(k) for k in keys) < 250  # not a 100 KB key


async def test_tail_and_the_consumer_helper_find_the_streams_of_odd_codes(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    codes = ["a{b", "a(b", "unknown", HUGE]
    configured_simulator.inject_raw([message(n, code, "pull") for n, code in enumerate(codes)])
    configured_simulator.inject_raw([{"messageId": "no-app"}])
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    assert await run_once(settings, bootstrap=False) == 0

    # Every stream, by SCAN over the template's pattern.
    every = await asyncio.to_thread(run_poller, settings, "tail", "--json")
    assert every.returncode == 0, every.stderr
    found = sorted(json.loads(line)["id"] for line in every.stdout.splitlines())
    assert found == [f"pull-{n}" for n in range(len(codes))]
    dead = await asyncio.to_thread(run_poller, settings, "tail", "--dead", "--json")
    assert len(dead.stdout.splitlines()) == 1
    # One application by its code, as typed on the command line.
    one = await asyncio.to_thread(run_poller, settings, "tail", "a{b", "--json")
    assert [json.loads(line)["id"] for line in one.stdout.splitlines()] == ["pull-0"]
    unknown = await asyncio.to_thread(run_poller, settings, "tail", "unknown", "--json")
    assert [json.loads(line)["id"] for line in unknown.stdout.splitlines()] == ["pull-2"]

    # The consumer helper on the key of the 100 KB code, and its dead-letter stream is the
    # one the sink would use for that code.
    key = stream_of(settings, HUGE)
    consumer = StreamConsumer(redis_client, key, "g", "w1", start_id="0")
    await consumer.ensure_group()
    (got,) = await consumer.read(count=10)
    assert (got.message_id, got.app) == ("pull-3", HUGE)
    assert consumer.dead_key == stream_of(settings, HUGE) + ":dead"


async def test_a_thousand_codes_keep_metrics_bounded(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    # Tried: 1,000 distinct application codes, one message each, through a real drain; the
    # configured application keeps its own series, every other code counts under `other`.
    codes = [f"code-{n:04d}" for n in range(1000)]
    configured_simulator.inject_raw([message(n, code, "pull") for n, code in enumerate(codes)])
    configured_simulator.inject_raw([message(9999, "app-alpha", "pull")])
    settings = make_settings(
        configured_simulator, redis_url, tmp_path, key_template, apps=["app-alpha"]
    )

    def written(app: str) -> float:
        value = metrics.REGISTRY.get_sample_value("poller_messages_written_total", {"app": app})
        return value or 0.0

    before = written("other"), written("app-alpha")
    assert await run_once(settings, bootstrap=False) == 0
    assert (written("other") - before[0], written("app-alpha") - before[1]) == (1000, 1)
    text, _ = metrics.render()
    assert b"code-0" not in text
    app_values = {
        line.split(b'app="')[1].split(b'"')[0]
        for line in text.splitlines()
        if line.startswith(b"poller_") and b'app="' in line
    }
    assert len(app_values) < 20  # what earlier tests in this process configured, plus other
    assert len(text) < 64 * 1024
    assert await redis_client.xlen(stream_of(settings, "code-0999")) == 1
