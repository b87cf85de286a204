"""Where spooled messages go: the sink interface, its results and its errors.

The flusher, the daemon and the CLI speak to a sink through ``Sink`` (writes),
``StreamReader`` (what `poller tail`, `poller status` and the demo read) and ``DeadLetters``
(what `poller dead` lists, re-drives and purges) and hear back about applications and
streams, never about keys or servers. ``poller.sink.redis`` is the
implementation (Redis or Valkey streams, exactly once per spool row); ``poller.sink.memory``
keeps the same contract in the process, for the fast tests. ``poller.sink.factory`` picks one
from the settings (``POLLER_SINK__KIND``).

Adding a sink: a module with a class that has every method of ``Sink`` (a reader and a
dead-letter side too), one
line in ``poller.sink.factory``, one value in ``SinkSettings.kind``, and the contract tests
of ``tests/unit/test_sink_contract.py`` run against it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from poller.sink.entries import DEAD_SCHEMA, MO_SCHEMA, Message
from poller.spool import NewMessage, NewQuarantine, QuarantineEntry, SpoolEntry


class SinkError(Exception):
    """The sink is unreachable or a write failed as a whole; never carries a password."""


class SinkConfigError(SinkError):
    """The server cannot honour the configuration (say durability=waitaof without AOF).

    Not a passing outage: retrying will not help until the setting or the server changes.
    The message names the setting."""


class DurabilityError(SinkError):
    """The configured durability wait was not confirmed within its timeout."""


@dataclass
class WriteResult:
    """Per application: entries added, entries skipped as already written (a replay), and
    the applications whose stream refused the write (application -> the refusal), and the
    repeated deliveries left out.

    An application in ``failed`` may have got some of its entries (a replay skips them);
    the caller keeps every row of such an application and commits the others. Quarantined
    bodies with no application are counted under ``""``."""

    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    # Messages not written because their id reached the stream within the dedupe window
    # (a delivery Infobip repeated).
    duplicates: dict[str, int] = field(default_factory=dict)

    @property
    def total_written(self) -> int:
        """Entries added over all applications."""
        return sum(self.written.values())

    @property
    def total_skipped(self) -> int:
        """Entries skipped over all applications."""
        return sum(self.skipped.values())


@dataclass(frozen=True)
class GroupInfo:
    """One consumer group of a stream, as `poller status` shows it."""

    name: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered_id: str


@dataclass(frozen=True)
class StreamInfo:
    """A stream's name (for people), its length and its consumer groups."""

    key: str
    length: int
    groups: list[GroupInfo] = field(default_factory=list)


class GroupReader(Protocol):
    """One stream read as one consumer of a consumer group."""

    stream_key: str

    async def ensure_group(self) -> bool:
        """Create the group unless it exists; True when created."""
        ...

    async def read(self, count: int = 100, block_ms: int | None = None) -> list[Message]:
        """New entries for this consumer, waiting up to ``block_ms`` (None: no wait)."""
        ...

    async def ack(self, entry_ids: list[str]) -> int:
        """Acknowledge entries; how many were pending."""
        ...


