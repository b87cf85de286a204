"""Dead letters inspected and re-driven on a real server: `poller dead` as an operator runs it
(processes), and its logic in the process where a rule has to change (the depth limit).

What a user relies on: a letter that parses now lands in its stream once, whether the retry
runs once, twice, or twice at the same time (two processes, or two connections); what still
fails keeps its place with the reason it fails for now; a purge never touches a message
stream; the raw bytes are shown escaped; in a Cluster, a letter whose messages belong to other
slots is re-driven once even when a retry dies half-way.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from poller import deadletters
from poller.consumer import StreamConsumer
from poller.daemon import run_once
from poller.devtools.embedded import EmbeddedRedis
from poller.devtools.simulator import Simulator
from poller.infobip import body as body_module
from poller.settings import Settings
from poller.sink import SinkError
from poller.sink.redis import deadletters as redis_dead
from poller.sink.redis.keys import dead_of, stream_key
from poller.sink.redis.sink import RedisSink
from poller.spool import QuarantineEntry
from tests.support import (
    assert_schema,
    ids_in_streams,
    make_settings,
    redis_sink,
    run_poller,
    stream_entries,
    stream_of,
)

AT = "2026-12-02T10:00:00.000Z"
DEAD_REASON = "result item nested deeper than 64 levels"
NOT_JSON = "not JSON: expected an object or an array"


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 2):
        value = [value]
    return value


def deep(message_id: str, app: str = "app-alpha") -> dict[str, Any]:
    """A message 70 levels deep: past the depth limit of 64."""
    return {"messageId": message_id, "applicationCode": app, "text": "deep", "x": nested(70)}


def cli_settings(redis_url: str, key_template: str, tmp_path: Path) -> Settings:
    """What `poller dead` needs: the Redis settings (Infobip is never called)."""
    return Settings(
        infobip={"base_url": "https://example.api.infobip.com", "api_key": "k"},
        redis={"url": redis_url, "stream_key_template": key_template},
        spool={"path": tmp_path / "spool.db"},
    )


async def quarantine_deep_items(
    sim: Simulator, redis_url: str, tmp_path: Path, key_template: str, count: int
) -> Settings:
    """``count`` items too deep and one good one, pulled by the daemon's own cycle."""
    settings = make_settings(sim, redis_url, tmp_path, key_template, apps=["app-alpha"])
    sim.inject_raw([deep(f"deep-{n}") for n in range(count)])
    sim.inject_raw([{"messageId": "good-1", "applicationCode": "app-alpha", "text": "hi"}])
    assert await run_once(settings, bootstrap=False) == 0
    return settings


