"""A sink that keeps its streams in the process: the same contract as the Redis sink, no server.

It honours what the pipeline relies on: one high-water mark per stream and spool writer (a
replay adds nothing), the dedupe window of forwarded messages, dead-letter streams (listed,
re-driven once each and purged as on Redis), and a partial failure per application
(``refuse``: that application's stream refuses, the others are written) as well as a whole
outage (``fail``). The fast tests run the flusher, the sources and the readers on it; nothing
survives the process, so it is not for production.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from poller.sink import (
    DeadLetter,
    DeadStream,
    GroupInfo,
    Redrive,
    RedriveResult,
    SinkError,
    StreamInfo,
    WriteResult,
)
from poller.sink.entries import (
    DEAD_FIELDS,
    DEAD_SCHEMA,
    MO_FIELDS,
    MO_SCHEMA,
    Fields,
    Message,
    parse_entry,
)
from poller.spool import QuarantineEntry, SpoolEntry

PREFIX = "memory:"
DEAD = ":dead"


def stream_name(app: str | None, *, dead: bool = False) -> str:
    """The in-memory stream of an application (its dead-letter stream with ``dead``)."""
    return f"{PREFIX}{app or ''}{DEAD if dead else ''}"


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class _Group:
    last: str = "0-0"
    pending: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> consumer, times
    consumers: set[str] = field(default_factory=set)


@dataclass
class _Stream:
    entries: list[tuple[str, Fields]] = field(default_factory=list)
    groups: dict[str, _Group] = field(default_factory=dict)
    last_ms: int = 0
    last_seq: int = 0

    def add(self, fields: Fields) -> str:
        now = int(time.time() * 1000)
        if now > self.last_ms:
            self.last_ms, self.last_seq = now, 0
        else:
            self.last_seq += 1
        entry_id = f"{self.last_ms}-{self.last_seq}"
        self.entries.append((entry_id, fields))
        return entry_id

    def after(self, position: str) -> list[tuple[str, Fields]]:
        start = _entry_key(position)
        return [(i, f) for i, f in self.entries if _entry_key(i) > start]


class MemorySink:
    """Streams in a dict (a ``Sink`` and its own ``StreamReader``)."""

    def __init__(self, *, instance_id: str = "memory", dedupe_window: int = 3600) -> None:
        self.instance_id = instance_id
        self.dedupe_window = dedupe_window
        self.server: str | None = None
        self.data: dict[str, _Stream] = defaultdict(_Stream)
        self._marks: dict[tuple[str, str], int] = {}
        self._seen: dict[str, dict[str, float]] = defaultdict(dict)
        self._refusing: dict[str, str] = {}
        self._down: str | None = None
        self._changed = asyncio.Condition()
        self.writes = 0
        # Dead-letter stream -> [messages re-driven from it, entries purged from it].
        self._dead_totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    # -- faults the tests inject ------------------------------------------------------------

    def fail(self, error: str | None) -> None:
        """Make every call fail as a whole with ``error`` (None: work again)."""
        self._down = error

    def refuse(self, app: str, error: str | None, *, dead: bool = False) -> None:
        """Make one application's stream (or dead-letter stream) refuse writes (None: take
        them again)."""
        name = stream_name(app, dead=dead)
        if error is None:
            self._refusing.pop(name, None)
        else:
            self._refusing[name] = error

    def _check(self) -> None:
        if self._down is not None:
            raise SinkError(f"memory sink: {self._down}")

    # -- Sink ------------------------------------------------------------------------------

    async def connect(self) -> str:
        """Nothing to reach; the version text."""
        self._check()
        self.server = "memory"
        return self.server

    async def close(self) -> None:
        """Nothing to release."""

    async def problem(self) -> str | None:
        """The injected outage, if any."""
        return None if self._down is None else f"memory sink: {self._down}"

    def describe(self) -> str:
        """Where the sink writes."""
        return "memory (this process)"

    async def write(self, entries: Sequence[SpoolEntry]) -> WriteResult:
        """Messages into their streams once each, as the Redis sink does."""
        rows = [
            (
                e.seq,
                e.app,
                e.writer,
                e.message_id if e.dedupe else None,
                dict(
                    zip(
                        MO_FIELDS,
                        (
                            e.message_id,
                            e.app,
                            e.received_at,
                            e.pulled_at,
                            _str(e.payload),
                            MO_SCHEMA,
                        ),
                        strict=True,
                    )
                ),
            )
            for e in entries
        ]
        return await self._write(rows, dead=False)

    async def write_dead(self, entries: Sequence[QuarantineEntry]) -> WriteResult:
        """Quarantined bodies into the dead-letter streams once each."""
        rows = [
            (
                e.seq,
                e.app or "",
                e.writer,
                None,
                dict(
                    zip(
                        DEAD_FIELDS,
                        (e.reason, _str(e.raw), e.app or "", e.pulled_at, DEAD_SCHEMA),
                        strict=True,
                    )
                ),
            )
            for e in entries
        ]
        return await self._write(rows, dead=True)

    async def _write(
        self, rows: Sequence[tuple[int, str, str, str | None, Fields]], *, dead: bool
    ) -> WriteResult:
        self._check()
        result = WriteResult()
        now = time.monotonic()
        for seq, app, writer, dedupe_id, fields in sorted(rows, key=lambda r: r[0]):
            name = stream_name(app, dead=dead)
            result.written.setdefault(app, 0)
            result.skipped.setdefault(app, 0)
            if name in self._refusing:
                result.failed[app] = self._refusing[name]
                continue
            mark_key = (name, writer or self.instance_id)
            if seq <= self._marks.get(mark_key, 0):
                result.skipped[app] += 1
                continue
            self._marks[mark_key] = seq
            seen = self._seen[name]
            if dedupe_id is not None and self.dedupe_window:
                at = seen.get(dedupe_id)
                if at is not None and now - at < self.dedupe_window:
                    result.duplicates[app] = result.duplicates.get(app, 0) + 1
                    continue
                seen[dedupe_id] = now
            self.data[name].add(fields)
            result.written[app] += 1
        self.writes += 1
        async with self._changed:
            self._changed.notify_all()
        return result

    async def stream_info(self, apps: Sequence[str] | None = None) -> list[StreamInfo]:
        """Length and groups of these applications' streams, or of every stream."""
        self._check()
        names = sorted(self.data) if apps is None else [stream_name(a) for a in apps]
        infos = []
        for name in names:
            stream = self.data.get(name) or _Stream()
            groups = [
                GroupInfo(g, len(grp.consumers), len(grp.pending), None, grp.last)
                for g, grp in sorted(stream.groups.items())
            ]
            infos.append(StreamInfo(key=name, length=len(stream.entries), groups=groups))
        return infos

    async def trim_retention(self, seconds: int, entries: int) -> int:
        """Drop the oldest entries past the retention (an age, a length, or both), stopping
        at the first one a group has not read and acknowledged, as the Redis scripts do."""
        self._check()
        if not seconds and not entries:
            return 0
        cutoff = int((time.time() - seconds) * 1000) if seconds else None
        removed = 0
        for stream in self.data.values():
            excess = len(stream.entries) - entries if entries else 0
            drop = 0
            for index, (entry_id, _fields) in enumerate(stream.entries):
                key = _entry_key(entry_id)
                expired = index < excess or (cutoff is not None and key[0] < cutoff)
                needed = any(
                    key > _entry_key(grp.last) or entry_id in grp.pending
                    for grp in stream.groups.values()
                )
                if not expired or needed:
                    break
                drop += 1
            del stream.entries[:drop]
            removed += drop
        return removed

    def entries(self, app: str | None, *, dead: bool = False) -> list[Fields]:
        """The fields of every entry of one application's stream, oldest first."""
        stream = self.data.get(stream_name(app, dead=dead))
        return [] if stream is None else [fields for _id, fields in stream.entries]

    def reader(self) -> MemorySink:
        """This sink reads its own streams."""
        return self

    def dead_letters(self) -> MemorySink:
        """This sink is its own dead-letter side."""
        return self

    # -- DeadLetters -----------------------------------------------------------------------

    def _dead_names(self, apps: Sequence[str]) -> list[str]:
        if apps:
            return [stream_name(app, dead=True) for app in apps]
        return sorted(name for name in self.data if name.endswith(DEAD))

    async def dead_streams(self, apps: Sequence[str] = ()) -> list[DeadStream]:
        """Length and totals of these applications' dead-letter streams, or of every one."""
        self._check()
        names = self._dead_names(apps)
        named: list[str | None] = list(apps) if apps else [None] * len(names)
        found = []
        for name, app in zip(names, named, strict=True):
            stream = self.data.get(name)
            redriven, purged = self._dead_totals.get(name, (0, 0))
            length = len(stream.entries) if stream is not None else 0
            found.append(DeadStream(name, app, length, redriven, purged))
        return found

    async def letters(self, apps: Sequence[str] = ()) -> AsyncIterator[DeadLetter]:
        """Every letter, newest first per stream."""
        self._check()
        for name in self._dead_names(apps):
            stream = self.data.get(name)
            for entry_id, fields in reversed(list(stream.entries) if stream else []):
                yield _letter(name, entry_id, fields)

    async def find(self, entry_ids: Sequence[str], apps: Sequence[str] = ()) -> list[DeadLetter]:
        """The letters with these ids in any of these applications' dead-letter streams."""
        self._check()
        wanted = set(entry_ids)
        found = []
        for name in self._dead_names(apps):
            stream = self.data.get(name)
            for entry_id, fields in stream.entries if stream else []:
                if entry_id in wanted:
                    found.append(_letter(name, entry_id, fields))
        return found

    async def redrive(self, plan: Redrive) -> RedriveResult:
        """Messages to their streams and leftovers in the letter's place, once: with no
        await in between, the letter's presence decides, as the Redis script does."""
        self._check()
        letter = plan.letter
        result = RedriveResult()
        stream = self.data.get(letter.stream)
        ids = [entry_id for entry_id, _fields in stream.entries] if stream is not None else []
        if stream is None or letter.entry_id not in ids:
            for m in plan.messages:
                result.already[m.app] = result.already.get(m.app, 0) + 1
            return result
        for m in plan.messages:
            mo = (m.message_id, m.app, m.received_at, m.pulled_at, _str(m.payload), MO_SCHEMA)
            self.data[stream_name(m.app)].add(dict(zip(MO_FIELDS, mo, strict=True)))
            result.written[m.app] = result.written.get(m.app, 0) + 1
        del stream.entries[ids.index(letter.entry_id)]
        for q in plan.leftovers:
            dead = (q.reason, _str(q.raw), letter.app, q.pulled_at, DEAD_SCHEMA)
            result.kept.append(stream.add(dict(zip(DEAD_FIELDS, dead, strict=True))))
        self._dead_totals[letter.stream][0] += len(plan.messages)
        result.settled = True
        async with self._changed:
            self._changed.notify_all()
        return result

    async def purge(
        self, older_than: float, apps: Sequence[str] = (), *, dry_run: bool = False
    ) -> dict[str, int]:
        """Entries older than ``older_than`` seconds out of dead-letter streams only."""
        self._check()
        cutoff = int(time.time() * 1000) - int(older_than * 1000)
        removed: dict[str, int] = {}
        for name in self._dead_names(apps):
            stream = self.data.get(name)
            old = [e for e in stream.entries if _entry_key(e[0])[0] < cutoff] if stream else []
            removed[name] = len(old)
            if stream is not None and old and not dry_run:
                stream.entries[: len(old)] = []
                self._dead_totals[name][1] += len(old)
        return removed

    # -- StreamReader ----------------------------------------------------------------------

    async def streams(self, apps: Sequence[str] = (), *, dead: bool = False) -> list[str]:
        """These applications' streams, or every stream that exists."""
        if apps:
            return [stream_name(app, dead=dead) for app in apps]
        return sorted(
            name for name, s in self.data.items() if s.entries and name.endswith(DEAD) == dead
        )

    async def read(
        self, positions: dict[str, str], *, count: int = 100, block_ms: int | None = None
    ) -> list[tuple[str, Message]]:
        """Entries after each position, waiting up to ``block_ms`` for one."""
        self._check()
        found = self._after(positions, count)
        if not found and block_ms:
            async with self._changed:
                try:
                    async with asyncio.timeout(block_ms / 1000):
                        await self._changed.wait_for(lambda: bool(self._after(positions, 1)))
                except TimeoutError:
                    return []
            found = self._after(positions, count)
        for name, message in found:
            positions[name] = message.entry_id
        return found

    def _after(self, positions: dict[str, str], count: int) -> list[tuple[str, Message]]:
        found = []
        for name, position in positions.items():
            stream = self.data.get(name)
            if stream is None:
                continue
            for entry_id, fields in stream.after(position)[:count]:
                found.append((name, parse_entry(entry_id, fields)))
        return found

    async def ends(self, streams: Sequence[str]) -> dict[str, str]:
        """Each stream's last entry id now."""
        ends = {}
        for name in streams:
            stream = self.data.get(name)
            ends[name] = stream.entries[-1][0] if stream is not None and stream.entries else "0-0"
        return ends

    def group(self, stream: str, group: str, consumer: str, *, start: str = "0") -> MemoryGroup:
        """A consumer of a group on one stream."""
        return MemoryGroup(self, stream, group, consumer, start)


