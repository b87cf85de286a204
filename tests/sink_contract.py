"""The contract every sink keeps, as test bodies: the fast tier runs them on the in-memory
sink, the integration tier on Redis (each module gives a ``contract_sink`` fixture).

A new sink passes these before the flusher may use it: every message once (a replay, or a
second writer's own replay, adds nothing), dead letters in their own streams, a stream that
refuses costs only its application, a whole outage raises ``SinkError``, the reader
gives back every field as written, and a dead letter re-driven twice or by two retries at
once adds its messages once, what still fails takes its place, and a purge removes dead
letters only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from poller.sink import DeadLetter, Redrive, Sink, SinkError
from poller.sink.entries import MO_FIELDS, MO_SCHEMA
from poller.spool import NewMessage, NewQuarantine, QuarantineEntry, SpoolEntry

# Makes a refusing stream for one application, and undoes it: the sink's own way.
Refuse = Callable[[Sink, str], Awaitable[Callable[[], Awaitable[None]]]]


def entry(seq: int, app: str = "app1", *, writer: str = "w1", dedupe: bool = False) -> SpoolEntry:
    """A spooled message as the flusher hands it over."""
    payload = {"messageId": f"m{seq}", "applicationCode": app, "text": f"héllo {seq}"}
    return SpoolEntry(
        seq=seq,
        app=app,
        message_id=f"m{seq}",
        received_at="2026-01-01T10:00:00.000+0000",
        pulled_at="2026-01-01T10:00:01.500Z",
        payload=json.dumps(payload, ensure_ascii=False).encode(),
        writer=writer,
        dedupe=dedupe,
    )


def dead(seq: int, app: str | None = "app1") -> QuarantineEntry:
    """A quarantined body."""
    return QuarantineEntry(seq, b"\x00not json", "not JSON", app, "2026-01-01T10:00:01Z", "w1")


async def every_entry(sink: Sink, app: str, *, dead_letters: bool = False) -> list[dict[str, Any]]:
    """Every entry of one application's stream through the sink's reader, as fields."""
    reader = sink.reader()
    streams = await reader.streams([app], dead=dead_letters)
    positions = dict.fromkeys(streams, "0")
    found = []
    while batch := await reader.read(positions, count=100):
        found.extend(message.fields for _stream, message in batch)
    return found


async def check_each_message_once(sink: Sink, apps: tuple[str, str]) -> None:
    a, b = apps
    first = await sink.write([entry(1, a), entry(2, b), entry(3, a)])
    assert first.written == {a: 2, b: 1}
    assert not first.failed
    again = await sink.write([entry(1, a), entry(2, b), entry(3, a), entry(4, a)])
    assert again.written == {a: 1, b: 0}
    assert again.skipped == {a: 2, b: 1}
    entries = await every_entry(sink, a)
    assert [e["id"] for e in entries] == ["m1", "m3", "m4"]
    assert set(entries[0]) == set(MO_FIELDS)
    assert entries[0]["schema"] == MO_SCHEMA
    assert json.loads(entries[0]["payload"])["text"] == "héllo 1"


async def check_marks_are_per_writer(sink: Sink, app: str) -> None:
    assert (await sink.write([entry(5, app, writer="w1")])).written == {app: 1}
    # Another run's rows number from 1 again: its own mark lets them in.
    assert (await sink.write([entry(1, app, writer="w2")])).written == {app: 1}
    assert (await sink.write([entry(1, app, writer="w2")])).skipped == {app: 1}


async def check_forwarded_duplicates(sink: Sink, app: str) -> None:
    # A delivery Infobip repeats has the same messageId and a new spool row.
    first = entry(1, app, dedupe=True)
    repeat = entry(2, app, dedupe=True)._replace(message_id=first.message_id)
    result = await sink.write([first, repeat])
    assert result.written == {app: 1}
    assert result.duplicates == {app: 1}
    assert len(await every_entry(sink, app)) == 1


async def check_dead_letters(sink: Sink, app: str) -> None:
    result = await sink.write_dead([dead(1, app), dead(2, None)])
    assert result.written == {app: 1, "": 1}
    assert (await sink.write_dead([dead(1, app)])).skipped == {app: 1}
    letters = await every_entry(sink, app, dead_letters=True)
    assert [letter["reason"] for letter in letters] == ["not JSON"]
    assert await every_entry(sink, app) == []


async def check_one_refusing_stream(sink: Sink, apps: tuple[str, str], refuse: Refuse) -> None:
    bad, good = apps
    undo = await refuse(sink, bad)
    try:
        result = await sink.write([entry(1, bad), entry(2, good), entry(3, bad)])
    finally:
        await undo()
    assert set(result.failed) == {bad}
    assert result.written[good] == 1
    # Once it takes writes again, the rows kept in the spool go in, once.
    retry = await sink.write([entry(1, bad), entry(3, bad)])
    assert retry.written == {bad: 2}


async def check_outage_raises(sink: Sink, down: Callable[[], Awaitable[None]]) -> None:
    await down()
    with pytest.raises(SinkError):
        await sink.write([entry(1)])
    assert await sink.problem() is not None


async def check_groups(sink: Sink, app: str) -> None:
    await sink.write([entry(1, app), entry(2, app)])
    reader = sink.reader()
    (stream,) = await reader.streams([app])
    group = reader.group(stream, "billing", "worker-1")
    assert await group.ensure_group() is True
    assert await group.ensure_group() is False
    got = await group.read(count=10)
    assert [m.message_id for m in got] == ["m1", "m2"]
    assert await group.ack([got[0].entry_id]) == 1
    assert await group.read(count=10) == []
    (info,) = await sink.stream_info([app])
    assert info.length == 2
    assert [(g.name, g.pending) for g in info.groups] == [("billing", 1)]


AT = "2026-01-01T10:00:01.500Z"


async def letters_of(sink: Sink, app: str) -> list[DeadLetter]:
    """The letters of one application's dead-letter stream, newest first."""
    return [letter async for letter in sink.dead_letters().letters([app])]