async def server_ms(client: Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def connected(redis_url: str, key_template: str) -> RedisSink:
    sink = redis_sink(redis_url, key_template, instance_id="dead-test")
    await sink.connect()
    return sink


async def test_an_item_quarantined_for_its_depth_lands_once_when_the_limit_is_raised(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tried: the daemon pulls a 70-level item (quarantined: no application could be read,
    so it is in the no-application dead-letter stream); a retry under the old limit changes
    nothing; with the limit raised the message lands in app-alpha's stream with the bytes
    Infobip sent; a second retry adds nothing."""
    settings = await quarantine_deep_items(
        configured_simulator, redis_url, tmp_path, key_template, 1
    )
    stream, dead = stream_of(settings, "app-alpha"), dead_of(stream_of(settings, None))
    ((dead_id, fields),) = await redis_client.xrange(dead)
    assert fields[b"reason"] == DEAD_REASON.encode()
    sink = await connected(redis_url, key_template)
    try:
        same = await deadletters.retry(sink.dead_letters())
        assert [o.status for o in same.outcomes] == ["unchanged"]
        assert [i for i, _f in await redis_client.xrange(dead)] == [dead_id]

        monkeypatch.setattr(body_module, "MAX_DEPTH", 100)
        report = await deadletters.retry(sink.dead_letters())
        assert [(o.status, o.messages) for o in report.outcomes] == [("redriven", {"app-alpha": 1})]
        again = await deadletters.retry(sink.dead_letters())
        assert again.outcomes == []
        (totals,) = await sink.dead_letters().dead_streams([""])
        assert (totals.length, totals.redriven) == (0, 1)
    finally:
        await sink.close()
    entries = await stream_entries(redis_client, stream)
    assert [e["id"] for e in entries] == ["good-1", "deep-0"]
    assert entries[1]["payload"].encode() == fields[b"raw"]
    assert json.loads(entries[1]["payload"])["x"] == nested(70)
    assert_schema(entries, "infobip.push.mo.v1")
    assert await redis_client.xlen(dead) == 0


async def test_two_retries_at_the_same_time_write_each_letter_once(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tried: 40 letters, two retries on two connections at once (their reads and re-drives
    interleave on the server), then both again."""
    await quarantine_deep_items(configured_simulator, redis_url, tmp_path, key_template, 40)
    monkeypatch.setattr(body_module, "MAX_DEPTH", 100)
    one, two = [await connected(redis_url, key_template) for _ in range(2)]
    try:
        reports = await asyncio.gather(
            deadletters.retry(one.dead_letters()), deadletters.retry(two.dead_letters())
        )
        assert sum(r.count("redriven") for r in reports) == 40
        assert {o.status for r in reports for o in r.outcomes} <= {"redriven", "already"}
        late = await asyncio.gather(
            deadletters.retry(one.dead_letters()), deadletters.retry(two.dead_letters())
        )
        assert [r.outcomes for r in late] == [[], []]
        (totals,) = await one.dead_letters().dead_streams([""])
        assert totals.redriven == 40
    finally:
        await one.close()
        await two.close()
    counts = await ids_in_streams(redis_client, key_template)
    assert counts == {"good-1": 1, **{f"deep-{n}": 1 for n in range(40)}}


async def poisoned(
    redis_client: Redis, sink: RedisSink, app: str, ids: list[str]
) -> tuple[StreamConsumer, str]:
    """Messages a consumer group gave up on, moved by the consumer helper's own script."""
    stream = sink.stream_key(app)
    for message_id in ids:
        payload = json.dumps({"messageId": message_id, "applicationCode": app, "text": "t"})
        fields = {"id": message_id, "app": app, "received_at": "", "pulled_at": AT}
        await redis_client.xadd(stream, {**fields, "payload": payload, "schema": "x"})
    consumer = StreamConsumer(redis_client, stream, "billing", "worker-1")
    await consumer.ensure_group()
    for message in await consumer.read(count=100):
        reason = (
            "delivered 6 times to group billing without an acknowledgement"
            f" (entry {message.entry_id})"
        )
        assert await consumer.dead_letter(message.entry_id, reason)
    return consumer, stream


async def test_two_poller_dead_retry_processes_at_once_put_each_poison_entry_back_once(
    redis_url: str, redis_client: Redis, tmp_path: Path, key_template: str
) -> None:
    """Tried: three entries a consumer group moved to the dead-letter stream (the consumer
    helper's Lua, which keeps the payload, the app and pulled_at); `poller dead list` counts
    them under one reason; two `poller dead retry --reason delivered` processes at once, then
    one more: the group is handed each message once more, not twice."""
    settings = cli_settings(redis_url, key_template, tmp_path)
    sink = await connected(redis_url, key_template)
    try:
        consumer, stream = await poisoned(redis_client, sink, "app-p", ["p-1", "p-2", "p-3"])
    finally:
        await sink.close()
    listed = await asyncio.to_thread(run_poller, settings, "dead", "list", "app-p")
    assert listed.returncode == 0, listed.stderr
    assert "3 dead letters" in listed.stdout
    assert "     3  delivered 6 times to group billing without an acknowledgement  (" in (
        listed.stdout
    )
    runs = await asyncio.gather(
        *(
            asyncio.to_thread(run_poller, settings, "dead", "retry", "--reason", "delivered")
            for _ in range(2)
        )
    )
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert sum(r.stdout.count("re-driven   ") for r in runs) == 3
    last = await asyncio.to_thread(run_poller, settings, "dead", "retry")
    assert "0 letters" in last.stdout
    again = await consumer.read(count=100)
    assert sorted(m.message_id for m in again) == ["p-1", "p-2", "p-3"]
    assert await consumer.read(count=100) == []
    assert await redis_client.xlen(dead_of(stream)) == 0
    listed = await asyncio.to_thread(run_poller, settings, "dead", "list", "app-p", "--json")
    (summary,) = json.loads(listed.stdout)
    assert (summary["length"], summary["redriven_total"], summary["reasons"]) == (0, 3, [])


async def test_what_still_fails_keeps_its_place_with_the_new_reason_and_shows_escaped(
    redis_url: str, redis_client: Redis, tmp_path: Path, key_template: str
) -> None:
    """Tried: an item with no messageId quarantined under an older rule's reason, and bytes
    that are no JSON holding a terminal's escape sequences and a byte that is not UTF-8."""
    settings = cli_settings(redis_url, key_template, tmp_path)
    raw = b'{"applicationCode": "app-s", "text": "no id"}'
    garbage = b"\x1b]0;pwned\x07 \xff clear\x1b[2J"
    sink = await connected(redis_url, key_template)
    try:
        await sink.write_dead(
            [
                QuarantineEntry(1, garbage, NOT_JSON, "app-s", AT, "w"),
                QuarantineEntry(2, raw, "an older rule", "app-s", AT, "w"),
            ]
        )
    finally:
        await sink.close()
    dead = dead_of(stream_key(key_template, "app-s"))
    (garbage_id, _), (old_id, _) = await redis_client.xrange(dead)

    shown = await asyncio.to_thread(run_poller, settings, "dead", "show", garbage_id.decode())
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout
    assert "\x07" not in shown.stdout
    assert "\\x1b]0;pwned\\x07 \\xff clear\\x1b[2J" in shown.stdout
    assert f"reason      {NOT_JSON}" in shown.stdout
    as_json = await asyncio.to_thread(
        run_poller, settings, "dead", "show", garbage_id.decode(), "--json"
    )
    (letter,) = json.loads(as_json.stdout)
    assert base64.b64decode(letter["raw_base64"]) == garbage

    done = await asyncio.to_thread(run_poller, settings, "dead", "retry", "--app", "app-s")
    assert done.returncode == 0, done.stderr
    assert f"unchanged   1 letter: {NOT_JSON}" in done.stdout
    (kept_id, _), (new_id, fields) = await redis_client.xrange(dead)
    assert kept_id == garbage_id
    assert new_id != old_id
    assert f"still fails {dead} {old_id.decode()}: result item has no messageId (now" in (
        done.stdout
    )
    assert fields == {
        b"reason": b"result item has no messageId",
        b"raw": raw,
        b"app": b"app-s",
        b"pulled_at": AT.encode(),
        b"schema": b"infobip.push.mo.dead.v1",
    }
    assert_schema([{k.decode(): v.decode() for k, v in fields.items()}], "infobip.push.mo.dead.v1")
    twice = await asyncio.to_thread(run_poller, settings, "dead", "retry", "--app", "app-s")
    assert "2 letters: 0 re-driven (0 messages), 0 still failing" in twice.stdout
    assert [i for i, _f in await redis_client.xrange(dead)] == [garbage_id, new_id]
    assert await redis_client.xlen(stream_key(key_template, "app-s")) == 0
    gone = await asyncio.to_thread(run_poller, settings, "dead", "show", old_id.decode())
    assert gone.returncode == 1
    assert "no dead letter" in gone.stderr
    bad = await asyncio.to_thread(run_poller, settings, "dead", "retry", "--id", "nope")
    assert bad.returncode == 2
    assert "not a dead letter id: nope" in bad.stderr


async def test_a_purge_never_touches_a_message_stream(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    tmp_path: Path,
    key_template: str,
) -> None:
    """Tried: the daemon's streams (messages with a consumer group, and dead letters), purges
    by a dry run, by an age nothing has, and by 0 s (everything older than now)."""
    settings = await quarantine_deep_items(
        configured_simulator, redis_url, tmp_path, key_template, 3
    )
    stream, dead = stream_of(settings, "app-alpha"), dead_of(stream_of(settings, None))
    await redis_client.xgroup_create(stream, "billing", id="0")
    messages = await redis_client.xrange(stream)
    groups = await redis_client.xinfo_groups(stream)
    last_dead = (await redis_client.xrevrange(dead, count=1))[0][0].decode()
    # Every letter is older than "now" once the server's clock passes the last one's ms.
    while int(last_dead.split("-")[0]) >= await server_ms(redis_client):
        await asyncio.sleep(0.002)
    dry = await asyncio.to_thread(
        run_poller, settings, "dead", "purge", "--older-than", "0s", "--dry-run"
    )
    assert "would purge 3 dead letters in all" in dry.stdout, dry.stderr
    assert await redis_client.xlen(dead) == 3
    young = await asyncio.to_thread(run_poller, settings, "dead", "purge", "--older-than", "7d")
    assert "purged 0 dead letters in all" in young.stdout
    done = await asyncio.to_thread(run_poller, settings, "dead", "purge", "--older-than", "0s")
    assert done.returncode == 0, done.stderr
    assert "purged 3 dead letters in all" in done.stdout
    assert await redis_client.xlen(dead) == 0
    assert await redis_client.xrange(stream) == messages
    assert await redis_client.xinfo_groups(stream) == groups
    listed = await asyncio.to_thread(run_poller, settings, "dead", "list", "--json")
    assert [(s["stream"], s["purged_total"]) for s in json.loads(listed.stdout)] == [(dead, 3)]


async def test_in_a_cluster_a_letter_of_other_slots_is_redriven_once_even_when_cut_short(
    redis_cluster: list[EmbeddedRedis], key_template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: a forwarded body refused whole (no application: the `unknown` dead-letter
    stream) holding messages of two applications whose streams live in other slots, and a
    letter of one of them (in its own dead-letter stream: the same slot as its stream). The
    first retry of the body dies after its messages went in and before it was settled (the
    process killed between two calls: the one fault here no server can produce, so the
    settle call raises); the next retry adds nothing twice and settles both."""
    no_app = stream_key(key_template, None)
    apps = [
        a
        for a in (f"app-{n}" for n in range(40))
        if key_slot(stream_key(key_template, a).encode()) != key_slot(no_app.encode())
    ][:2]
    sink = redis_sink(redis_cluster[0].url, key_template, instance_id="dead-c", mode="cluster")
    client = RedisCluster.from_url(redis_cluster[0].url)
    await sink.connect()
    try:
        body = json.dumps([{"messageId": f"f-{a}", "applicationCode": a} for a in apps])
        entry = QuarantineEntry(1, body.encode(), "forwarded body: an older rule", None, AT, "w")
        item = json.dumps({"messageId": f"g-{apps[0]}", "applicationCode": apps[0]}).encode()
        await sink.write_dead([entry, QuarantineEntry(2, item, "an older rule", apps[0], AT, "w")])
        calls = 0
        settle = redis_dead._SETTLE

        async def dies_once(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RedisConnectionError("the process died here")
            return await settle(*args)

        monkeypatch.setattr(redis_dead, "_SETTLE", dies_once)
        with pytest.raises(SinkError):
            await deadletters.retry(sink.dead_letters(), apps=[""], forward_apps=apps)
        for app in apps:
            assert await client.xlen(sink.stream_key(app)) == 1
        assert await client.xlen(dead_of(no_app)) == 1
        report = await deadletters.retry(sink.dead_letters(), forward_apps=apps)
        assert sorted((o.letter.app, o.status, o.messages) for o in report.outcomes) == [
            ("", "redriven", dict.fromkeys(apps, 1)),
            (apps[0], "redriven", {apps[0]: 1}),
        ]
        assert await deadletters.retry(sink.dead_letters()) == deadletters.RetryReport()
        ids = [[f[b"id"] for _i, f in await client.xrange(sink.stream_key(a))] for a in apps]
        assert ids == [
            [f"f-{apps[0]}".encode(), f"g-{apps[0]}".encode()],
            [f"f-{apps[1]}".encode()],
        ]
        for app in ("", *apps):
            assert await client.xlen(dead_of(stream_key(key_template, app))) == 0
    finally:
        await sink.close()
        await client.aclose()
