"""`poller dead`'s logic on the in-memory sink: a letter read again with the current code goes
to its stream once, what still fails stays with the reason it fails for now, a letter that
fails as before keeps its id, nothing is removed that holds nothing, and a purge spares the
message streams. The same re-drive rules run on Redis in tests/integration/test_dead_letters.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from redis.crc import key_slot

from poller import deadletters, metrics
from poller.cli.parser import parse
from poller.infobip import body as body_module
from poller.runtime import Runtime
from poller.settings import Settings
from poller.sink import DeadLetter
from poller.sink.entries import DEAD_FIELDS, DEAD_SCHEMA
from poller.sink.memory import MemorySink, stream_name
from poller.sink.redis.keys import dead_of, dead_totals_key, redriven_key, stream_key
from poller.sources.pull import rows_from_body
from poller.spool import QuarantineEntry

AT = "2026-12-02T10:00:00.000Z"


def item(message_id: str, app: str = "app-a", **extra: object) -> dict[str, object]:
    return {"messageId": message_id, "applicationCode": app, "receivedAt": "t", **extra}


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 2):
        value = [value]
    return value


async def quarantined(sink: MemorySink, body: bytes) -> list[QuarantineEntry]:
    """The quarantine rows the pull source makes of ``body``, written as dead letters."""
    rows = rows_from_body(body, AT).quarantined
    entries = [
        QuarantineEntry(seq, q.raw, q.reason, q.app, q.pulled_at, "w1")
        for seq, q in enumerate(rows, 1)
    ]
    await sink.write_dead(entries)
    return entries


def poison(sink: MemorySink, app: str, payload: bytes, entry: str) -> None:
    """A consumer's poison entry, with the fields lua/dead_letter.lua gives it."""
    reason = f"delivered 6 times to group billing without an acknowledgement (entry {entry})"
    values = (reason, payload.decode(), app, AT, DEAD_SCHEMA)
    sink.data[stream_name(app, dead=True)].add(dict(zip(DEAD_FIELDS, values, strict=True)))


async def letters(sink: MemorySink, *apps: str) -> list[DeadLetter]:
    return [letter async for letter in sink.dead_letters().letters(apps)]


