"""The flusher: moves spool rows to the sink on its own schedule, whoever appended them.

Woken by every append, it reads the spool's oldest rows (``FLUSH_ROWS`` at a time, so rows
of several pulls go in one write), writes them through the sink and deletes exactly the rows
the sink confirmed (design invariant 2). Quarantined bodies follow, to the dead-letter
streams. It never waits for a source, and no source waits for it: a slow Redis holds back
only the spool's deletes, never a pull.

When the sink fails as a whole (Redis down), the flusher retries with exponential backoff
and jitter; the rows wait in the spool. When one application's stream refuses (WRONGTYPE,
NOPERM), that application is parked: its rows stay in the spool and are left out of the
next reads until its own backoff has passed, and the other applications flow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from poller import backoff, metrics
from poller.sink import DurabilityError, Sink, SinkError, WriteResult
from poller.spool import QuarantineEntry, Spool, SpoolEntry, SpoolError
from poller.stop import Stop

log = structlog.get_logger(__name__)

# Rows read from the spool per write: bounded memory whatever the backlog.
FLUSH_ROWS = 5000
# Backoff of a failed flush and of a parked application: first delay, longest delay.
RETRY_BASE = 0.5
RETRY_MAX = 10.0
# Longest backoff after a write the sink took but could not confirm (the durability wait).
DURABILITY_RETRY = 1.0


@dataclass
class FlushResult:
    """What one flush wrote, per application; ``failed`` names the parked ones."""

    written: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    dead_lettered: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # application -> the refusal

    @property
    def total_written(self) -> int:
        """Entries added to streams."""
        return sum(self.written.values())


@dataclass
class _Parked:
    until: float  # time.monotonic() of the next try
    delay: float
    error: str


E = TypeVar("E", SpoolEntry, QuarantineEntry)


@dataclass
class _Lane(Generic[E]):
    """One kind of spool row on its way to the sink: messages to their streams, quarantined
    bodies to the dead-letter streams. Each has its own parked applications (a dead-letter
    stream can refuse alone); both go through the same loop."""

    what: str  # for log lines: "stream", "dead-letter stream"
    read: Callable[[int, set[str], int], list[E]]  # (limit, parked apps, after seq)
    write: Callable[[Sequence[E]], Awaitable[WriteResult]]
    done_up_to: Callable[[int], object]  # every row up to a seq reached the sink
    done_seqs: Callable[[list[int]], object]  # exactly these rows did
    parked: dict[str, _Parked] = field(default_factory=dict)


def _app(entry: SpoolEntry | QuarantineEntry) -> str:
    return entry.app or ""


class Flusher:
    """Spool -> sink, continuously (``run``) or on demand (``flush``); one flush at a time."""

    def __init__(
        self,
        spool: Spool,
        sink: Sink,
        stop: Stop,
        *,
        rows: int = FLUSH_ROWS,
        retry_base: float = RETRY_BASE,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.spool = spool
        self.sink = sink
        self.stop = stop
        self.rows = rows
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._messages: _Lane[SpoolEntry] = _Lane(
            "stream", spool.pending, sink.write, spool.commit, spool.commit_seqs
        )
        self._dead: _Lane[QuarantineEntry] = _Lane(
            "dead-letter stream",
            spool.quarantine_pending,
            sink.write_dead,
            spool.mark_dead_lettered,
            spool.mark_dead_lettered_seqs,
        )
        # The last flush failed as a whole (the sink is down): its error, else None.
        self.error: str | None = None
        self.failures = 0
        self.written = 0
        self.dead_lettered = 0
        # Called after every flush that left no application parked.
        self.on_flushed: list[Callable[[], None]] = []
        stop.on_request(self.wake)

    @property
    def parked(self) -> dict[str, str]:
        """Applications whose stream refuses writes -> the refusal."""
        return {app: p.error for app, p in self._messages.parked.items()}

    def wake(self) -> None:
        """Rows were appended (or a stop was asked for): flush soon."""
        self._wake.set()

    async def run(self) -> None:
        """Flush whenever woken, until the stop is asked for; back off while the sink fails.

        Returns at a stop (between flushes); the owner then calls ``flush`` once more for
        what is left."""
        while not self.stop.requested:
            self._wake.clear()
            try:
                await self.flush()
            except (SinkError, SpoolError) as exc:
                delay = backoff.delay(self.failures - 1, self.retry_base, self.retry_max)
                if isinstance(exc, DurabilityError):
                    # The sink answers; its replicas do not yet: each try costs one wait, and
                    # the rows should go as soon as a replica acknowledges again.
                    delay = min(delay, DURABILITY_RETRY)
                # Once per outage at warning level; the retries at debug.
                (log.warning if self.failures == 1 else log.debug)(
                    "flush failed; the rows wait in the spool",
                    error=str(exc),
                    retry_in=round(delay, 2),
                    failures=self.failures,
                )
                await self.stop.sleep(delay)
                continue
            await self._idle()

    async def _idle(self) -> None:
        """Wait for the next append, the next parked application's turn, or the stop."""
        due = [p.until for lane in (self._messages, self._dead) for p in lane.parked.values()]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def flush(self, *, retry_parked: bool = False) -> FlushResult:
        """Write what the spool holds (parked applications whose turn has not come are left
        out, unless ``retry_parked``); raises SinkError / SpoolError when the sink or the
        spool fails as a whole, after which the rows are still in the spool."""
        async with self._lock:
            started = time.monotonic()
            try:
                result = await self._flush(retry_parked)
            except (SinkError, SpoolError) as exc:
                self.failures += 1
                self.error = str(exc)
                metrics.SINK_ERRORS.inc()
                raise
            finally:
                self._update_gauges()
            if self.failures:
                log.info("flush works again", failures=self.failures)
            self.failures = 0
            self.error = None
            if not self._messages.parked:
                for callback in self.on_flushed:
                    callback()
            if result.total_written or result.dead_lettered:
                metrics.FLUSH_SECONDS.observe(time.monotonic() - started)
            return result

    async def _flush(self, retry_parked: bool) -> FlushResult:
        total = FlushResult()
        for written, _rows in await self._drain(self._messages, retry_parked):
            self._count(written, total)
        for written, rows in await self._drain(self._dead, retry_parked):
            total.dead_lettered += rows
            self.dead_lettered += rows
            total.failed.update(written.failed)
        total.failed.update(self.parked)
        return total

    async def _drain(self, lane: _Lane[E], retry_parked: bool) -> list[tuple[WriteResult, int]]:
        """Every row of ``lane`` that is not parked, ``rows`` at a time, the next slice read
        while the sink takes this one; (what the sink said, rows done) per slice."""
        results: list[tuple[WriteResult, int]] = []
        parked = self._due(lane.parked, retry_parked)
        after = 0  # the last seq read: each slice is read once, never again
        ahead: asyncio.Future[list[E]] | None = None
        while True:
            if ahead is None:
                ahead = asyncio.ensure_future(self._read(lane, parked, after))
            read, ahead = await ahead, None
            if not read:
                break
            after = read[-1].seq
            full = len(read) == self.rows
            if full:
                # The next slice is read while the sink takes this one.
                ahead = asyncio.ensure_future(self._read(lane, set(parked), after))
            entries = [e for e in read if _app(e) not in parked]  # parked since it was read
            try:
                written = await lane.write(entries) if entries else WriteResult()
            except BaseException:
                if ahead is not None:
                    await asyncio.gather(ahead, return_exceptions=True)
                raise
            refused = self._settle(lane, written, {_app(e) for e in entries})
            parked |= refused
            done = [e.seq for e in entries if _app(e) not in refused]
            if parked:
                # Parked rows lie below this slice's last seq: mark exactly what was written.
                await asyncio.to_thread(lane.done_seqs, done)
            else:
                await asyncio.to_thread(lane.done_up_to, after)
            results.append((written, len(done)))
            if not full:
                break
        return results

    async def _read(self, lane: _Lane[E], parked: set[str], after: int) -> list[E]:
        return await asyncio.to_thread(lane.read, self.rows, parked, after)

    def _due(self, parked: dict[str, _Parked], everything: bool) -> set[str]:
        """Parked applications to leave out of this flush: those whose turn has not come."""
        if everything:
            return set()
        now = time.monotonic()
        return {app for app, p in parked.items() if p.until > now}

    def _settle(self, lane: _Lane[E], result: WriteResult, apps: Collection[str]) -> set[str]:
        """Park the applications the sink refused (longer each time), release the others."""
        parked = lane.parked
        for app in apps:
            if app not in result.failed and parked.pop(app, None) is not None:
                log.info(f"{lane.what} takes writes again", app=app or None)
        now = time.monotonic()
        for app, error in result.failed.items():
            before = parked.get(app)
            delay = self.retry_base * 2 if before is None else min(self.retry_max, before.delay * 2)
            parked[app] = _Parked(now + delay, delay, error)
            log.error(
                f"{lane.what} refuses writes; its rows wait in the spool",
                app=app or None,
                error=error,
                retry_in=round(delay, 2),
            )
        return set(result.failed)

    def _count(self, written: WriteResult, total: FlushResult) -> None:
        for app, count in written.written.items():
            total.written[app] = total.written.get(app, 0) + count
            if count:
                metrics.MESSAGES_WRITTEN.labels(app=app).inc(count)
        for app, count in written.duplicates.items():
            metrics.DUPLICATE_DELIVERIES.labels(app=app).inc(count)
        self.written += written.total_written
        total.skipped += written.total_skipped
        if written.total_skipped:
            metrics.DUPLICATES_SKIPPED.inc(written.total_skipped)

    def _update_gauges(self) -> None:
        stats = self.spool.stats()
        metrics.SPOOL_ROWS.set(stats.rows)
        metrics.SPOOL_BYTES.set(stats.bytes)
        metrics.SPOOL_OLDEST_AGE_SECONDS.set(stats.oldest_age_s or 0.0)
        metrics.QUARANTINE_ROWS.set(stats.quarantined)
        metrics.BACKPRESSURE_ACTIVE.set(1 if self.spool.full else 0)
