"""The pull source, spool and flusher against the simulator and a real Redis/Valkey: nothing
lost, nothing twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from redis.asyncio import Redis

from poller.daemon import run_once
from poller.devtools.embedded import EmbeddedRedis
from poller.devtools.simulator import Simulator
from poller.infobip import InfobipClient
from poller.runtime import Runtime
from poller.sink import SinkError
from poller.sink.factory import open_sink
from poller.sources.items import now_rfc3339, rows_from_items
from poller.sources.pull import DrainResult, PullSource
from poller.spool import Spool
from poller.stop import Stop
from tests.support import (
    assert_schema,
    ids_at,
    ids_in_streams,
    make_settings,
    open_runtime,
    stream_entries,
    stream_of,
)

APPS = ["app-alpha", "app-beta", "app-gamma"]
PULL_PATH = "/push/1/inbox/reports"


async def drain_and_flush(rt: Runtime) -> tuple[DrainResult, str | None]:
    """One drain, then one flush as the flusher would do it; the flush's error, if any."""
    result = await rt.pull.drain()
    try:
        await rt.flusher.flush()
    except SinkError as exc:
        return result, str(exc)
    return result, None


async def drain_held_by_a_full_disk(
    rt: Runtime, sim: Simulator, count: int
) -> asyncio.Task[DrainResult]:
    """Start a drain that pulls `count` messages into a spool that may not grow (SQLite's own
    "database or disk is full", from a capped page count); return once it holds them."""
    conn = rt.spool._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    sim.inject("app-alpha", count)
    task = asyncio.create_task(rt.pull.drain())
    for _ in range(100):
        if rt.pull.spool_error:
            break
        await asyncio.sleep(0.05)
    assert rt.pull.spool_error is not None
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
        entries = await stream_entries(redis_client, stream_of(settings, app))
        assert [e["id"] for e in entries] == [m["messageId"] for m in sent[app]]
        for entry, original in zip(entries, sent[app], strict=True):
            assert json.loads(entry["payload"]) == original
            assert entry["app"] == app
            assert entry["received_at"] == original["receivedAt"]
            assert entry["schema"] == "infobip.push.mo.v1"
            assert entry["pulled_at"].endswith("Z")
        assert_schema(entries, "infobip.push.mo.v1")
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
    assert len(await stream_entries(redis_client, stream_of(settings, "app-beta"))) == 5


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
    items = list(zip(response.items, response.routes, strict=True))
    messages, _ = rows_from_items(items, now_rfc3339())
    spool = Spool.open(settings.spool.path, max_rows=10_000, max_bytes=10**9)
    spool.append(messages)
    sink = open_sink(settings, spool.instance_id)
    await sink.connect()
    await sink.write(spool.pending(1000))  # ... and the crash: no commit
    await sink.close()
    spool.close()

    async with open_runtime(settings) as rt:
        flushed = await rt.flusher.flush()
        assert flushed.total_written == 0
        assert flushed.skipped == 300
        assert rt.spool.stats().rows == 0
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
    async with open_runtime(settings) as rt:
        own_redis.kill()
        configured_simulator.inject("app-alpha", 400)
        result, error = await drain_and_flush(rt)
        assert result.pulled == 400
        assert error is not None
        assert rt.spool.stats().rows == 400
        assert configured_simulator.inbox_depth == 0

        own_redis.restart()
        result, error = await drain_and_flush(rt)
        assert error is None
        assert rt.flusher.written == 400
        assert rt.spool.stats().rows == 0
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
    async with open_runtime(settings) as rt:
        own_redis.kill()
        result, _ = await drain_and_flush(rt)
        assert result.backpressure
        assert rt.spool.stats().rows == 150
        assert configured_simulator.inbox_depth == 850  # pulling stopped at the cap
        again, _ = await drain_and_flush(rt)
        assert again.backpressure
        assert again.pulls == 0
        assert configured_simulator.inbox_depth == 850

        own_redis.restart()
        # Each tick drains up to the cap again while the flusher empties the spool.
        for _ in range(20):
            if not configured_simulator.inbox_depth:
                break
            await drain_and_flush(rt)
        assert configured_simulator.inbox_depth == 0
        assert rt.spool.stats().rows == 0
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
    async with open_runtime(settings) as rt:
        result, _ = await drain_and_flush(rt)
        assert result.pulled == 3
        assert result.quarantined == 1
        configured_simulator.inject("app-alpha", 2)
        configured_simulator.add_fault("invalid_json", count=1, path="/push/1/inbox/reports")
        result, _ = await drain_and_flush(rt)
        stats = rt.spool.stats()
        assert stats.quarantined == 2
        assert stats.quarantine_pending == 0

    dead_beta = await stream_entries(redis_client, stream_of(settings, "app-beta") + ":dead")
    assert len(dead_beta) == 1
    assert json.loads(dead_beta[0]["raw"]) == {"applicationCode": "app-beta", "text": "no id"}
    assert "messageId" in dead_beta[0]["reason"]
    dead_unknown = await stream_entries(redis_client, stream_of(settings, None) + ":dead")
    assert len(dead_unknown) == 1
    assert_schema([*dead_beta, *dead_unknown], "infobip.push.mo.dead.v1")
    assert dead_unknown[0]["reason"].startswith("not JSON")
    # The garbled answer's first item arrived whole and is kept; the bytes from the first
    # item that did not are in the dead-letter stream for an operator to recover.
    assert "1 whole items before it were kept" in dead_unknown[0]["reason"]
    assert len(await stream_entries(redis_client, stream_of(settings, "app-alpha"))) == 4


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
    async with open_runtime(settings) as rt:
        await drain_and_flush(rt)
    cut = configured_simulator.ledger.undelivered_ids()
    assert len(cut) == 40
    counts = await ids_in_streams(redis_client, key_template)
    handed_out = set(configured_simulator.ledger.ids())
    assert handed_out - cut <= set(counts) <= handed_out
    assert set(counts.values()) == {1}
    # Every item of the cut answer that arrived whole is kept; the rest is in quarantine.
    salvaged = set(counts) & cut
    assert (len(salvaged) > 0) == (kind == "truncated")
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
    async with open_runtime(settings) as rt:
        assert isinstance(rt.pull, PullSource)
        result, _ = await drain_and_flush(rt)
    assert result.pulls == 3
    assert result.pulled == 230
    assert rt.flusher.written == 230
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
    async with open_runtime(settings) as rt:
        task = await drain_held_by_a_full_disk(rt, configured_simulator, 200)
        assert "full" in rt.pull.spool_error
        assert configured_simulator.inbox_depth == 0  # handed out: only our memory has them
        assert not task.done()

        rt.spool._conn.execute("PRAGMA max_page_count = 1073741823")
        result = await asyncio.wait_for(task, timeout=30)
        assert result.pulled == 200
        assert rt.pull.spool_error is None
        await rt.flusher.flush()
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
    entries = await stream_entries(redis_client, stream_of(settings, "app-alpha"))
    assert [e["id"] for e in entries] == [m["messageId"] for m in batch]
    assert json.loads(entries[1]["payload"])["text"] == "cut emoji \ud83d"


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
    await redis_client.set(stream_of(settings, "app-beta"), "not a stream")
    configured_simulator.inject_raw([message("app-beta", n) for n in range(50)])
    configured_simulator.inject("app-alpha", 6000)
    async with open_runtime(settings) as rt:
        await rt.pull.drain()
        flushed = await rt.flusher.flush()
        assert set(flushed.failed) == {"app-beta"}
        assert "WRONGTYPE" in flushed.failed["app-beta"]
        assert rt.spool.stats().rows == 50
        assert await redis_client.xlen(stream_of(settings, "app-alpha")) == 6000

        await redis_client.delete(stream_of(settings, "app-beta"))
        # Parked: left out until its backoff has passed (a stop's last flush tries it anyway).
        assert (await rt.flusher.flush()).failed == {"app-beta": flushed.failed["app-beta"]}
        assert rt.spool.stats().rows == 50
        flushed = await rt.flusher.flush(retry_parked=True)
        assert flushed.failed == {}
        assert rt.spool.stats().rows == 0
    assert await redis_client.xlen(stream_of(settings, "app-beta")) == 50


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
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    await redis_client.set(stream_of(settings, "app-beta"), "not a stream")
    configured_simulator.inject_raw([message("app-beta", n) for n in range(10)])
    configured_simulator.inject_raw([message("app-alpha", n) for n in range(13)])
    configured_simulator.inject_raw(
        [{"applicationCode": "app-beta", "text": "no id"}, {"text": "no app either"}]
    )
    await redis_client.set(stream_of(settings, "app-beta") + ":dead", "not a stream")
    async with open_runtime(settings) as rt:
        rt.flusher.rows = 4
        await drain_and_flush(rt)
        stats = rt.spool.stats()
        assert stats.rows == 10  # app-beta's, every one of them
        assert stats.quarantine_pending == 1  # app-beta's dead letter waits too
        assert await redis_client.xlen(stream_of(settings, "app-alpha")) == 13

        await redis_client.delete(stream_of(settings, "app-beta"))
        await redis_client.delete(stream_of(settings, "app-beta") + ":dead")
        await rt.flusher.flush(retry_parked=True)
        assert rt.spool.stats().rows == 0
        assert rt.spool.stats().quarantine_pending == 0
    beta = await stream_entries(redis_client, stream_of(settings, "app-beta"))
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
    entries = await stream_entries(redis_client, stream_of(settings, "app-alpha"))
    assert [e["id"] for e in entries] == ["app-alpha-msg-00001", "app-alpha-msg-00002"]
    assert json.loads(entries[1]["payload"])["receivedAt"] == odd_time["receivedAt"]
    dead = await stream_entries(redis_client, stream_of(settings, None) + ":dead")
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
    async with open_runtime(settings) as rt:
        configured_simulator.inject("app-alpha", 5)
        await drain_and_flush(rt)
        first = rt.pull.last_success
        assert first is not None
        own_redis.kill()
        configured_simulator.inject("app-alpha", 5)
        result, error = await drain_and_flush(rt)
        assert result.pulled == 5
        assert error is not None
        assert rt.pull.last_success == first
        # An empty inbox while the sink fails is not a good poll either.
        result, _ = await drain_and_flush(rt)
        assert result.pulls == 1
        assert rt.pull.last_success == first


