"""The Node.js example consumer (tests/examples/consumer.mjs, written from the README alone)
reading what `poller once` wrote: every message printed once with its fields, every entry
acknowledged; an entry that breaks the README's rules reported and left pending."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from redis.asyncio import Redis

from poller.devtools.simulator import Simulator
from poller.sink.redis.keys import stream_key
from tests.support import make_settings, run_poller

NODE = shutil.which("node")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "consumer.mjs"
pytestmark = pytest.mark.skipif(
    NODE is None, reason="node (Node.js) is not on PATH: the Node.js example consumer cannot run"
)


def consume(redis_url: str, key: str, group: str, count: int) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(EXAMPLE), redis_url, key, group, "node-1", "--count", str(count)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_node_consumer_reads_parses_and_acks_every_message_the_poller_wrote(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    # 250 + 41 generated messages (multi-byte texts, nested custom payloads), pulled and
    # written by the real `poller once`; replies of 100 entries span several TCP reads.
    sent = {
        "app-alpha": configured_simulator.inject("app-alpha", 250),
        "app-beta": configured_simulator.inject("app-beta", 40),
    }
    tricky = {
        "messageId": "tricky-1",
        "applicationCode": "app-beta",
        "text": 'quotes "in", back\\slash, new\nline, \U0001f984 and \u00e9',
        "customPayload": {"amount": 12.5, "nested": {"empty": {}, "list": [1, "2"]}},
    }
    sent["app-beta"] += configured_simulator.inject_raw([tricky])
    settings = make_settings(
        configured_simulator, redis_url, tmp_path, key_template, apps=list(sent)
    )
    done = await asyncio.to_thread(run_poller, settings, "once")
    assert done.returncode == 0, done.stderr

    for app, ids in sent.items():
        key = stream_key(key_template, app)
        entries = {
            entry_id.decode(): {k.decode(): v.decode() for k, v in fields.items()}
            for entry_id, fields in await redis_client.xrange(key)
        }
        assert len(entries) == len(ids)
        read = await asyncio.to_thread(consume, redis_url, key, "node-readers", len(ids))
        assert read.returncode == 0, read.stderr
        assert read.stderr == ""
        lines = [json.loads(line) for line in read.stdout.splitlines()]
        assert Counter(line["id"] for line in lines) == Counter(ids)  # each exactly once
        assert [line["entry_id"] for line in lines] == list(entries)  # in stream order
        for line in lines:
            entry = entries[line["entry_id"]]
            for field in ("id", "app", "received_at", "pulled_at"):
                assert line[field] == entry[field], field
            assert line["app"] == app
            assert line["payload"] == json.loads(entry["payload"])
        pending = await redis_client.xpending(key, "node-readers")
        assert pending["pending"] == 0
    (printed,) = [
        line for line in map(json.loads, read.stdout.splitlines()) if line["id"] == "tricky-1"
    ]
    assert printed["payload"] == tricky


async def test_the_node_consumer_reports_and_leaves_pending_an_entry_that_breaks_the_rules(
    redis_url: str, redis_client: Redis, key_template: str
) -> None:
    key = stream_key(key_template, "app-x")
    good = json.dumps({"messageId": "m1", "applicationCode": "app-x", "text": "fine"})
    fields = {
        "id": "m1",
        "app": "app-x",
        "received_at": "",
        "pulled_at": "2026-01-01T00:00:00.000Z",
        "payload": good,
        "schema": "infobip.push.mo.v1",
    }
    await redis_client.xadd(key, fields)
    wrong_id = await redis_client.xadd(key, {**fields, "id": "other"})
    wrong_schema = await redis_client.xadd(key, {**fields, "schema": "something.v2"})

    first = await asyncio.to_thread(consume, redis_url, key, "g", 3)
    assert first.returncode == 1
    assert [json.loads(line)["id"] for line in first.stdout.splitlines()] == ["m1"]
    errors = [json.loads(line) for line in first.stderr.splitlines()]
    assert [e["entry_id"] for e in errors] == [wrong_id.decode(), wrong_schema.decode()]
    assert "payload.messageId" in errors[0]["error"]
    assert "something.v2" in errors[1]["error"]
    pending = await redis_client.xpending_range(key, "g", "-", "+", 10)
    assert [p["message_id"] for p in pending] == [wrong_id, wrong_schema]

    # Started again, the consumer is handed its own pending entries first: still refused.
    again = await asyncio.to_thread(consume, redis_url, key, "g", 2)
    assert again.returncode == 1
    assert again.stdout == ""
    assert len(again.stderr.splitlines()) == 2
    assert (await redis_client.xpending(key, "g"))["pending"] == 2