async def test_an_item_too_deep_lands_once_after_the_limit_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tried: the pull source's own quarantine of a 70-level item, a retry under the old limit
    (nothing changes, same id), one after raising it (the message, bytes as sent), and a
    third (nothing left)."""
    sink = MemorySink()
    deep = json.dumps(item("deep-1", x=nested(70))).encode()
    body = b'{"results":[' + deep + b"," + json.dumps(item("ok-1")).encode() + b"]}"
    await quarantined(sink, body)
    (before,) = await letters(sink, "")
    assert before.reason == f"result item nested deeper than {body_module.MAX_DEPTH} levels"

    report = await deadletters.retry(sink.dead_letters())
    assert [o.status for o in report.outcomes] == ["unchanged"]
    assert await letters(sink, "") == [before]

    monkeypatch.setattr(body_module, "MAX_DEPTH", 100)
    report = await deadletters.retry(sink.dead_letters())
    assert [(o.status, o.messages) for o in report.outcomes] == [("redriven", {"app-a": 1})]
    (written,) = sink.entries("app-a")
    assert (written["id"], written["payload"], written["pulled_at"]) == (
        "deep-1",
        deep.decode(),
        AT,
    )
    assert await letters(sink, "") == []
    assert (await deadletters.retry(sink.dead_letters())).outcomes == []
    assert len(sink.entries("app-a")) == 1
    (stream,) = await sink.dead_streams([""])
    assert (stream.length, stream.redriven) == (0, 1)


async def test_a_body_of_several_applications_splits_and_what_still_fails_stays() -> None:
    """Tried: a forwarded array refused whole by an older rule, holding messages of two
    applications and one item without a messageId."""
    sink = MemorySink()
    items = [item("a-1"), item("b-1", app="app-b"), {"applicationCode": "app-a"}]
    raw = json.dumps(items).encode()
    await sink.write_dead([QuarantineEntry(1, raw, "forwarded body: an older rule", None, AT)])
    forward_apps = ["app-a", "app-b"]  # the receiver's applications
    report = await deadletters.retry(sink.dead_letters(), forward_apps=forward_apps)
    (outcome,) = report.outcomes
    assert (outcome.status, outcome.messages) == ("redriven", {"app-a": 1, "app-b": 1})
    assert outcome.reasons == ["result item has no messageId"]
    assert [e["id"] for e in sink.entries("app-a")] == ["a-1"]
    assert [e["id"] for e in sink.entries("app-b")] == ["b-1"]
    (left,) = await letters(sink, "")
    assert left.entry_id == outcome.kept[0]
    assert (left.raw, left.reason) == (b'{"applicationCode": "app-a"}', outcome.reasons[0])
    # Failing as before now: left as it is.
    again = await deadletters.retry(sink.dead_letters(), forward_apps=forward_apps)
    assert [o.status for o in again.outcomes] == ["unchanged"]
    assert await letters(sink, "") == [left]


async def test_a_forwarded_body_that_still_fails_keeps_its_reason_and_id() -> None:
    sink = MemorySink()
    reason = "forwarded body: not JSON: expected an object or an array"
    await sink.write_dead([QuarantineEntry(1, b"hello", reason, None, AT)])
    (before,) = await letters(sink, "")
    report = await deadletters.retry(sink.dead_letters())
    assert [(o.status, o.reasons) for o in report.outcomes] == [("unchanged", [reason])]
    assert await letters(sink, "") == [before]


async def test_a_forwarded_body_of_strays_creates_no_stream_until_its_application_is_added() -> (
    None
):
    """Tried: the receiver's letter of items for applications it does not take (an attacker's
    many codes, and one real application not configured yet) retried as is, then with that
    application added to POLLER_FORWARD__APPLICATIONS."""
    sink = MemorySink()
    strays = [item("evil-1", "app-alpha"), *(item(f"x{n}", f"code-{n}") for n in range(50))]
    strays.append(item("real-1", "app-new"))
    raw = json.dumps(strays).encode()
    reason = deadletters.FORWARDED + "52 items not for an application this receiver takes"
    await sink.write_dead([QuarantineEntry(1, raw, reason, None, AT)])
    report = await deadletters.retry(sink.dead_letters(), forward_apps=["app-chat"])
    assert [o.messages for o in report.outcomes] == [{}]
    assert [name for name in sink.data if not name.endswith(":dead")] == []
    report = await deadletters.retry(sink.dead_letters(), forward_apps=["app-chat", "app-new"])
    assert [(o.status, o.messages) for o in report.outcomes] == [("redriven", {"app-new": 1})]
    assert [name for name in sink.data if not name.endswith(":dead")] == [stream_name("app-new")]
    (left,) = await letters(sink, "")
    assert len(json.loads(left.raw)) == 51
    assert [e["id"] for e in sink.entries("app-new")] == ["real-1"]


async def test_a_stale_reason_is_replaced_by_the_one_the_letter_fails_for_now() -> None:
    sink = MemorySink()
    raw = b'{"applicationCode": "app-a", "text": "no id"}'
    await sink.write_dead([QuarantineEntry(1, raw, "an older rule", "app-a", AT)])
    (before,) = await letters(sink, "app-a")
    report = await deadletters.retry(sink.dead_letters())
    assert [(o.status, o.reasons) for o in report.outcomes] == [
        ("failing", ["result item has no messageId"])
    ]
    (after,) = await letters(sink, "app-a")
    assert (after.raw, after.app, after.pulled_at) == (raw, "app-a", AT)
    assert after.reason == "result item has no messageId"
    assert after.entry_id == report.outcomes[0].kept[0] != before.entry_id
    assert sink.entries("app-a") == []


@pytest.mark.parametrize("raw", [b"[]", b'{"results": []}', b" [ ] "])
async def test_a_letter_that_holds_nothing_is_never_removed(raw: bytes) -> None:
    sink = MemorySink()
    await sink.write_dead([QuarantineEntry(1, raw, "an older rule", None, AT)])
    (before,) = await letters(sink, "")
    report = await deadletters.retry(sink.dead_letters())
    assert [o.status for o in report.outcomes] == ["unchanged"]
    assert await letters(sink, "") == [before]


async def test_a_consumers_poison_entry_goes_back_to_its_stream_and_counts_as_one_reason() -> None:
    """Entries a consumer group moved (raw = the payload) re-drive: the message parses."""
    sink = MemorySink()
    first = json.dumps(item("p-1")).encode()
    poison(sink, "app-a", first, "1-0")
    poison(sink, "app-a", json.dumps(item("p-2")).encode(), "2-0")
    await sink.write_dead([QuarantineEntry(1, b'{"applicationCode":"app-a"}', "x", "app-a", AT)])
    (summary,) = await deadletters.summary(sink.dead_letters())
    assert summary.app == "app-a"
    assert [(r.reason, r.count) for r in summary.reasons] == [
        ("x", 1),
        ("delivered 6 times to group billing without an acknowledgement", 2),
    ]
    assert summary.reasons[0].ids == [(await letters(sink, "app-a"))[0].entry_id]
    report = await deadletters.retry(sink.dead_letters(), reason="delivered")
    assert [o.status for o in report.outcomes] == ["redriven", "redriven"]
    assert [e["id"] for e in sink.entries("app-a")] == ["p-2", "p-1"]
    assert sink.entries("app-a")[1]["payload"] == first.decode()
    assert [letter.reason for letter in await letters(sink, "app-a")] == ["x"]


async def test_retry_by_id_and_a_dry_run() -> None:
    sink = MemorySink()
    poison(sink, "app-a", json.dumps(item("p-1")).encode(), "1-0")
    poison(sink, "app-b", json.dumps(item("p-2", app="app-b")).encode(), "1-1")
    (wanted,) = await letters(sink, "app-b")
    # Ids are per stream (two streams may hold the same one): --app says which.
    dry = await deadletters.retry(
        sink.dead_letters(), apps=["app-b"], ids=[wanted.entry_id], dry_run=True
    )
    assert [(o.letter, o.status, o.messages) for o in dry.outcomes] == [
        (wanted, "redriven", {"app-b": 1})
    ]
    assert sink.entries("app-b") == []
    report = await deadletters.retry(
        sink.dead_letters(), apps=["app-b"], ids=[wanted.entry_id, "9-9"]
    )
    assert report.missing == ["9-9"]
    assert [e["id"] for e in sink.entries("app-b")] == ["p-2"]
    assert sink.entries("app-a") == []
    assert deadletters.bad_ids(["1-0", "abc", "1", "1-0-0"]) == ["abc", "1", "1-0-0"]


async def test_purge_dry_run_and_by_application() -> None:
    sink = MemorySink()
    await sink.write_dead([QuarantineEntry(1, b"x", "r", "app-a", AT)])
    await sink.write_dead([QuarantineEntry(2, b"y", "r", "app-b", AT)])
    dead_a, dead_b = stream_name("app-a", dead=True), stream_name("app-b", dead=True)
    # The letters are older than "now" once the clock moves past their millisecond.
    while not (await deadletters.purge(sink.dead_letters(), 0, dry_run=True)).get(dead_b):
        await asyncio.sleep(0.001)
    assert await deadletters.purge(sink.dead_letters(), 0, ["app-a"]) == {dead_a: 1}
    assert [s.length for s in await sink.dead_streams(["app-a", "app-b"])] == [0, 1]
    with pytest.raises(ValueError, match="negative"):
        await deadletters.purge(sink.dead_letters(), -1)


def test_durations_and_ids_on_the_command_line() -> None:
    args: argparse.Namespace = parse(["dead", "purge", "--older-than", "7d", "--app", "-"])
    assert (args.older_than, args.app, args.dry_run) == (7 * 86400, ["-"], False)
    assert parse(["dead", "purge", "--older-than", "12h"]).older_than == 12 * 3600
    assert parse(["dead", "retry", "--id", "1-0", "2-0", "--id", "3-0"]).ids == [
        "1-0",
        "2-0",
        "3-0",
    ]
    for bad in ("7", "d", "1.5h", "-1d", "7y", "٣d"):
        with pytest.raises(SystemExit) as exit_info:
            parse(["dead", "purge", "--older-than", bad])
        assert exit_info.value.code == 2


async def test_the_daemon_publishes_the_dead_letter_streams(tmp_path: Path) -> None:
    """The totals `poller dead` keeps live with the sink; the daemon's heartbeat reads them."""
    settings = Settings(
        infobip={
            "base_url": "https://example.api.infobip.com",
            "api_key": "k",
            "applications": ["app-m"],
        },
        sink={"kind": "memory"},
        spool={"path": tmp_path / "spool.db"},
    )
    rt = await Runtime.open(settings)
    try:
        sink = rt.sink
        assert isinstance(sink, MemorySink)
        await sink.write_dead([QuarantineEntry(1, b"{}", "r", "app-m", AT)])
        await sink.write_dead([QuarantineEntry(2, b"x", "r", None, AT)])
        poison(sink, "app-m", json.dumps(item("p-1", app="app-m")).encode(), "1-0")
        await deadletters.retry(sink.dead_letters(), reason="delivered")
        await rt.count_dead_letters()
    finally:
        await rt.close()
    value = metrics.REGISTRY.get_sample_value
    assert value("poller_dead_letters", {"app": "app-m"}) == 1
    assert value("poller_dead_letters_redriven", {"app": "app-m"}) == 1
    assert value("poller_dead_letters_purged", {"app": "app-m"}) == 0
    assert value("poller_dead_letters", {"app": "other"}) == 1


@pytest.mark.parametrize("template", ["infobip:push:{${app}}:mo", "plain:${app}:mo"])
def test_the_keys_of_a_re_drive_share_the_slot_of_their_stream(template: str) -> None:
    """The scripts' keys must hash to one Cluster slot: the totals with the dead-letter
    stream, the marker with the message stream (whose dead-letter stream's own hash tag must
    not take over in the marker's key)."""
    stream = stream_key(template, "app-a")
    dead = dead_of(stream_key(template, None))
    assert key_slot(dead_totals_key(dead).encode()) == key_slot(dead.encode())
    marker = redriven_key(stream, dead, "1767261600000-0")
    assert key_slot(marker.encode()) == key_slot(stream.encode())
    assert marker.endswith(":1767261600000-0")
    assert redriven_key(stream, dead_of(stream), "1-0") != redriven_key(stream, dead, "1-0")
