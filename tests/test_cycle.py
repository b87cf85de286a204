"""The poll cycle against the simulator and a real Redis/Valkey: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from redis.asyncio import Redis

from poller.cycle import CycleResult, PollCycle
from poller.daemon import run_once
from poller.embedded import EmbeddedRedis
from poller.infobip import InfobipClient
from poller.runtime import Runtime, make_sink
from poller.simulator import Simulator
from poller.spool import Spool
from tests.support import ids_at, ids_in_streams, make_settings, stream_entries

APPS = ["app-alpha", "app-beta", "app-gamma"]


async def cycle_held_by_a_full_disk(
    rt: Runtime, sim: Simulator, count: int
) -> asyncio.Task[CycleResult]:
    """Start a cycle that pulls `count` messages into a spool that may not grow (SQLite's own
    "database or disk is full", from a capped page count); return once it holds them."""
    conn = rt.spool._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    sim.inject("app-alpha", count)
    task = asyncio.create_task(rt.cycle.run())
    for _ in range(100):
        if rt.cycle.spool_error:
            break
        await asyncio.sleep(0.05)
    assert rt.cycle.spool_error is not None
    return task


def message(app: str, n: int) -> dict[str, object]:
    """A message with every documented field, unicode, nesting and an unknown field."""
    return {
        "messageId": f"{app}-msg-{n:05d}",
        "pairedMessageId": f"mt-{n}",
        "from": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "subscriberId": f"sub-{n}",
        "to": app,
        "applicationCode": app,
        "receivedAt": "2026-11-26T14:48:46.123+0000",
        "callbackData": "cb",
        "text": f"KEY Zürich → 東京 🚆 #{n}\nsecond line",
        "cleanText": f"Zürich → 東京 🚆 #{n}",
        "keyword": "KEY",
        "customPayload": {"order": {"id": n, "items": [1, 2.5, None, True]}, "note": "ünïcödé"},
        "bulkId": "bulk-1",
        "initialMessageId": f"init-{n}",
        "someFutureField": {"nested": [n, "x"]},
    }


async def test_once_drains_every_app_into_its_stream_exactly_once_with_every_field(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: 2,400 messages over three applications, more than two pulls of 1000.
    sent = {app: [message(app, n) for n in range(800)] for app in APPS}
    for app in APPS:
        configured_simulator.inject_raw(sent[app])
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template, apps=APPS)

    assert await run_once(settings) == 0

    for app in APPS:
        entries = await stream_entries(redis_client, settings.stream_key(app))
        assert [e["id"] for e in entries] == [m["messageId"] for m in sent[app]]
        for entry, original in zip(entries, sent[app], strict=True):
            assert json.loads(entry["payload"]) == original
            assert entry["app"] == app
            assert entry["received_at"] == original["receivedAt"]
            assert entry["schema"] == "infobip.push.mo.v1"
            assert entry["pulled_at"].endswith("Z")
    assert configured_simulator.inbox_depth == 0
    assert len(configured_simulator.ledger.ids()) == 2400


async def test_messages_of_an_application_not_configured_still_reach_their_stream(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: the poller is configured for one application; the inbox holds another's too.
    configured_simulator.inject("app-beta", 5)
    settings = make_settings(
        configured_simulator, redis_url, tmp_path, key_template, apps=["app-alpha"]
    )
    assert await run_once(settings) == 0
    assert len(await stream_entries(redis_client, settings.stream_key("app-beta"))) == 5


async def test_replay_after_crash_between_xadd_and_commit_adds_nothing_twice(
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
    configured_simulator: Simulator,
) -> None:
    # Tried: the sink wrote the batch but the process died before spool.commit; restart.
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    configured_simulator.inject("app-alpha", 300)
    async with InfobipClient(settings.infobip) as client:
        response = await client.pull(1000)
    from poller.cycle import now_rfc3339, split_results

    messages, _ = split_results(response, now_rfc3339())
    spool = Spool.open(settings.spool.path, max_rows=10_000, max_bytes=10**9)
    spool.append(messages)
    sink = make_sink(settings, spool.instance_id)
    await sink.connect()
    await sink.write(spool.pending(1000))  # ... and the crash: no commit
    await sink.close()
    spool.close()

    rt = await Runtime.open(settings)
    try:
        flushed = await rt.cycle.flush()
        assert flushed.total_written == 0
        assert flushed.skipped == 300
        assert rt.spool.stats().rows == 0
    finally:
        await rt.close()
    counts = await ids_in_streams(redis_client, key_template)
    assert len(counts) == 300
    assert set(counts.values()) == {1}


async def test_redis_down_keeps_messages_in_spool_until_it_returns(
    configured_simulator: Simulator,
    own_redis: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: Redis killed before a cycle; 400 messages pulled; Redis restarted; next cycle.
    settings = make_settings(
        configured_simulator,
        own_redis.url,
        tmp_path,
        key_template,
        redis={"socket_timeout": 1.0},
    )
    rt = await Runtime.open(settings)
    try:
        own_redis.kill()
        configured_simulator.inject("app-alpha", 400)
        result = await rt.cycle.run()
        assert result.pulled == 400
        assert result.flush_error is not None
        assert rt.spool.stats().rows == 400
        assert configured_simulator.inbox_depth == 0

        own_redis.restart()
        result = await rt.cycle.run()
        assert result.flush_error is None
        assert result.written == 400
        assert rt.spool.stats().rows == 0
    finally:
        await rt.close()
    counts = await ids_at(own_redis.url, key_template)
    assert set(counts) == set(configured_simulator.ledger.ids())
    assert set(counts.values()) == {1}


async def test_spool_cap_pauses_pulling_and_pulling_resumes(
    configured_simulator: Simulator,
    own_redis: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: spool capped at 150 rows, Redis down, 1000 messages waiting at Infobip.
    settings = make_settings(
        configured_simulator,
        own_redis.url,
        tmp_path,
        key_template,
        infobip={"pull_limit": 50},
        spool={"max_rows": 150},
        redis={"socket_timeout": 1.0},
    )
    configured_simulator.inject("app-gamma", 1000)
    rt = await Runtime.open(settings)
    try:
        own_redis.kill()
        result = await rt.cycle.run()
        assert result.backpressure
        assert rt.spool.stats().rows == 150
        assert configured_simulator.inbox_depth == 850  # pulling stopped at the cap
        again = await rt.cycle.run()
        assert again.backpressure
        assert again.pulls == 0
        assert configured_simulator.inbox_depth == 850

        own_redis.restart()
        result = await rt.cycle.run()
        assert not result.backpressure
        assert configured_simulator.inbox_depth == 0
        assert rt.spool.stats().rows == 0
    finally:
        await rt.close()
    counts = await ids_at(own_redis.url, key_template)
    assert len(counts) == 1000
    assert set(counts.values()) == {1}


async def test_garbled_entries_and_bodies_land_in_quarantine_and_dead_letter_stream(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: an entry with no messageId, one that is a bare string, and a whole body
    # that is not JSON; good messages around them must still arrive.
    configured_simulator.inject("app-alpha", 3)
    configured_simulator.inject_raw([{"applicationCode": "app-beta", "text": "no id"}])
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    rt = await Runtime.open(settings)
    try:
        result = await rt.cycle.run()
        assert result.pulled == 3
        assert result.quarantined == 1
        configured_simulator.inject("app-alpha", 2)
        configured_simulator.add_fault("invalid_json", count=1, path="/push/1/inbox/reports")
        result = await rt.cycle.run()
        stats = rt.spool.stats()
        assert stats.quarantined == 2
        assert stats.quarantine_pending == 0
    finally:
        await rt.close()

    dead_beta = await stream_entries(redis_client, settings.stream_key("app-beta") + ":dead")
    assert len(dead_beta) == 1
    assert json.loads(dead_beta[0]["raw"]) == {"applicationCode": "app-beta", "text": "no id"}
    assert "messageId" in dead_beta[0]["reason"]
    dead_unknown = await stream_entries(redis_client, settings.stream_key("unknown") + ":dead")
    assert len(dead_unknown) == 1
    assert dead_unknown[0]["reason"].startswith("not JSON")
    # The garbled body's messages are gone from Infobip; the ledger marks them handed out in a
    # corrupted response, and the raw bytes are kept for an operator to recover.
    assert len(await stream_entries(redis_client, settings.stream_key("app-alpha"))) == 3


@pytest.mark.parametrize("kind", ["truncated", "drop"])
async def test_cut_pull_response_is_quarantined_and_draining_goes_on(
    kind: str,
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: the pull response is cut mid-body; the next pulls must still drain the inbox.
    configured_simulator.inject("app-alpha", 120)
    settings = make_settings(
        configured_simulator, redis_url, tmp_path, key_template, infobip={"pull_limit": 40}
    )
    configured_simulator.add_fault(kind, count=1, path="/push/1/inbox/reports")
    rt = await Runtime.open(settings)
    try:
        await rt.cycle.run()
    finally:
        await rt.close()
    lost = configured_simulator.ledger.undelivered_ids()
    assert len(lost) == 40
    counts = await ids_in_streams(redis_client, key_template)
    assert set(counts) == set(configured_simulator.ledger.ids()) - lost
    assert configured_simulator.inbox_depth == 0


async def test_once_exits_non_zero_when_messages_stay_in_the_spool(
    configured_simulator: Simulator,
    own_redis: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: Redis stopped before `once`; exit status must say the messages did not arrive.
    settings = make_settings(
        configured_simulator,
        own_redis.url,
        tmp_path,
        key_template,
        redis={"socket_timeout": 1.0},
    )
    configured_simulator.inject("app-alpha", 10)
    own_redis.kill()
    assert await run_once(settings, bootstrap=False) == 1
    spool = Spool.open(settings.spool.path, max_rows=10, max_bytes=10**6)
    try:
        assert spool.stats().rows == 10
    finally:
        spool.close()
    own_redis.restart()
    assert await run_once(settings, bootstrap=False) == 0


async def test_poll_cycle_counts_pulls_and_stops_when_inbox_empty(
    configured_simulator: Simulator,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: 230 messages with limit 100: three pulls, the third reports nothing pending.
    configured_simulator.inject("app-alpha", 230)
    settings = make_settings(
        configured_simulator, redis_url, tmp_path, key_template, infobip={"pull_limit": 100}
    )
    rt = await Runtime.open(settings)
    try:
        assert isinstance(rt.cycle, PollCycle)
        result = await rt.cycle.run()
    finally:
        await rt.close()
    assert result.pulls == 3
    assert result.pulled == 230
    assert result.written == 230
    assert result.pending_reported == 0


async def test_disk_full_holds_the_pulled_batch_until_the_spool_takes_it(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: the spool file may not grow (SQLite's own "database or disk is full", produced by
    # capping the page count) when a pull returns 200 messages; then space comes back.
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    rt = await Runtime.open(settings)
    try:
        task = await cycle_held_by_a_full_disk(rt, configured_simulator, 200)
        assert "full" in rt.cycle.spool_error
        assert configured_simulator.inbox_depth == 0  # handed out: only our memory has them
        assert not task.done()

        rt.spool._conn.execute("PRAGMA max_page_count = 1073741823")
        result = await asyncio.wait_for(task, timeout=30)
        assert result.pulled == 200
        assert rt.cycle.spool_error is None
    finally:
        await rt.close()
    counts = await ids_in_streams(redis_client, key_template)
    assert set(counts) == set(configured_simulator.ledger.ids())
    assert len(counts) == 200


async def test_half_an_emoji_in_a_message_loses_nothing(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: a text ending in an unpaired surrogate (an emoji cut in half by a sender), which
    # JSON allows and UTF-8 cannot store, between two ordinary messages.
    batch = [message("app-alpha", 1), message("app-alpha", 2), message("app-alpha", 3)]
    batch[1]["text"] = "cut emoji \ud83d"
    configured_simulator.inject_raw(batch)
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    assert await run_once(settings, bootstrap=False) == 0
    entries = await stream_entries(redis_client, settings.stream_key("app-alpha"))
    assert [e["id"] for e in entries] == [m["messageId"] for m in batch]
    assert json.loads(entries[1]["payload"])["text"] == "cut emoji \ud83d"


def test_a_pull_body_nested_too_deeply_is_malformed_not_a_crash() -> None:
    from poller.infobip import MalformedResponseError, parse_pull

    body = b'{"results":[' + b"[" * 200_000 + b"]" * 200_000 + b"]}"
    with pytest.raises(MalformedResponseError) as info:
        parse_pull(body)
    assert info.value.body == body


async def test_a_stream_redis_refuses_does_not_hold_back_the_other_applications(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: app-beta's stream key already exists as a plain string (WRONGTYPE) while 6,000
    # messages of app-alpha and 50 of app-beta arrive; more than one flush slice of rows.
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        infobip={"rate_limit": 100},
    )
    await redis_client.set(settings.stream_key("app-beta"), "not a stream")
    configured_simulator.inject_raw([message("app-beta", n) for n in range(50)])
    configured_simulator.inject("app-alpha", 6000)
    rt = await Runtime.open(settings)
    try:
        result = await rt.cycle.run()
        assert result.flush_error is not None
        assert settings.stream_key("app-beta") in result.flush_error
        assert rt.spool.stats().rows == 50
        assert await redis_client.xlen(settings.stream_key("app-alpha")) == 6000

        await redis_client.delete(settings.stream_key("app-beta"))
        result = await rt.cycle.run()
        assert result.flush_error is None
        assert rt.spool.stats().rows == 0
    finally:
        await rt.close()
    assert await redis_client.xlen(settings.stream_key("app-beta")) == 50


async def test_durability_the_server_cannot_give_fails_the_start_naming_the_setting(
    configured_simulator: Simulator,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: POLLER_REDIS__DURABILITY=waitaof against a server running without an AOF.
    with EmbeddedRedis(appendonly=False) as server:
        settings = make_settings(
            configured_simulator,
            server.url,
            tmp_path,
            key_template,
            redis={"durability": "waitaof", "durability_replicas": 0},
        )
        assert await run_once(settings, bootstrap=False) == 1
    spool_lock_free = Spool.open(settings.spool.path, max_rows=10, max_bytes=10**6)
    spool_lock_free.close()


async def test_rows_of_a_parked_stream_survive_later_slices_of_other_streams(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tried: a refused stream (WRONGTYPE) whose rows come first, then more slices of another
    # application: a later slice's commit must not delete the parked rows below it. Slices of
    # 4 rows stand in for the real 5,000 so that a few messages cross several slices.
    import poller.cycle

    monkeypatch.setattr(poller.cycle, "FLUSH_ROWS", 4)
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    await redis_client.set(settings.stream_key("app-beta"), "not a stream")
    configured_simulator.inject_raw([message("app-beta", n) for n in range(10)])
    configured_simulator.inject_raw([message("app-alpha", n) for n in range(13)])
    configured_simulator.inject_raw(
        [{"applicationCode": "app-beta", "text": "no id"}, {"text": "no app either"}]
    )
    await redis_client.set(settings.stream_key("app-beta") + ":dead", "not a stream")
    rt = await Runtime.open(settings)
    try:
        await rt.cycle.run()
        stats = rt.spool.stats()
        assert stats.rows == 10  # app-beta's, every one of them
        assert stats.quarantine_pending == 1  # app-beta's dead letter waits too
        assert await redis_client.xlen(settings.stream_key("app-alpha")) == 13

        await redis_client.delete(settings.stream_key("app-beta"))
        await redis_client.delete(settings.stream_key("app-beta") + ":dead")
        await rt.cycle.run()
        assert rt.spool.stats().rows == 0
        assert rt.spool.stats().quarantine_pending == 0
    finally:
        await rt.close()
    beta = await stream_entries(redis_client, settings.stream_key("app-beta"))
    assert [e["id"] for e in beta] == [f"app-beta-msg-{n:05d}" for n in range(10)]


async def test_unstorable_text_in_any_field_loses_no_message(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: lone surrogates in receivedAt (a message) and in applicationCode (not routable:
    # quarantined), among ordinary messages.
    odd_time = message("app-alpha", 2)
    odd_time["receivedAt"] = "2026-11-26T14:48:46.123+0000\udc80"
    odd_app = message("app-alpha", 3)
    odd_app["applicationCode"] = "app-\ud800"
    configured_simulator.inject_raw([message("app-alpha", 1), odd_time, odd_app])
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    assert await run_once(settings, bootstrap=False) == 0
    entries = await stream_entries(redis_client, settings.stream_key("app-alpha"))
    assert [e["id"] for e in entries] == ["app-alpha-msg-00001", "app-alpha-msg-00002"]
    assert json.loads(entries[1]["payload"])["receivedAt"] == odd_time["receivedAt"]
    dead = await stream_entries(redis_client, settings.stream_key("unknown") + ":dead")
    assert len(dead) == 1
    assert "applicationCode" in dead[0]["reason"]


async def test_last_good_poll_is_not_stamped_while_redis_refuses_the_writes(
    configured_simulator: Simulator,
    own_redis: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: pulls work but Redis is gone: readiness must not keep saying all is well.
    settings = make_settings(
        configured_simulator,
        own_redis.url,
        tmp_path,
        key_template,
        redis={"socket_timeout": 1.0},
    )
    rt = await Runtime.open(settings)
    try:
        configured_simulator.inject("app-alpha", 5)
        await rt.cycle.run()
        first = rt.cycle.last_success
        assert first is not None
        own_redis.kill()
        configured_simulator.inject("app-alpha", 5)
        result = await rt.cycle.run()
        assert result.pulled == 5
        assert rt.cycle.last_success == first
    finally:
        await rt.close()


async def test_a_stop_gives_up_a_batch_the_spool_refuses_by_the_deadline_and_logs_it(
    configured_simulator: Simulator,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Tried: disk full while a pulled batch waits in memory, then a stop with 3 s left: the
    # cycle must end by the deadline (the supervisor's SIGKILL comes next) with the batch in
    # the log, and say so.
    import time

    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    rt = await Runtime.open(settings)
    try:
        task = await cycle_held_by_a_full_disk(rt, configured_simulator, 7)
        rt.begin_stop(time.monotonic() + 3.0)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 3.0
        assert rt.cycle.abandoned == 7
    finally:
        await rt.close()
    logged = capsys.readouterr().out
    for message_id in configured_simulator.ledger.ids():
        assert message_id in logged
