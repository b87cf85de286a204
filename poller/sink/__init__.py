"""Where spooled messages go: the sink interface, its results and its errors.

The flusher, the daemon and the CLI speak to a sink through ``Sink`` and hear back about
applications, never about keys or servers; ``poller.sink.redis`` is the implementation
(Redis or Valkey streams, exactly once per spool row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from poller.schemas import DEAD as DEAD_SCHEMA
from poller.schemas import MO as MO_SCHEMA
from poller.spool import QuarantineEntry, SpoolEntry


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

    async def ping(self) -> bool:
        """True when the destination answers (a probe: not counted as a write failure)."""
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

    def describe(self) -> str:
        """Where the sink writes, for logs (no secret in it)."""
        ...


__all__ = [
    "DEAD_SCHEMA",
    "MO_SCHEMA",
    "DurabilityError",
    "GroupInfo",
    "Sink",
    "SinkConfigError",
    "SinkError",
    "StreamInfo",
    "WriteResult",
]
