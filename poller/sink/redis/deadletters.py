"""The dead-letter streams on Redis (a ``DeadLetters``): what `poller dead` reads, re-drives
and purges.

A re-drive moves each letter once, however many run at the same time or one after the other.
Outside a Cluster every key is on one server, so one script (``lua/settle_dead.lua``) adds
the letter's messages, takes the letter out and puts what still fails in its place, all or
nothing; the letter's presence is the proof that it was not re-driven yet. In a Cluster a
letter's messages may belong to streams of other slots (a body with no application lands in
the ``unknown`` dead-letter stream and holds messages of any application): each such stream
gets its messages through ``lua/redrive.lua``, which sets a marker of the letter beside the
stream (``keys.redriven_key``) in the same step, so a second re-drive adds nothing there; the
settle script then does the rest in the letter's own slot. A re-drive cut short between the
two is finished by the next one. A marker lives ``HWM_TTL_SECONDS`` (30 days, as the
high-water marks): a re-drive cut short and finished later than that could add twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.crc import key_slot

from poller.sink import DeadLetter, DeadStream, Redrive, RedriveResult, SinkError
from poller.sink.entries import DEAD_FIELDS, DEAD_SCHEMA, MO_FIELDS, MO_SCHEMA, text_of
from poller.sink.redis.connection import REDIS_ERRORS, Client, Connections
from poller.sink.redis.keys import Keys, dead_totals_key, is_dead, redriven_key
from poller.sink.redis.lua import Script
from poller.sink.redis.reader import RedisReader
from poller.spool import NewMessage

_REDRIVE = Script("redrive.lua", libraries=("packed.lua",))
_SETTLE = Script("settle_dead.lua", libraries=("packed.lua",))
_PURGE = Script("purge_dead.lua")
# Entries one XRANGE/XREVRANGE call reads (a long dead-letter stream is read in pages).
PAGE = 200

Pairs = Sequence[tuple[str, str | bytes]]


class RedisDeadLetters:
    """The dead-letter streams of one key template; every redis-py error becomes a SinkError."""

    def __init__(self, connections: Connections, keys: Keys, *, marker_ttl: int) -> None:
        self._conn = connections
        self.keys = keys
        self.marker_ttl = marker_ttl
        self._reader = RedisReader(connections, keys)

    def _error(self, op: str, exc: BaseException) -> SinkError:
        return SinkError(self._conn.describe_error(op, exc))

    async def _keys(self, apps: Sequence[str]) -> list[str]:
        return await self._reader.streams(apps, dead=True)

    async def dead_streams(self, apps: Sequence[str] = ()) -> list[DeadStream]:
        """Length and totals of these applications' dead-letter streams, or of every one."""
        keys = await self._keys(apps)
        named: list[str | None] = list(apps) if apps else [None] * len(keys)
        client = self._conn.writer()
        found = []
        try:
            for key, app in zip(keys, named, strict=True):
                totals: dict[Any, Any] = await client.hgetall(dead_totals_key(key))
                found.append(
                    DeadStream(
                        stream=key,
                        app=app,
                        length=int(await client.xlen(key)),
                        redriven=int(totals.get(b"redriven", 0)),
                        purged=int(totals.get(b"purged", 0)),
                    )
                )
        except REDIS_ERRORS as exc:
            raise self._error("dead-letter streams", exc) from exc
        return found

    async def letters(self, apps: Sequence[str] = ()) -> AsyncIterator[DeadLetter]:
        """Every letter, newest first per stream, read a page at a time."""
        client = self._conn.writer()
        for key in await self._keys(apps):
            end = "+"
            while True:
                try:
                    page: Any = await client.xrevrange(key, max=end, min="-", count=PAGE)
                except REDIS_ERRORS as exc:
                    raise self._error("read", exc) from exc
                for entry_id, fields in page:
                    yield _letter(key, entry_id, fields)
                if len(page) < PAGE:
                    break
                end = "(" + text_of(page[-1][0])

    async def find(self, entry_ids: Sequence[str], apps: Sequence[str] = ()) -> list[DeadLetter]:
        """The letters with these ids in any of these applications' dead-letter streams."""
        client = self._conn.writer()
        found: list[DeadLetter] = []
        try:
            for key in await self._keys(apps):
                for entry_id in entry_ids:
                    page: Any = await client.xrange(key, entry_id, entry_id)
                    found.extend(_letter(key, got_id, fields) for got_id, fields in page)
        except REDIS_ERRORS as exc:
            raise self._error("read", exc) from exc
        return found

    async def redrive(self, plan: Redrive) -> RedriveResult:
        """Messages to their streams and leftovers in the letter's place, once (see the
        module's docstring for how)."""
        letter = plan.letter
        dead = letter.stream
        if not is_dead(dead):
            raise SinkError(f"{dead} is not a dead-letter stream")
        by_stream: dict[str, list[NewMessage]] = defaultdict(list)
        for message in plan.messages:
            by_stream[self.keys.stream(message.app)].append(message)
        cluster = self._conn.cluster is not None
        # Outside a Cluster every stream is "here": one script does it all.
        here = [s for s in by_stream if not cluster or _slot(s) == _slot(dead)]
        result = RedriveResult()
        client = self._conn.writer()
        try:
            for stream, messages in by_stream.items():
                if stream in here:
                    continue
                marker = redriven_key(stream, dead, letter.entry_id)
                added = int(
                    await _REDRIVE(
                        client, (stream, marker), (str(self.marker_ttl), _messages(messages))
                    )
                )
                _count(result, messages, added)
            # What still fails stays where the letter was: its stream, its application.
            leftovers = _pack(
                [
                    tuple(
                        zip(
                            DEAD_FIELDS,
                            (q.reason, q.raw, letter.app, q.pulled_at, DEAD_SCHEMA),
                            strict=True,
                        )
                    )
                    for q in plan.leftovers
                ]
            )
            reply = await _SETTLE(
                client,
                (dead, dead_totals_key(dead), *here),
                (
                    letter.entry_id,
                    leftovers,
                    str(len(plan.messages)),
                    *(_messages(by_stream[s]) for s in here),
                ),
            )
        except REDIS_ERRORS as exc:
            raise self._error("re-drive", exc) from exc
        result.settled = int(reply[0]) == 1
        for index, stream in enumerate(here):
            _count(result, by_stream[stream], int(reply[1 + index]) if result.settled else 0)
        result.kept = [text_of(i) for i in reply[1 + len(here) :]]
        return result

    async def purge(
        self, older_than: float, apps: Sequence[str] = (), *, dry_run: bool = False
    ) -> dict[str, int]:
        """Entries older than ``older_than`` seconds out of dead-letter streams only."""
        client = self._conn.writer()
        removed: dict[str, int] = {}
        try:
            seconds, micros = await self._conn.admin().time()
            cutoff = int(seconds) * 1000 + int(micros) // 1000 - int(older_than * 1000)
            for key in await self._keys(apps):
                if not is_dead(key):  # never a message stream, whatever the scan found
                    continue
                if dry_run:
                    removed[key] = await _count_before(client, key, cutoff)
                else:
                    removed[key] = int(
                        await _PURGE(client, (key, dead_totals_key(key)), (f"{max(cutoff, 0)}-0",))
                    )
        except REDIS_ERRORS as exc:
            raise self._error("purge", exc) from exc
        return removed


