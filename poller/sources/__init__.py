"""Sources: what turns Infobip's hand-overs into spool appends.

``pull`` drains the pull inbox on the scheduler's ticks; ``forward`` is the receiver Infobip
POSTs to. Every source writes to the same spool, and the flusher moves the rows on to the
sink, whichever source appended them. The daemon knows sources only through ``Source``.

Adding a source: a module with a class that has the members of ``Source`` (appending to the
spool with ``items.rows_from_items`` and waking the flusher), built in ``build_sources`` from a
settings section of its own; readiness and the stop line pick it up from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# A readiness check: (ok, one-line detail).
Check = tuple[bool, str]


@dataclass
class Counts:
    """What a source took since start, for the stop line and `poller demo`."""

    messages: int = 0
    quarantined: int = 0


class Source(Protocol):
    """A way messages reach the spool."""

    name: str  # the readiness check and log name: "pull", "forward"

    async def start(self) -> None:
        """Begin taking messages (the receiver listens; the pull source's drains are put on
        the scheduler, which runs once bootstrap is done). OSError: cannot listen."""
        ...

    async def settle(self, seconds: float) -> bool:
        """After a stop was asked for: take nothing new, and let what is in flight reach the
        spool within ``seconds``; True when nothing was left behind."""
        ...

    async def close(self) -> None:
        """Release what the source holds (after ``settle``)."""
        ...

    def check(self) -> Check:
        """The source's readiness: whether it is doing its job, and a line saying how."""
        ...

    @property
    def counts(self) -> Counts:
        """What it took since start."""
        ...

    @property
    def abandoned(self) -> int:
        """Messages a stop made it give up on (in the log only): the exit code says so."""
        ...


__all__ = ["Check", "Counts", "Source"]
