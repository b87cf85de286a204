"""The ledger: every message id the pull endpoint handed out, and whether it arrived whole."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

# Faults that write the whole response but make its content unusable to a client.
CORRUPTING_FAULTS = frozenset({"invalid_json", "wrong_types"})


@dataclass
class LedgerEntry:
    """One pull response that carried messages."""

    n: int
    message_ids: list[str]
    at: float
    fault: str | None = None
    # None while the response is being written; then whether it was written and drained in full.
    written: bool | None = None

    @property
    def completed(self) -> bool:
        """True when the whole response was written and its content was intact."""
        return self.written is True and self.fault not in CORRUPTING_FAULTS

    def to_json(self) -> dict[str, Any]:
        """The entry as served by GET /_sim/ledger."""
        return {
            "n": self.n,
            "messageIds": list(self.message_ids),
            "completed": self.completed,
            "written": self.written,
            "fault": self.fault,
            "at": self.at,
        }


class Ledger:
    """Records pull responses; a test compares it with what reached Redis."""

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []
        self._handed_out = 0
        self._changed: asyncio.Event | None = None

    def record(self, message_ids: list[str], fault: str | None = None) -> LedgerEntry:
        """Add a response that is about to be written."""
        entry = LedgerEntry(len(self._entries) + 1, list(message_ids), time.time(), fault)
        self._entries.append(entry)
        self._handed_out += len(message_ids)
        return entry

    def mark_sent(self, entry: LedgerEntry, ok: bool) -> None:
        """Response.on_sent hook: remember whether the write finished."""
        entry.written = ok
        if self._changed is not None:
            self._changed.set()

    @property
    def entries(self) -> list[LedgerEntry]:
        """Every recorded response, oldest first."""
        return list(self._entries)

    @property
    def handed_out(self) -> int:
        """How many messages left the inbox through the pull endpoint."""
        return self._handed_out

    @property
    def responses(self) -> int:
        """How many responses carried messages."""
        return len(self._entries)

    @property
    def first_at(self) -> float | None:
        """Wall-clock time (time.time()) of the first response that carried messages."""
        return self._entries[0].at if self._entries else None

    @property
    def last_at(self) -> float | None:
        """Wall-clock time of the latest response that carried messages."""
        return self._entries[-1].at if self._entries else None

    def ids(self) -> list[str]:
        """Every handed-out message id, in the order they left."""
        return [mid for entry in self._entries for mid in entry.message_ids]

    def delivered_ids(self) -> set[str]:
        """Ids that went out in completed responses: a client must not lose these."""
        return {mid for e in self._entries if e.completed for mid in e.message_ids}

    def undelivered_ids(self) -> set[str]:
        """Ids that went out in cut or corrupted responses: lost to any client."""
        return {mid for e in self._entries if not e.completed for mid in e.message_ids}

    def settled(self) -> bool:
        """True when no response is still being written."""
        return all(entry.written is not None for entry in self._entries)

    async def wait_settled(self) -> None:
        """Wait until every recorded response finished writing (bound it with asyncio.timeout)."""
        while not self.settled():
            self._changed = asyncio.Event()
            await self._changed.wait()

    def to_json(self) -> dict[str, Any]:
        """The body of GET /_sim/ledger."""
        return {
            "responses": [entry.to_json() for entry in self._entries],
            "handedOut": self._handed_out,
        }