def _slot(key: str) -> int:
    return int(key_slot(key.encode("utf-8", "surrogatepass")))


def _letter(stream: str, entry_id: Any, raw: dict[Any, Any]) -> DeadLetter:
    fields = {text_of(k): v for k, v in dict(raw or {}).items()}
    data = fields.get("raw", b"")
    return DeadLetter(
        stream=stream,
        entry_id=text_of(entry_id),
        app=text_of(fields.get("app", b"")),
        reason=text_of(fields.get("reason", b"")),
        raw=data if isinstance(data, bytes) else text_of(data).encode(),
        pulled_at=text_of(fields.get("pulled_at", b"")),
    )


def _messages(messages: Sequence[NewMessage]) -> bytes:
    return _pack(
        [
            tuple(
                zip(
                    MO_FIELDS,
                    (m.message_id, m.app, m.received_at, m.pulled_at, m.payload, MO_SCHEMA),
                    strict=True,
                )
            )
            for m in messages
        ]
    )


def _pack(entries: Sequence[Pairs]) -> bytes:
    """Entries in the format of ``lua/packed.lua``."""
    parts: list[bytes] = []
    for pairs in entries:
        for value in (str(len(pairs)), *(item for pair in pairs for item in pair)):
            data = value if isinstance(value, bytes) else value.encode()
            parts.append(b"%d:%s" % (len(data), data))
    return b"".join(parts)


def _count(result: RedriveResult, messages: Sequence[NewMessage], added: int) -> None:
    """Per application: added by this call, or already there (a script adds all or none)."""
    target = result.written if added else result.already
    for message in messages:
        target[message.app] = target.get(message.app, 0) + 1


async def _count_before(client: Client, key: str, cutoff_ms: int) -> int:
    """Entries of ``key`` whose id is below ``<cutoff_ms>-0``, read a page at a time."""
    if cutoff_ms <= 0:
        return 0
    count, start = 0, "-"
    while True:
        page: Any = await client.xrange(key, min=start, max=str(cutoff_ms - 1), count=1000)
        count += len(page)
        if len(page) < 1000:
            return count
        start = "(" + text_of(page[-1][0])


__all__ = ["PAGE", "RedisDeadLetters"]
