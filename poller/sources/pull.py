"""The pull source: drains Infobip's pull inbox into the spool, several pulls in flight.

A drain keeps up to ``in_flight`` pulls going (every call still waits for the account's rate
limiter) while Infobip reports messages pending and the spool is below its cap. Each pull is
one unit that a stop does not cut: its answer is written to the journal as its bytes arrive,
then its items become spool rows in one fsynced append, then the journal file goes
(design invariant 1). The flusher is woken; the drain never waits for the sink.

The scheduler (APScheduler, interval + jitter or cron) starts one drain per tick; a drain in
flight is a task of the source's own, so a stop waits for it instead of APScheduler cutting it
between pull and spool. The cadence follows the traffic: while messages flow the next drain
comes after the hot interval (a drain itself pulls on while messages are pending), and once the
inbox stays empty for the hot period the wait doubles at each empty answer up to the interval.
A cron schedule is kept as it is.

Order: rows are appended in the order the pulls were sent, whatever order their answers
arrive in, so each application's stream keeps Infobip's order across answers as well as
within one. An answer that completes before an earlier one is fsynced in its journal file
while it waits for its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from poller import metrics, offload
from poller.flusher import Flusher
from poller.infobip import (
    AuthError,
    BadRequestError,
    InfobipClient,
    InfobipError,
    MalformedResponseError,
    ResponseTooLargeError,
    ThrottledError,
)
from poller.infobip.body import PullScan, scan_pull
from poller.journal import Journal, JournalEntry
from poller.sources import Check, Counts
from poller.sources.items import count_rows, now_rfc3339, quarantine, rows_from_items
from poller.sources.settings import ScheduleSettings
from poller.spool import DISK_FLOOR, NewMessage, NewQuarantine, Spool, SpoolError
from poller.stop import Stop

log = structlog.get_logger(__name__)

# Pull limits to step down through when Infobip answers 400 to one (the push API states no
# maximum; 1000 is the SMS twin's).
LIMIT_STEPS = (1000, 500, 100, 50)
# Malformed answers in a row after which a drain stops pulling until the next tick.
MAX_MALFORMED_IN_A_ROW = 3
_CUT_BY_A_STOP = "answer cut short by the end of an earlier run"
# Longest pause between attempts to append a pulled batch that the spool refused (disk full).
SPOOL_RETRY_MAX = 30.0
# Free space a pull needs on the spool's file system before it is sent, per message asked
# for, above the spool's floor: the journal file, the rows in the WAL and the checkpoint into
# the spool file each hold the answer once (Infobip's MO items are well under 1 KiB each).
# Infobip forgets what it hands out, so a pull is not sent without room for its answer.
DISK_BYTES_PER_MESSAGE = 4096


def disk_need(pull_limit: int, pulls: int = 1) -> int:
    """Free bytes the spool's file system must have before ``pulls`` pulls of ``pull_limit``
    messages are sent (one pull: what readiness asks of the spool's file system)."""
    return DISK_FLOOR + pulls * pull_limit * DISK_BYTES_PER_MESSAGE


# Seconds kept, of what is left of a stop's grace period, for the spool append of a held batch.
APPEND_RESERVE = 1.0


@dataclass
class DrainResult:
    """What one drain did."""

    pulls: int = 0
    pulled: int = 0
    quarantined: int = 0
    pending_reported: int | None = None
    backpressure: bool = False
    pull_error: str | None = None
    auth_failed: bool = False
    seconds: float = 0.0


@dataclass
class _Unit:
    """What one pull and its append did."""

    pulled: int = 0
    quarantined: int = 0
    results: int = 0
    pending: int | None = None
    error: str | None = None
    auth_failed: bool = False
    malformed: bool = False
    sent: bool = True
    limit: int = 0  # messages asked for
    limit_refused: bool = False  # a 400 to the limit asked for: nothing was handed out


@dataclass(frozen=True)
class Rows:
    """Spool rows made from one body."""

    messages: list[NewMessage]
    quarantined: list[NewQuarantine]


def rows_from_body(
    body: bytes, pulled_at: str, reason: str | None = None, scan: PullScan | None = None
) -> Rows:
    """Every whole item of a pull answer (or of what arrived of it) as rows; what is not
    whole goes to quarantine: the whole body when no item could be read, else the rest from
    the first item that could not. ``reason`` says why the body is suspect, if it is;
    ``scan``: the body as read already (it is read here otherwise)."""
    scan = scan if scan is not None else scan_pull(body)
    messages, quarantined = rows_from_items(scan.items, pulled_at)
    problem = scan.error or (reason if scan.items else None)
    # Once every item was read, what is missing is only the counters: nothing to keep.
    if problem is not None and not scan.results_complete:
        whole = not scan.items
        raw = body if whole else scan.rest
        if raw.strip() or whole:
            why = reason or problem
            if not whole:
                why = f"{why}; {len(scan.items)} whole items before it were kept"
            quarantined.append(quarantine(raw, why, None, pulled_at))
    return Rows(messages, quarantined)


class PullSource:
    """Drains the pull inbox into the spool; one drain per scheduler tick (a ``Source``)."""

    name = "pull"

    def __init__(
        self,
        client: InfobipClient,
        spool: Spool,
        journal: Journal | None,
        flusher: Flusher,
        stop: Stop,
        *,
        pull_limit: int,
        max_pulls: int,
        in_flight: int,
        schedule: ScheduleSettings | None = None,
        scheduler: AsyncIOScheduler | None = None,
        max_poll_age: float = float("inf"),
    ) -> None:
        self.client = client
        self.spool = spool
        self.journal = journal
        self.flusher = flusher
        self.stop = stop
        self.pull_limit = pull_limit
        self.max_pulls = max_pulls
        self.in_flight = in_flight
        self.schedule = schedule
        self.scheduler = scheduler
        self.max_poll_age = max_poll_age
        metrics.PULL_LIMIT.set(pull_limit)
        # The spool's readiness wants room for one answer on top of its floor.
        spool.min_free = max(spool.min_free, disk_need(pull_limit))
        self._units: set[asyncio.Task[_Unit]] = set()
        self._last_turn: asyncio.Future[None] | None = None
        self._forget: list[str] = []  # journal files deleted since the last append
        self._drain_task: asyncio.Task[DrainResult] | None = None
        self.started = time.monotonic()
        self.last_success: float | None = None
        self._counts = Counts()
        self.drains = 0
        # Set while a pulled batch waits in memory because the spool refused it.
        self.spool_error: str | None = None
        # Set while pulls are paused because the spool's file system lacks room.
        self.disk_paused: str | None = None
        # Messages a stop had to give up because neither the spool nor the journal held them.
        self._abandoned = 0
        # Called after every scheduled drain (the daemon's status line).
        self.on_drain: list[Callable[[DrainResult], None]] = []
        self._unconfirmed = False  # spooled rows of a good pull the sink has not taken yet
        self._last_traffic = time.monotonic()  # when an answer last held messages
        self.idle_delay: float | None = None  # seconds before the next drain, once idle
        # Messages per pull that fill half the body limit at the size of the last answer's
        # messages (None: the pull limit fits). An answer past the limit loses what was not
        # read, and Infobip does not hand it out again: pulls ask for fewer before that.
        self._fit: int | None = None
        flusher.on_flushed.append(self._confirmed)

    @property
    def counts(self) -> Counts:
        """Messages and quarantined items pulled since start."""
        return self._counts

    @property
    def abandoned(self) -> int:
        """Messages a stop gave up on (neither the spool nor the journal took them)."""
        return self._abandoned

    async def start(self) -> None:
        """Put the drains on the scheduler: the first one as soon as it runs."""
        if self.scheduler is None or self.schedule is None:
            raise RuntimeError("a pull source without a scheduler drains only when told to")
        s = self.schedule
        trigger: Any
        if s.cron:
            trigger = CronTrigger.from_crontab(s.cron, timezone=UTC)
        else:
            trigger = IntervalTrigger(seconds=s.interval, jitter=s.jitter or None)
        self.scheduler.add_job(
            self._tick,
            trigger,
            id="poll",
            name="pull drain",
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )

    async def _tick(self) -> None:
        if self.stop.requested:
            return
        # APScheduler cancels its job tasks on shutdown; the drain runs in a task of our own
        # so that a stop waits for it instead of cutting it between pull and spool.
        self._drain_task = asyncio.create_task(self._scheduled_drain(), name="pull-drain")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._drain_task)

    async def _scheduled_drain(self) -> DrainResult:
        result = await self.drain()
        if result.auth_failed and self.last_success is None:
            # Never pulled with these credentials: nothing will work until they are fixed.
            log.error("infobip refused the credentials; stopping", error=result.pull_error)
            self.stop.request("infobip refused the credentials", failed=True)
        self._next_drain(result)
        for callback in self.on_drain:
            callback(result)
        return result

    def _next_drain(self, result: DrainResult) -> None:
        """Bring the next drain forward to the cadence's delay (interval schedules only)."""
        delay = self.cadence(result)
        if delay is None or self.scheduler is None or self.stop.requested:
            return
        if self.scheduler.get_job("poll") is None:
            return
        when = datetime.now(UTC) + timedelta(seconds=delay)
        self.scheduler.modify_job("poll", next_run_time=when)

    def cadence(self, result: DrainResult, now: float | None = None) -> float | None:
        """Seconds until the next drain after ``result``, or None to leave the schedule's
        own (a cron schedule, a failed drain, a full spool)."""
        s = self.schedule
        if s is None or s.cron or result.pull_error or result.backpressure:
            return None
        now = time.monotonic() if now is None else now
        if result.pulled or result.quarantined:
            self._last_traffic = now
            self.idle_delay = None
            return s.hot_interval
        if now - self._last_traffic < s.hot_period:
            return s.hot_interval
        before = self.idle_delay if self.idle_delay is not None else s.hot_interval
        self.idle_delay = min(s.interval, before * 2)
        return self.idle_delay

    def check(self) -> Check:
        """Readiness: a good poll within ``max_poll_age``, and the spool taking its answers."""
        if self.spool_error is not None:
            return (
                False,
                f"spool refuses writes, a pulled batch waits in memory: {self.spool_error}",
            )
        disk = self.disk_problem()
        if disk is not None:
            return False, f"pulling paused: {disk}"
        now = time.monotonic()
        limit = self.max_poll_age
        if self.last_success is None:
            waited = now - self.started
            if waited < limit:
                return True, f"no poll yet, started {waited:.0f} s ago (limit {limit:g} s)"
            return (
                False,
                f"no successful poll in the {waited:.0f} s since start (limit {limit:g} s)",
            )
        age = now - self.last_success
        if age <= limit:
            return True, f"last successful poll {age:.0f} s ago"
        return False, f"last successful poll {age:.0f} s ago (limit {limit:g} s)"

    async def drain(self) -> DrainResult:
        """Pull and spool while messages are pending, with up to ``in_flight`` pulls at once."""
        result = DrainResult()
        started = time.monotonic()
        pending: int | None = None  # as the latest answer reported; None: not asked yet
        running: set[asyncio.Task[_Unit]] = set()
        malformed = 0
        halt = False
        while True:
            while not halt and self._want(result, pending, len(running)):
                running.add(self._start())
                result.pulls += 1
            if not running:
                break
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    # A bug, not a bad answer: stop this drain, keep the daemon (and the
                    # journal file, which the next start spools) alive.
                    log.error("pull failed unexpectedly", exc_info=task.exception())
                    result.pull_error = f"unexpected: {task.exception()!r}"
                    halt = True
                    continue
                unit = task.result()
                result.pulled += unit.pulled
                result.quarantined += unit.quarantined
                if not unit.sent:
                    result.pulls -= 1
                    halt = True
                    continue
                if unit.limit_refused and self._step_down(unit.limit, unit.error):
                    continue  # the next pulls ask for less; nothing was handed out
                if unit.error is not None:
                    halt = True
                    if unit.malformed:
                        malformed += 1
                        halt = malformed >= MAX_MALFORMED_IN_A_ROW
                        if halt:
                            result.pull_error = unit.error
                        continue
                    result.pull_error = unit.error
                    result.auth_failed = result.auth_failed or unit.auth_failed
                    continue
                malformed = 0
                pending = unit.pending if unit.results else 0
                result.pending_reported = unit.pending
        metrics.BACKPRESSURE_ACTIVE.set(1 if result.backpressure else 0)
        self.drains += 1
        self._counts.messages += result.pulled
        self._counts.quarantined += result.quarantined
        result.seconds = time.monotonic() - started
        metrics.POLL_CYCLE_SECONDS.observe(result.seconds)
        log.info(
            "drain done",
            pulls=result.pulls,
            pulled=result.pulled,
            quarantined=result.quarantined,
            pending=result.pending_reported,
            backpressure=result.backpressure or None,
            pull_error=result.pull_error,
            seconds=round(result.seconds, 3),
        )
        return result

    def _step_down(self, refused: int, error: str | None) -> bool:
        """After a 400 to a pull of ``refused`` messages: ask for less from now on; False
        when already at the smallest."""
        if refused > self.pull_limit:
            return True  # a pull sent before the last step down: that step covers it
        smaller = [step for step in LIMIT_STEPS if step < refused]
        if not smaller:
            return False
        log.warning(
            "infobip refused the pull limit; asking for fewer messages per pull from now on",
            refused=self.pull_limit,
            limit=smaller[0],
            error=error,
        )
        self.pull_limit = smaller[0]
        metrics.PULL_LIMIT.set(self.pull_limit)
        return True

    def _want(self, result: DrainResult, pending: int | None, running: int) -> bool:
        """Whether to send one more pull now."""
        if self.stop.requested or result.pulls >= self.max_pulls or running >= self.in_flight:
            return False
        if not self.spool.has_room(self._asked() * running):
            # At the cap, counting what the pulls on their way will add.
            self.flusher.wake()
            result.backpressure = running == 0
            return False
        if self.spool_error is not None:
            return False  # a pulled batch waits in memory: nothing more until it is spooled
        if not self._disk_allows(running + 1):
            return False
        if pending is None:
            return running == 0  # the first answer tells how much is waiting
        # What the latest answer left, less what the pulls already on their way will take.
        return pending - self._asked() * running > 0

    def _asked(self) -> int:
        """Messages the next pull asks for."""
        return self.pull_limit if self._fit is None else min(self.pull_limit, self._fit)

    def _measure(self, size: int, count: int) -> None:
        """Fit the next pulls' size to the messages of an answer of ``size`` bytes."""
        if count == 0:
            return
        fitting = int(self.client.settings.max_body_bytes / 2 / (size / count))
        fit = max(1, fitting) if fitting < self.pull_limit else None
        if (fit is None) != (self._fit is None):
            log.warning(
                "pull answers near the body limit; asking for fewer messages per pull",
                limit=fit or self.pull_limit,
                bytes_per_message=size // count,
                max_body_bytes=self.client.settings.max_body_bytes,
            )
        self._fit = fit

    def disk_problem(self, pulls: int = 1) -> str | None:
        """Why the spool's file system cannot take the answers of ``pulls`` pulls, or None."""
        problem = self.spool.disk_problem(disk_need(self.pull_limit, pulls))
        if problem is not None:
            return problem
        refused = self.journal.refuses_files() if self.journal is not None else None
        if refused is not None:
            return f"the spool's file system ({self.spool.path.parent}) refuses writes: {refused}"
        return None

    def _disk_allows(self, pulls: int) -> bool:
        """True when the file system has room for ``pulls`` answers; logs each change."""
        problem = self.disk_problem(pulls)
        if problem != self.disk_paused and (problem is None) != (self.disk_paused is None):
            if problem is not None:
                log.error("spool's file system has no room: pulling paused", problem=problem)
            else:
                log.info("spool's file system has room again: pulling resumed")
        self.disk_paused = problem
        metrics.SPOOL_DISK_PAUSED.set(0 if problem is None else 1)
        return problem is None

    def _start(self) -> asyncio.Task[_Unit]:
        previous = self._last_turn
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_turn = turn
        task = asyncio.create_task(self._unit(previous, turn), name="pull")
        self._units.add(task)
        task.add_done_callback(self._units.discard)
        return task

    async def settle(self, seconds: float) -> bool:
        """After a stop: no new drain, the drain in flight sends no new pull, and the pulls
        in flight are spooled within ``seconds``; True when none is left."""
        deadline = time.monotonic() + max(0.0, seconds)
        if self.scheduler is not None and self.scheduler.get_job("poll") is not None:
            self.scheduler.pause_job("poll")
        drain = self._drain_task
        if drain is not None and not drain.done():
            log.info("waiting for the drain in flight", seconds_left=round(seconds, 1))
            await asyncio.wait({drain}, timeout=max(0.0, deadline - time.monotonic()))
        if not self._units:
            return True
        left = max(0.0, deadline - time.monotonic())
        _done, late = await asyncio.wait(set(self._units), timeout=left)
        if late:
            log.warning("pulls still in flight at the stop deadline", pulls=len(late))
        return not late

    async def close(self) -> None:
        """Take the drains off the scheduler."""
        if self.scheduler is not None and self.scheduler.get_job("poll") is not None:
            self.scheduler.remove_job("poll")

    async def _unit(
        self, previous: asyncio.Future[None] | None, turn: asyncio.Future[None]
    ) -> _Unit:
        try:
            return await self._pull_and_spool(previous)
        finally:
            if not turn.done():
                turn.set_result(None)

    async def _pull_and_spool(self, previous: asyncio.Future[None] | None) -> _Unit:
        pulled_at = now_rfc3339()
        entry = self.journal.open_entry(pulled_at) if self.journal is not None else None
        started = time.monotonic()
        unit = _Unit(limit=self._asked())
        try:
            response = await self.client.pull(
                unit.limit, on_chunk=entry.write if entry is not None else None
            )
        except MalformedResponseError as exc:
            # The body may hold messages that Infobip will never hand out again: keep them.
            body = exc.body
            if isinstance(exc, ResponseTooLargeError) and exc.journaled and entry is not None:
                # Read on past the limit into the journal file: every whole item of it is
                # kept (a one-off cost in memory; later pulls ask for fewer messages).
                whole = await asyncio.to_thread(entry.read_body)
                if whole is not None and len(whole) == exc.journaled:
                    body = whole
            scan = exc.scan if body is exc.body else None
            rows = await offload.run(len(body), rows_from_body, body, pulled_at, exc.reason, scan)
            if isinstance(exc, ResponseTooLargeError):
                self._measure(len(body), len(rows.messages) + len(rows.quarantined))
            del body
            unit.error = str(exc)
            unit.malformed = True
            metrics.PULLS.labels(outcome="malformed").inc()
            log.error(
                "pull answer malformed; whole items kept, the rest quarantined",
                reason=exc.reason,
                bytes=len(exc.body),
                kept=len(rows.messages),
            )
        except InfobipError as exc:
            if entry is not None:
                entry.discard()
            if self.stop.requested:
                unit.sent = False  # not sent (or cut short before an answer) because of the stop
                return unit
            unit.error = str(exc)
            unit.auth_failed = isinstance(exc, AuthError)
            unit.limit_refused = isinstance(exc, BadRequestError)
            outcome = "throttled" if isinstance(exc, ThrottledError) else "error"
            metrics.PULLS.labels(outcome=outcome).inc()
            log.warning("pull failed; will try again at the next tick", error=str(exc))
            return unit
        else:
            messages, quarantined = rows_from_items(
                list(zip(response.items, response.routes, strict=True)), pulled_at
            )
            rows = Rows(messages, quarantined)
            unit.results = len(response.items)
            unit.pending = response.pending_message_count
            metrics.PULLS.labels(outcome="ok" if response.items else "empty").inc()
            if response.pending_message_count is not None:
                metrics.INFOBIP_PENDING_MESSAGES.set(response.pending_message_count)
            self._measure(len(response.body), len(response.items))
            # The rows hold each item's bytes: the body need not stay in memory with them.
            del response
        finally:
            metrics.PULL_REQUEST_SECONDS.observe(time.monotonic() - started)
        if previous is not None and not previous.done():
            # An earlier pull is still on its way: this answer waits, on disk, for its turn.
            if entry is not None:
                await asyncio.to_thread(entry.sync)
            await previous
        if await self._append(rows, entry):
            unit.pulled = len(rows.messages)
            unit.quarantined = len(rows.quarantined)
            count_rows(rows.messages, rows.quarantined, "pulled")
            if unit.error is None:
                if unit.pulled or unit.quarantined:
                    self._unconfirmed = True  # stamped once the flusher has written them
                elif self.flusher.error is None and not self.flusher.parked:
                    self._progress()  # an empty inbox, and the sink was fine last time
            self.flusher.wake()
        return unit

    def _confirmed(self) -> None:
        if self._unconfirmed:
            self._unconfirmed = False
            self._progress()

    def _progress(self) -> None:
        self.last_success = time.monotonic()
        metrics.LAST_SUCCESSFUL_POLL.set(time.time())

    async def _append(self, rows: Rows, entry: JournalEntry | None) -> bool:
        """Spool one answer's rows; while the spool refuses (disk full, I/O error), hold them
        and try again: Infobip will not hand them out again. At the stop deadline, give up:
        the journal file keeps the answer for the next start when it could be written, else
        the messages go to the log whole. True when spooled."""
        if not rows.messages and not rows.quarantined:
            if entry is not None:
                entry.discard()  # an empty answer: nothing to keep, no fsync to pay
            return True
        journal_id = entry.id if entry is not None and entry.ok else None
        delay = 0.5
        attempts = 0
        while True:
            forget, self._forget = self._forget, []
            try:
                await asyncio.to_thread(
                    self.spool.append,
                    rows.messages,
                    rows.quarantined,
                    journal=journal_id,
                    forget=forget,
                )
            except SpoolError as exc:
                self._forget.extend(forget)
                attempts += 1
                self.spool_error = str(exc)
                log.error(
                    "spool refused a pulled batch; holding it and retrying",
                    error=str(exc),
                    messages=len(rows.messages),
                    attempt=attempts,
                )
                if self.stop.requested and self.stop.remaining() <= APPEND_RESERVE:
                    self._give_up(rows, entry)
                    return False
                wait = delay
                if self.stop.requested:
                    wait = min(delay, self.stop.budget(APPEND_RESERVE))
                await asyncio.sleep(wait)
                delay = min(SPOOL_RETRY_MAX, delay * 2)
                continue
            if attempts:
                log.info(
                    "spool took the held batch", attempts=attempts, messages=len(rows.messages)
                )
            self.spool_error = None
            if entry is not None:
                entry.discard()
                self._forget.append(entry.id)
            return True

    def _give_up(self, rows: Rows, entry: JournalEntry | None) -> None:
        if entry is not None and entry.ok and entry.sync():
            log.error(
                "stopping with a pulled answer the spool never took; it stays in the journal"
                " and is spooled at the next start",
                path=str(entry.path),
                messages=len(rows.messages),
            )
            return
        # Last resort before the process goes: the batch into the log, whole.
        self._abandoned += len(rows.messages) + len(rows.quarantined)
        log.critical(
            "stopping with a batch the spool never took; its messages follow",
            payloads=[m.payload for m in rows.messages],
            quarantined=[q.raw.decode("utf-8", "replace") for q in rows.quarantined],
        )


def salvage(spool: Spool, journal: Journal) -> tuple[int, int]:
    """Spool what a killed run left in the journal; (messages, quarantined) salvaged.

    A file whose id the spool recorded was spooled already and is only deleted. Runs at
    start, before any pull, in a thread (it reads files and appends)."""
    leftovers = journal.leftovers()
    if not leftovers:
        spool.forget_journals()
        return 0, 0
    spooled = spool.spooled_journals({left.id for left in leftovers})
    messages = quarantined = 0
    for left in leftovers:
        if left.id not in spooled and left.body.strip():
            rows = rows_from_body(left.body, left.pulled_at or now_rfc3339(), _CUT_BY_A_STOP)
            spool.append(rows.messages, rows.quarantined, journal=left.id)
            messages += len(rows.messages)
            quarantined += len(rows.quarantined)
            log.warning(
                "answer left in the journal by an earlier run spooled",
                path=str(left.path),
                messages=len(rows.messages),
                quarantined=len(rows.quarantined),
            )
        left.path.unlink(missing_ok=True)
    spool.forget_journals()
    return messages, quarantined