async def test_a_stop_while_the_spool_refuses_a_batch_leaves_it_in_the_journal(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: disk full (for the spool file only) while a pulled batch waits in memory, then a
    # stop with 3 s left: the drain must end by the deadline (the supervisor's SIGKILL comes
    # next), its answer kept in the journal file, and the next start must spool it.
    import time

    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    stop = Stop(3.0)
    async with open_runtime(settings, stop) as rt:
        task = await drain_held_by_a_full_disk(rt, configured_simulator, 7)
        started = time.monotonic()
        stop.request("test")
        await asyncio.wait_for(task, timeout=5)
        assert time.monotonic() - started < 3.0
        assert rt.pull.abandoned == 0
    journal = settings.spool.path.with_name(settings.spool.path.name + ".journal")
    assert len(list(journal.iterdir())) == 1

    assert await run_once(settings, bootstrap=False) == 0
    assert not list(journal.iterdir())
    counts = await ids_in_streams(redis_client, key_template)
    assert set(counts) == set(configured_simulator.ledger.ids())
    assert set(counts.values()) == {1}


async def test_a_stop_gives_up_a_batch_neither_spool_nor_journal_took_and_logs_it(
    configured_simulator: Simulator,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Tried: the journal directory is not writable and the spool refuses the batch, then a
    # stop with 3 s left: the batch goes to the log whole, and the stop says so.
    import time

    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    stop = Stop(3.0)
    async with open_runtime(settings, stop) as rt:
        rt.pull.journal = None
        task = await drain_held_by_a_full_disk(rt, configured_simulator, 7)
        started = time.monotonic()
        stop.request("test")
        await asyncio.wait_for(task, timeout=5)
        assert time.monotonic() - started < 3.0
        assert rt.pull.abandoned == 7
    logged = capsys.readouterr().out
    for message_id in configured_simulator.ledger.ids():
        assert message_id in logged


async def test_pulls_overlap_within_the_rate_limit_and_keep_infobips_order(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: every answer takes 0.4 s to come back (a far-away Infobip), the first one 1.2 s,
    # so later answers arrive before it; 1,200 messages, 100 per pull, 4 pulls in flight,
    # the account's real limit of 10 requests/s on both sides.
    sent = [message("app-alpha", n) for n in range(1200)]
    configured_simulator.inject_raw(sent)
    configured_simulator.add_fault("slow_answer", count=1, path=PULL_PATH, delay=1.2)
    configured_simulator.add_fault("slow_answer", rate=1.0, path=PULL_PATH, delay=0.4)
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        infobip={"pull_limit": 100, "pulls_in_flight": 4, "rate_limit": 10},
    )
    in_flight_seen = 0

    async def watch() -> None:
        nonlocal in_flight_seen
        while True:
            waiting = [e for e in configured_simulator.ledger.entries if e.written is None]
            in_flight_seen = max(in_flight_seen, len(waiting))
            await asyncio.sleep(0.02)

    async with open_runtime(settings) as rt:
        watcher = asyncio.create_task(watch())
        try:
            rt.start_flushing()
            result = await rt.pull.drain()
            assert result.pulled == 1200
        finally:
            watcher.cancel()
            rt.stop.request("test")
            await rt.finish()
    assert in_flight_seen >= 3  # answers overlapped instead of waiting for each other
    assert configured_simulator.account.counters.throttled == 0  # never over 10 requests/s
    entries = await stream_entries(redis_client, stream_of(settings, "app-alpha"))
    assert [e["id"] for e in entries] == [m["messageId"] for m in sent]


async def test_an_empty_inbox_costs_one_pull_per_drain(
    configured_simulator: Simulator, redis_url: str, key_template: str, tmp_path: Path
) -> None:
    # Tried: several pulls allowed in flight, nothing waiting at Infobip.
    settings = make_settings(
        configured_simulator, redis_url, tmp_path, key_template, infobip={"pulls_in_flight": 8}
    )
    async with open_runtime(settings) as rt:
        result = await rt.pull.drain()
    assert result.pulls == 1
    assert configured_simulator.account.counters.requests == 1


async def test_a_pull_throttled_to_the_end_is_counted_as_throttled(
    configured_simulator: Simulator, redis_url: str, key_template: str, tmp_path: Path
) -> None:
    # Tried: every pull answered 429 (Retry-After 0), 2 retries: three 429s, one failed pull.
    from poller import metrics

    configured_simulator.add_fault("429", rate=1.0, path=PULL_PATH, retry_after=0)
    settings = make_settings(
        configured_simulator, redis_url, tmp_path, key_template, infobip={"max_retries": 2}
    )

    def sample(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    def throttled_total() -> float:
        return sum(sample("poller_infobip_throttled_total", budget=b) for b in ("shared", "local"))

    throttled = throttled_total()
    outcome = sample("poller_pulls_total", outcome="throttled")
    async with open_runtime(settings) as rt:
        result = await rt.pull.drain()
    assert result.pull_error is not None
    assert throttled_total() - throttled == 3
    assert sample("poller_pulls_total", outcome="throttled") - outcome == 1


async def test_the_daemon_trims_streams_to_their_retention_on_its_schedule(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: `poller run` with POLLER_REDIS__RETENTION_ENTRIES=50, a trim every 0.2 s, 300
    # messages and no consumer group: the stream ends at 50 entries, the newest.
    from poller.daemon import Daemon

    configured_simulator.inject("app-alpha", 300)
    settings = make_settings(
        configured_simulator,
        redis_url,
        tmp_path,
        key_template,
        redis={"retention_entries": 50, "retention_interval": 0.2},
    )
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run())
    key = stream_of(settings, "app-alpha")
    try:
        async with asyncio.timeout(20):
            while configured_simulator.inbox_depth or await redis_client.xlen(key) != 50:
                await asyncio.sleep(0.05)
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
    ids = [e["id"] for e in await stream_entries(redis_client, key)]
    assert ids == configured_simulator.ledger.ids()[-50:]


async def test_a_pull_limit_infobip_refuses_is_stepped_down_and_remembered(
    configured_simulator: Simulator,
    redis_url: str,
    redis_client: Redis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: an Infobip that answers 400 to any limit above 100; 1,200 messages waiting.
    from poller import metrics

    configured_simulator.api.max_limit = 100
    configured_simulator.inject("app-alpha", 1200)
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    async with open_runtime(settings) as rt:
        result, _ = await drain_and_flush(rt)
        assert rt.pull.pull_limit == 100
        assert metrics.REGISTRY.get_sample_value("poller_pull_limit") == 100
        again, _ = await drain_and_flush(rt)  # remembered: no 400 any more
    assert result.pull_error is None
    assert again.pull_error is None
    assert configured_simulator.inbox_depth == 0
    counts = await ids_in_streams(redis_client, key_template)
    assert len(counts) == 1200
    assert set(counts.values()) == {1}