async def one_letter(sink: Sink, app: str, raw: bytes, reason: str) -> DeadLetter:
    """A letter quarantined for ``app`` under ``reason``, through the sink's own write."""
    await sink.write_dead([QuarantineEntry(1, raw, reason, app, AT, "w1")])
    (letter,) = await letters_of(sink, app)
    return letter


async def check_redrive_once(sink: Sink, app: str) -> None:
    raw = json.dumps({"messageId": "m1", "applicationCode": app}).encode()
    letter = await one_letter(sink, app, raw, "an older rule refused it")
    assert (letter.raw, letter.reason, letter.app, letter.pulled_at) == (
        raw,
        "an older rule refused it",
        app,
        AT,
    )
    plan = Redrive(letter, [NewMessage(app, "m1", "", AT, raw)], [])
    dead = sink.dead_letters()
    # Two retries at the same time, then a third: the letter's messages go in once.
    results = await asyncio.gather(dead.redrive(plan), dead.redrive(plan))
    done = sorted(results, key=lambda r: r.settled)
    assert [(r.settled, r.written, r.already) for r in done] == [
        (False, {}, {app: 1}),
        (True, {app: 1}, {}),
    ]
    late = await dead.redrive(plan)
    assert (late.settled, late.written, late.already) == (False, {}, {app: 1})
    entries = await every_entry(sink, app)
    assert [(e["id"], e["payload"], e["schema"]) for e in entries] == [
        ("m1", raw.decode(), MO_SCHEMA)
    ]
    assert await letters_of(sink, app) == []
    (stream,) = await dead.dead_streams([app])
    assert (stream.app, stream.length, stream.redriven, stream.purged) == (app, 0, 1, 0)


async def check_leftovers_take_the_letters_place(sink: Sink, app: str) -> None:
    raw = b'{"applicationCode": "x"}'
    letter = await one_letter(sink, app, raw, "an older rule refused it")
    dead = sink.dead_letters()
    kept = NewQuarantine(raw, "result item has no messageId", app, AT)
    result = await dead.redrive(Redrive(letter, [], [kept]))
    assert result.settled
    (now,) = await letters_of(sink, app)
    assert result.kept == [now.entry_id] != [letter.entry_id]
    assert (now.raw, now.reason, now.app, now.pulled_at) == (raw, kept.reason, app, AT)
    assert await dead.find([letter.entry_id]) == []
    assert await dead.find([now.entry_id], [app]) == [now]
    assert await every_entry(sink, app) == []


async def check_purge_spares_message_streams(sink: Sink, app: str) -> None:
    await sink.write([entry(1, app), entry(2, app)])
    letter = await one_letter(sink, app, b"\x00not json", "not JSON")
    dead = sink.dead_letters()
    # Waits for the sink's clock to pass the letter's millisecond (it purges only the older).
    while not (await dead.purge(0, [app], dry_run=True))[letter.stream]:
        await asyncio.sleep(0.002)
    assert (await dead.purge(3600, [app]))[letter.stream] == 0
    assert len(await letters_of(sink, app)) == 1
    # Every dead-letter stream (only this one exists), the message stream not among them.
    assert await dead.purge(0) == {letter.stream: 1}
    assert await letters_of(sink, app) == []
    assert [e["id"] for e in await every_entry(sink, app)] == ["m1", "m2"]
    (stream,) = await dead.dead_streams([app])
    assert (stream.length, stream.purged) == (0, 1)
