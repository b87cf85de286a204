"""The ledger: every message id the pull endpoint handed out and whether it arrived whole;
every forward attempt and whether each message was delivered; when each message was created."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
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


@dataclass
class ForwardAttempt:
    """One POST of a batch of messages to a forwardUrl."""

    n: int
    url: str
    message_ids: list[str]
    # 1 for the batch's first send; a forward_duplicate resend repeats its attempt's number.
    attempt: int
    sent_at: float  # wall clock (time.time())
    sent_monotonic: float
    fault: str | None = None
    duplicate: bool = False
    status: int | None = None  # the receiver's HTTP status, when one was read
    error: str | None = None  # why no status was read: timeout, dropped, stopped, ...
    finished_at: float | None = None  # wall clock when the attempt ended, however it ended
    acked_at: float | None = None  # wall clock when a 2xx came back
    acked_monotonic: float | None = None

    @property
    def delivered(self) -> bool:
        """True when the receiver answered 2xx."""
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        """The attempt as served by GET /_sim/ledger."""
        return {
            "n": self.n,
            "url": self.url,
            "messageIds": list(self.message_ids),
            "attempt": self.attempt,
            "duplicate": self.duplicate,
            "fault": self.fault,
            "status": self.status,
            "error": self.error,
            "delivered": self.delivered,
            "sentAt": self.sent_at,
            "sentMonotonic": self.sent_monotonic,
            "finishedAt": self.finished_at,
            "ackedAt": self.acked_at,
            "ackedMonotonic": self.acked_monotonic,
        }


@dataclass(slots=True)
class ForwardRecord:
    """What happened to one message routed to a forwardUrl."""

    url: str
    attempts: int = 0  # sends that counted as attempts (retries included, duplicates not)
    sends: int = 0  # every POST that carried it (duplicates included)
    delivered: bool = False
    given_up: bool = False
    acked_monotonic: float | None = None  # when the first 2xx for it came back


class Ledger:
    """Records pull responses and forward attempts; a test compares it with what reached Redis."""

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []
        self._handed_out = 0
        self._waiters: set[asyncio.Event] = set()
        self._attempts: list[ForwardAttempt] = []
        self._forward: dict[str, ForwardRecord] = {}
        # Kept as counts so a wait or a snapshot costs nothing per message.
        self._delivered = 0
        self._given_up = 0
        self._open_attempts = 0
        self._created: dict[str, tuple[float, float]] = {}

    def record(self, message_ids: list[str], fault: str | None = None) -> LedgerEntry:
        """Add a response that is about to be written."""
        entry = LedgerEntry(len(self._entries) + 1, list(message_ids), time.time(), fault)
        self._entries.append(entry)
        self._handed_out += len(message_ids)
        return entry

    def mark_sent(self, entry: LedgerEntry, ok: bool) -> None:
        """Response.on_sent hook: remember whether the write finished."""
        entry.written = ok
        self._notify()

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
        await self.wait_until(self.settled)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until condition() holds; it is checked whenever a response or a forward attempt
        ends (bound it with asyncio.timeout)."""
        while not condition():
            event = asyncio.Event()
            self._waiters.add(event)
            try:
                await event.wait()
            finally:
                self._waiters.discard(event)

    def _notify(self) -> None:
        for event in self._waiters:
            event.set()

    # Creation times.

    def record_created(self, message_id: str, monotonic: float, wall: float) -> None:
        """Remember when a message was created (time.monotonic() and time.time())."""
        self._created[message_id] = (monotonic, wall)

    def created_at(self, message_id: str) -> tuple[float, float] | None:
        """(monotonic, wall clock) creation time of a message made by inject or the generator;
        None for raw and bulk messages. CLOCK_MONOTONIC is system-wide on Linux, so another
        process on the host can compare it with its own time.monotonic()."""
        return self._created.get(message_id)

    @property
    def created(self) -> Mapping[str, tuple[float, float]]:
        """Every recorded creation time by message id (a read-only view)."""
        return MappingProxyType(self._created)

    # The forward path.

    def forward_queued(self, url: str, message_ids: Iterable[str]) -> None:
        """Messages routed to url, waiting for their first attempt."""
        for message_id in message_ids:
            self._record(message_id, url)

    def record_forward(
        self,
        url: str,
        message_ids: list[str],
        attempt: int,
        fault: str | None = None,
        *,
        duplicate: bool = False,
    ) -> ForwardAttempt:
        """Add an attempt that is about to be sent."""
        record = ForwardAttempt(
            len(self._attempts) + 1,
            url,
            list(message_ids),
            attempt,
            time.time(),
            time.monotonic(),
            fault,
            duplicate,
        )
        self._attempts.append(record)
        self._open_attempts += 1
        for message_id in message_ids:
            state = self._record(message_id, url)
            state.sends += 1
            if not duplicate:
                state.attempts = max(state.attempts, attempt)
        return record

    def finish_forward(
        self, attempt: ForwardAttempt, *, status: int | None = None, error: str | None = None
    ) -> None:
        """The attempt ended: with the receiver's status, or an error and no status."""
        if attempt.finished_at is not None:
            return
        attempt.status, attempt.error = status, error
        attempt.finished_at = time.time()
        self._open_attempts -= 1
        if attempt.delivered:
            attempt.acked_at = attempt.finished_at
            attempt.acked_monotonic = time.monotonic()
            for message_id in attempt.message_ids:
                state = self._forward[message_id]
                if not (state.delivered or state.given_up):
                    self._delivered += 1
                if not state.delivered:
                    state.delivered = True
                    state.acked_monotonic = attempt.acked_monotonic
        self._notify()

    def forward_gave_up(self, message_ids: Iterable[str]) -> None:
        """Messages whose attempts ran out without a 2xx."""
        for message_id in message_ids:
            state = self._forward[message_id]
            if not (state.delivered or state.given_up):
                self._given_up += 1
                state.given_up = True
        self._notify()

    def _record(self, message_id: str, url: str) -> ForwardRecord:
        state = self._forward.get(message_id)
        if state is None:
            state = self._forward[message_id] = ForwardRecord(url)
        return state

    def forward_attempts_of(self, message_id: str) -> int:
        """Attempts made so far for a message (a resent batch goes on counting from here)."""
        state = self._forward.get(message_id)
        return state.attempts if state is not None else 0

    @property
    def forward_attempts(self) -> list[ForwardAttempt]:
        """Every forward attempt, in the order they were sent."""
        return list(self._attempts)

    @property
    def forward_records(self) -> Mapping[str, ForwardRecord]:
        """Per message routed to a forwardUrl: attempts, sends, delivered, given up."""
        return MappingProxyType(self._forward)

    def forward_delivered_ids(self) -> set[str]:
        """Ids a receiver answered 2xx for: it must not lose these."""
        return {mid for mid, state in self._forward.items() if state.delivered}

    def forward_pending_ids(self) -> set[str]:
        """Ids queued or being retried: neither delivered nor given up."""
        return {mid for mid, s in self._forward.items() if not (s.delivered or s.given_up)}

    def forward_given_up_ids(self) -> set[str]:
        """Ids whose attempts ran out without a 2xx."""
        return {mid for mid, state in self._forward.items() if state.given_up}

    def forward_sends(self) -> dict[str, int]:
        """How many POSTs carried each message (retries and duplicates included)."""
        return {mid: state.sends for mid, state in self._forward.items()}

    def forward_settled(self) -> bool:
        """True when every forwarded message was delivered or given up and no POST is open."""
        return self._open_attempts == 0 and self._delivered + self._given_up == len(self._forward)

    async def wait_forwarded(self) -> None:
        """Wait until forward_settled() (bound it with asyncio.timeout)."""
        await self.wait_until(self.forward_settled)

    def forward_json(self) -> dict[str, Any]:
        """The forward part of GET /_sim/ledger."""
        return {
            "attempts": [attempt.to_json() for attempt in self._attempts],
            "routed": len(self._forward),
            "deliveredIds": sorted(self.forward_delivered_ids()),
            "pendingIds": sorted(self.forward_pending_ids()),
            "givenUpIds": sorted(self.forward_given_up_ids()),
        }

    def forward_counts(self) -> dict[str, int]:
        """Counts for the state snapshot."""
        return {
            "routed": len(self._forward),
            "delivered": self._delivered,
            "givenUp": self._given_up,
            "pending": len(self._forward) - self._delivered - self._given_up,
            "attempts": len(self._attempts),
            "openAttempts": self._open_attempts,
        }

    def to_json(self, *, created: bool = False) -> dict[str, Any]:
        """The body of GET /_sim/ledger (creation times only when asked: they are many)."""
        body: dict[str, Any] = {
            "responses": [entry.to_json() for entry in self._entries],
            "handedOut": self._handed_out,
            "forward": self.forward_json(),
        }
        if created:
            body["created"] = {mid: list(times) for mid, times in self._created.items()}
        return body