class StreamReader(Protocol):
    """The streams as their readers see them (`poller tail`, `poller status`, the demo)."""

    async def streams(self, apps: Sequence[str] = (), *, dead: bool = False) -> list[str]:
        """The names of these applications' streams (their dead-letter streams with
        ``dead``), or of every stream that exists when none is named."""
        ...

    async def read(
        self, positions: dict[str, str], *, count: int = 100, block_ms: int | None = None
    ) -> list[tuple[str, Message]]:
        """Entries after each stream's position (``0``: from the start), oldest first per
        stream, waiting up to ``block_ms`` for one; ``positions`` moves past what was read."""
        ...

    async def ends(self, streams: Sequence[str]) -> dict[str, str]:
        """Each stream's last entry id now: a position that reads only what comes after."""
        ...

    def group(self, stream: str, group: str, consumer: str, *, start: str = "0") -> GroupReader:
        """A consumer of ``group`` on ``stream`` (a new group starts at ``start``: ``0`` or
        ``$``)."""
        ...


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a dead-letter stream: what could not be read as a message (a quarantined
    item or body), or an entry a consumer group moved there (poison)."""

    stream: str  # its dead-letter stream, as `poller tail --dead` names it
    entry_id: str
    app: str  # applicationCode when it could be read, else ""
    reason: str
    raw: bytes  # the bytes as received (for a consumer's poison entry: the message payload)
    pulled_at: str

    @property
    def dead_at(self) -> float:
        """Unix time it reached the dead-letter stream (its entry id's milliseconds)."""
        return int(self.entry_id.partition("-")[0] or 0) / 1000


@dataclass(frozen=True)
class Redrive:
    """What one dead letter becomes when read again: messages for their applications'
    streams, and what still fails (each with its reason), which stays in the letter's own
    dead-letter stream in the letter's place."""

    letter: DeadLetter
    messages: Sequence[NewMessage]
    leftovers: Sequence[NewQuarantine]


@dataclass
class RedriveResult:
    """What one ``redrive`` call did, per application: messages added, and messages an
    earlier or a concurrent re-drive of the same letter had added already (not again).
    ``settled``: this call took the letter out of its dead-letter stream (its leftovers put
    in its place, ``kept``: their entry ids); False when another re-drive or a purge had
    already."""

    written: dict[str, int] = field(default_factory=dict)
    already: dict[str, int] = field(default_factory=dict)
    settled: bool = False
    kept: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeadStream:
    """One dead-letter stream: its length, and the totals kept beside it of the messages
    re-driven from it and the entries purged from it (by every `poller dead` run)."""

    stream: str
    app: str | None  # as asked for ("": no application); None when found by a scan
    length: int
    redriven: int
    purged: int


class DeadLetters(Protocol):
    """The dead-letter streams as `poller dead` sees them: read, re-drive, purge. The rule of
    what parses lives with the sources; this side only moves entries, each move once."""

    async def dead_streams(self, apps: Sequence[str] = ()) -> list[DeadStream]:
        """These applications' dead-letter streams ("": bodies with no application), or
        every one that exists."""
        ...

    def letters(self, apps: Sequence[str] = ()) -> AsyncIterator[DeadLetter]:
        """Every dead letter of these applications' streams (or of every dead-letter
        stream), newest first within each stream."""
        ...

    async def find(self, entry_ids: Sequence[str], apps: Sequence[str] = ()) -> list[DeadLetter]:
        """The letters with these entry ids, in any of these applications' dead-letter
        streams (or in any); an id in two streams gives two letters."""
        ...

    async def redrive(self, plan: Redrive) -> RedriveResult:
        """Add ``plan.messages`` to their streams and put ``plan.leftovers`` in the letter's
        place, once per letter however many re-drives of it run, one after the other or at
        the same time; the re-driven total counts them with the call that settles."""
        ...

    async def purge(
        self, older_than: float, apps: Sequence[str] = (), *, dry_run: bool = False
    ) -> dict[str, int]:
        """Remove the dead letters that reached their stream more than ``older_than``
        seconds ago (by the server's clock), from these applications' dead-letter streams or
        from every one; never an entry of a message stream. Per stream: entries removed (or,
        with ``dry_run``, that would be)."""
        ...


class Sink(Protocol):
    """What the pipeline needs of a destination."""

    server: str | None

    async def connect(self) -> str:
        """Reach the destination and check the settings against it; its version text.

        SinkConfigError: the settings cannot work there. SinkError: not reachable now
        (the first write connects again)."""
        ...

    async def close(self) -> None:
        """Release every connection."""
        ...

    async def problem(self) -> str | None:
        """Why the destination cannot take writes now (a probe for readiness: not counted
        as a write failure), or None."""
        ...

    async def write(self, entries: Sequence[SpoolEntry]) -> WriteResult:
        """Write messages once each (a replay adds nothing), then wait for durability.

        SinkError when nothing of the call can be trusted; an application whose stream
        alone refuses is reported in ``WriteResult.failed`` and the others are written."""
        ...

    async def write_dead(self, entries: Sequence[QuarantineEntry]) -> WriteResult:
        """Write quarantined bodies to the dead-letter streams once each, as ``write``."""
        ...

    async def stream_info(self, apps: Sequence[str] | None = None) -> list[StreamInfo]:
        """Length and consumer groups of these applications' streams, or of every one."""
        ...

    async def trim_retention(self, seconds: int, entries: int) -> int:
        """Keep every stream within the retention, never removing an entry a consumer group
        still needs; the number of entries removed."""
        ...

    def reader(self) -> StreamReader:
        """The streams' reading side (after ``connect``)."""
        ...

    def dead_letters(self) -> DeadLetters:
        """The dead-letter streams' side (after ``connect``)."""
        ...

    def describe(self) -> str:
        """Where the sink writes, for logs (no secret in it)."""
        ...


__all__ = [
    "DEAD_SCHEMA",
    "MO_SCHEMA",
    "DeadLetter",
    "DeadLetters",
    "DeadStream",
    "DurabilityError",
    "GroupInfo",
    "GroupReader",
    "Message",
    "Redrive",
    "RedriveResult",
    "Sink",
    "SinkConfigError",
    "SinkError",
    "StreamInfo",
    "StreamReader",
    "WriteResult",
]