class MemoryGroup:
    """One consumer of a consumer group on an in-memory stream (a ``GroupReader``)."""

    def __init__(self, sink: MemorySink, stream: str, group: str, consumer: str, start: str):
        self._sink = sink
        self.stream_key = stream
        self.group = group
        self.consumer = consumer
        self.start = start

    def _state(self) -> _Group:
        return self._sink.data[self.stream_key].groups[self.group]

    async def ensure_group(self) -> bool:
        """Create the group unless it exists."""
        stream = self._sink.data[self.stream_key]
        if self.group in stream.groups:
            return False
        last = self.start
        if last == "$":
            last = stream.entries[-1][0] if stream.entries else "0-0"
        stream.groups[self.group] = _Group(last=last if last != "0" else "0-0")
        return True

    async def read(self, count: int = 100, block_ms: int | None = None) -> list[Message]:
        """New entries for this consumer."""
        state = self._state()
        positions = {self.stream_key: state.last}
        found = await self._sink.read(positions, count=count, block_ms=block_ms)
        state.consumers.add(self.consumer)
        messages = []
        for _name, message in found:
            state.last = message.entry_id
            state.pending[message.entry_id] = (self.consumer, 1)
            messages.append(message)
        return messages

    async def ack(self, entry_ids: list[str]) -> int:
        """Acknowledge entries; how many were pending."""
        state = self._state()
        return sum(1 for i in entry_ids if state.pending.pop(i, None) is not None)


def _letter(name: str, entry_id: str, fields: Fields) -> DeadLetter:
    return DeadLetter(
        stream=name,
        entry_id=entry_id,
        app=fields.get("app", ""),
        reason=fields.get("reason", ""),
        raw=fields.get("raw", "").encode("utf-8", "surrogateescape"),
        pulled_at=fields.get("pulled_at", ""),
    )


def _str(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


__all__ = ["MemoryGroup", "MemorySink", "stream_name"]
