"""The poll cycle: pull -> spool -> flush to Redis -> commit, draining while Infobip has more."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from poller import metrics
from poller.infobip import (
    AuthError,
    InfobipClient,
    InfobipError,
    MalformedResponseError,
    PullResponse,
)
from poller.sink import Sink, SinkError
from poller.spool import NewMessage, NewQuarantine, Spool, SpoolError

log = structlog.get_logger(__name__)

# Rows read from the spool per flush step: bounded memory whatever the backlog.
FLUSH_ROWS = 5000
# Malformed answers in a row after which a cycle stops pulling until the next tick.
MAX_MALFORMED_IN_A_ROW = 3
# Longest pause between attempts to write a pulled batch that the spool refused (disk full).
SPOOL_RETRY_MAX = 30.0


@dataclass
class CycleResult:
    """What one cycle did."""

    pulls: int = 0
    pulled: int = 0
    quarantined: int = 0
    written: int = 0
    skipped: int = 0
    pending_reported: int | None = None
    backpressure: bool = False
    pull_error: str | None = None
    auth_failed: bool = False
    flush_error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the cycle pulled without error and flushed everything it could."""
        return self.pull_error is None and self.flush_error is None


@dataclass
class FlushResult:
    """What one flush wrote."""

    written: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    dead_lettered: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # stream key -> Redis's refusal

    @property
    def total_written(self) -> int:
        """Entries added to streams."""
        return sum(self.written.values())


# One encoder for every message: json.dumps would rebuild it per call.
_ENCODE_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ENCODE_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def encode_item(item: Any) -> str:
    """JSON text of a result item, readable UTF-8 when it can be, escaped ASCII otherwise.

    JSON may carry a lone surrogate (half an emoji cut by a sender); it cannot be stored as
    UTF-8, but its \\u escape round-trips exactly."""
    text = _ENCODE_UTF8(item)
    try:
        text.encode()
    except UnicodeEncodeError:
        return _ENCODE_ASCII(item)
    return text


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def split_results(
    response: PullResponse, pulled_at: str
) -> tuple[list[NewMessage], list[NewQuarantine]]:
    """Turn a pull's items into spool rows; items that are not messages go to quarantine."""
    messages: list[NewMessage] = []
    quarantined: list[NewQuarantine] = []
    for item in response.results:
        problem = _problem(item)
        payload = encode_item(item)
        if problem is None:
            received = item.get("receivedAt")
            messages.append(
                NewMessage(
                    app=item["applicationCode"],
                    message_id=item["messageId"],
                    received_at=received if _is_text(received) else "",
                    pulled_at=pulled_at,
                    payload=payload,
                )
            )
        else:
            app = item.get("applicationCode") if isinstance(item, dict) else None
            quarantined.append(
                NewQuarantine(
                    raw=payload.encode(),
                    reason=problem,
                    app=app if _is_text(app) and app else None,
                    pulled_at=pulled_at,
                )
            )
    return messages, quarantined


def _is_text(value: Any) -> bool:
    """A str that UTF-8 can store (JSON allows lone surrogates; SQLite and Redis do not)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return f"result item is a {type(item).__name__}, not an object"
    for name in ("messageId", "applicationCode"):
        value = item.get(name)
        if not isinstance(value, str) or not value:
            return f"result item has no {name}"
        if not _is_text(value):
            return f"result item's {name} is not valid Unicode text"
    return None


class PollCycle:
    """Runs cycles; the only place where Infobip, the spool and Redis meet."""

    def __init__(
        self,
        client: InfobipClient,
        spool: Spool,
        sink: Sink,
        *,
        pull_limit: int,
        max_pulls: int,
    ) -> None:
        self.client = client
        self.spool = spool
        self.sink = sink
        self.pull_limit = pull_limit
        self.max_pulls = max_pulls
        self._flush_lock = asyncio.Lock()
        self._flushes: set[asyncio.Task[FlushResult]] = set()
        self.last_success: float | None = None
        self.backpressure = False
        # Set while a pulled batch waits in memory because the spool refused it.
        self.spool_error: str | None = None
        # Set by a graceful stop: the cycle in flight ends after its current pull and flush.
        self.stopping = False
        # time.monotonic() by which a stop must be done (set with stopping).
        self.stop_deadline: float | None = None
        # Set when a stop had to give up a pulled batch the spool would not take (it is logged).
        self.abandoned = 0
        # Called after every successful pull (readiness: the last good poll is now).
        self.on_progress: Callable[[], None] | None = None

    async def run(self) -> CycleResult:
        """One cycle: pull and spool, flush, repeat while messages are pending."""
        result = CycleResult()
        started = time.monotonic()
        redis_failed = False
        malformed_in_a_row = 0
        while result.pulls < self.max_pulls and not self.stopping:
            if self.spool.full:
                # Flushing may make room; otherwise stop pulling until Redis drains the spool.
                if not redis_failed:
                    redis_failed = not await self._try_flush(result)
                if self.spool.full:
                    self._set_backpressure(True)
                    result.backpressure = True
                    break
            self._set_backpressure(False)
            try:
                response = await self._pull_and_spool(result)
            except MalformedResponseError as exc:
                malformed_in_a_row += 1
                if malformed_in_a_row >= MAX_MALFORMED_IN_A_ROW:
                    result.pull_error = str(exc)
                    break
                continue
            except InfobipError as exc:
                if self.stopping:
                    break  # the pull was not sent (or was cut short) because of the stop
                result.pull_error = str(exc)
                result.auth_failed = isinstance(exc, AuthError)
                metrics.PULLS.labels(outcome="error").inc()
                log.warning("pull failed; will try again at the next tick", error=str(exc))
                break
            malformed_in_a_row = 0
            if not redis_failed:
                redis_failed = not await self._try_flush(result)
            if not redis_failed and not result.flush_error:
                # Pulled, spooled and delivered: the poller is doing its whole job.
                self._progress()
            result.pending_reported = response.pending_message_count
            if response.pending_message_count <= 0 or not response.results:
                break
        if not redis_failed and result.pulls == 0:
            # Nothing pulled (error or backpressure): still move what the spool holds.
            await self._try_flush(result)
        result.seconds = time.monotonic() - started
        metrics.POLL_CYCLE_SECONDS.observe(result.seconds)
        self._update_gauges()
        log.info(
            "cycle done",
            pulls=result.pulls,
            pulled=result.pulled,
            written=result.written,
            quarantined=result.quarantined,
            pending=result.pending_reported,
            backpressure=result.backpressure or None,
            pull_error=result.pull_error,
            flush_error=result.flush_error,
            seconds=round(result.seconds, 3),
        )
        return result

    def _progress(self) -> None:
        """A pull succeeded and what the spool held reached Redis."""
        self.last_success = time.monotonic()
        metrics.LAST_SUCCESSFUL_POLL.set(time.time())
        if self.on_progress is not None:
            self.on_progress()

    async def _pull_and_spool(self, result: CycleResult) -> PullResponse:
        # A pull and its spool write are one unit that a stop does not cut: once the request is
        # sent, Infobip has handed its messages out, and only the spool can keep them.
        unit = asyncio.ensure_future(self._pull_and_spool_unit(result))
        try:
            return await asyncio.shield(unit)
        except asyncio.CancelledError:
            if not unit.done():
                log.warning("stop during a pull: finishing the pull and its spool write first")
                await self._finish_unit(unit)
            raise

    async def _finish_unit(self, unit: asyncio.Future[PullResponse]) -> None:
        """Let a pull unit end by the stop deadline, whatever cancels arrive meanwhile."""
        settings = self.client.settings
        deadline = time.monotonic() + settings.connect_timeout + settings.read_timeout + 5
        if self.stop_deadline is not None:
            deadline = min(deadline, self.stop_deadline - 1.0)
        while not unit.done():
            left = deadline - time.monotonic()
            if left <= 0:
                unit.cancel()  # a hold on a refusing spool then logs the batch before it goes
                left = 5.0
            try:
                await asyncio.wait({unit}, timeout=left)
            except asyncio.CancelledError:
                continue  # a second cancel: the unit still owns messages, keep waiting

    async def _pull_and_spool_unit(self, result: CycleResult) -> PullResponse:
        started = time.monotonic()
        try:
            response = await self.client.pull(self.pull_limit)
        except MalformedResponseError as exc:
            # The body may hold messages that Infobip will never hand out again: keep it.
            result.pulls += 1
            result.quarantined += 1
            await self._quarantine_body(exc.body, exc.reason)
            metrics.PULLS.labels(outcome="malformed").inc()
            raise
        finally:
            metrics.PULL_REQUEST_SECONDS.observe(time.monotonic() - started)
        try:
            messages, quarantined = split_results(response, now_rfc3339())
        except Exception as exc:  # whatever goes wrong, the body is the only copy: keep it
            log.exception("pull response could not be processed; quarantining it whole")
            result.pulls += 1
            result.quarantined += 1
            await self._quarantine_body(response.body, f"unprocessable: {type(exc).__name__}")
            metrics.PULLS.labels(outcome="malformed").inc()
            return response
        # Nothing happens between the pull and this append: it is what makes a crash safe.
        try:
            await self._append(messages, quarantined)
        except Exception as exc:  # not a refusal of the spool (held and retried): the batch
            log.exception("pulled batch could not be spooled; quarantining the body whole")
            result.pulls += 1
            result.quarantined += 1
            await self._quarantine_body(response.body, f"unspoolable: {type(exc).__name__}")
            metrics.PULLS.labels(outcome="malformed").inc()
            return response
        result.pulls += 1
        result.pulled += len(messages)
        result.quarantined += len(quarantined)
        metrics.PULLS.labels(outcome="ok" if response.results else "empty").inc()
        metrics.INFOBIP_PENDING_MESSAGES.set(response.pending_message_count)
        for app, count in Counter(m.app for m in messages).items():
            metrics.MESSAGES_PULLED.labels(app=app).inc(count)
        for item in quarantined:
            metrics.MESSAGES_QUARANTINED.labels(app=item.app or "unknown").inc()
            log.error("result item quarantined", reason=item.reason, app=item.app)
        return response

    async def _quarantine_body(self, body: bytes, reason: str) -> None:
        quarantine = NewQuarantine(raw=body, reason=reason, app=None, pulled_at=now_rfc3339())
        await self._append((), (quarantine,))
        metrics.MESSAGES_QUARANTINED.labels(app="unknown").inc()
        log.error("pull response quarantined", reason=reason, bytes=len(body))

    async def _append(
        self, messages: Sequence[NewMessage], quarantined: Sequence[NewQuarantine]
    ) -> None:
        """Spool a pulled batch; if the spool refuses (disk full, I/O error), hold the batch in
        memory and try again until it is written: Infobip will not hand these out again."""
        delay = 0.5
        attempts = 0
        while True:
            try:
                await asyncio.to_thread(self.spool.append, messages, quarantined)
            except SpoolError as exc:
                attempts += 1
                self.spool_error = str(exc)
                log.error(
                    "spool refused a pulled batch; holding it in memory and retrying",
                    error=str(exc),
                    messages=len(messages),
                    attempt=attempts,
                )
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    # Last resort before the process goes: the batch into the log, whole.
                    self.abandoned += len(messages) + len(quarantined)
                    log.critical(
                        "stopping with a batch the spool never took; its messages follow",
                        payloads=[m.payload for m in messages],
                        quarantined=[q.raw.decode("utf-8", "replace") for q in quarantined],
                    )
                    raise
                delay = min(SPOOL_RETRY_MAX, delay * 2)
                continue
            if attempts:
                log.info("spool took the held batch", attempts=attempts, messages=len(messages))
            self.spool_error = None
            return

    async def _try_flush(self, result: CycleResult) -> bool:
        try:
            flushed = await self.flush()
        except (SinkError, SpoolError) as exc:
            result.flush_error = str(exc)
            log.warning("flush to redis failed; messages stay in the spool", error=str(exc))
            return False
        result.written += flushed.total_written
        result.skipped += flushed.skipped
        if flushed.failed:
            # Redis works, one stream does not: the others flow, the cycle reports the rest.
            result.flush_error = "; ".join(f"{k}: {v}" for k, v in flushed.failed.items())
        return True

    async def flush(self) -> FlushResult:
        """Write everything the spool holds to Redis, committing each confirmed slice.

        A caller that is cancelled stops waiting, but the flush itself runs on to a clean end
        (holding the lock, so two flushes never overlap); `settle()` waits for it."""
        task = asyncio.ensure_future(self._locked_flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)
        return await asyncio.shield(task)

    async def _locked_flush(self) -> FlushResult:
        async with self._flush_lock:
            return await self._flush()

    async def settle(self, grace: float) -> None:
        """Wait for flushes still running (a caller gave up on them), then cancel the rest."""
        if not self._flushes:
            return
        pending = set(self._flushes)
        _done, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
        for task in pending:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("background flush failed", error=str(task.exception()))

    async def _flush(self) -> FlushResult:
        total = FlushResult()
        # Applications whose stream Redis refused (WRONGTYPE, NOPERM): their rows stay in the
        # spool and are left out of the next slices, so they do not hold the others back.
        parked: set[str] = set()
        while True:
            entries = await asyncio.to_thread(self.spool.pending, FLUSH_ROWS, parked)
            if not entries:
                break
            started = time.monotonic()
            written = await self.sink.write(entries)
            refused = {e.app for e in entries if self.sink.stream_key(e.app) in written.failed}
            parked |= refused
            total.failed.update(written.failed)
            done = [e for e in entries if e.app not in refused]
            if parked:
                # Parked rows lie below this slice's last seq: delete exactly what was written.
                await asyncio.to_thread(self.spool.commit_seqs, [e.seq for e in done])
            else:
                await asyncio.to_thread(self.spool.commit, entries[-1].seq)
            metrics.FLUSH_SECONDS.observe(time.monotonic() - started)
            total.skipped += written.total_skipped
            self._count_written(done, written.written, total)
            if written.total_skipped:
                metrics.DUPLICATES_SKIPPED.inc(written.total_skipped)
            if len(entries) < FLUSH_ROWS and not written.failed:
                break
        parked_dead: set[str] = set()
        while True:
            dead = await asyncio.to_thread(self.spool.quarantine_pending, FLUSH_ROWS, parked_dead)
            if not dead:
                break
            result = await self.sink.write_dead(dead)
            refused = {q.app or "" for q in dead if self.sink.dead_key(q.app) in result.failed}
            parked_dead |= refused
            total.failed.update(result.failed)
            done_dead = [q.seq for q in dead if (q.app or "") not in refused]
            if parked_dead:
                # Parked bodies lie below this slice's last seq: flag exactly what was written.
                await asyncio.to_thread(self.spool.mark_dead_lettered_seqs, done_dead)
            else:
                await asyncio.to_thread(self.spool.mark_dead_lettered, dead[-1].seq)
            total.dead_lettered += len(done_dead)
            if len(dead) < FLUSH_ROWS and not result.failed:
                break
        for stream, error in total.failed.items():
            metrics.REDIS_ERRORS.inc()
            log.error(
                "redis refused a stream; its messages wait in the spool", stream=stream, error=error
            )
        self._update_gauges()
        return total

    def _count_written(
        self, entries: Sequence[Any], written: dict[str, int], total: FlushResult
    ) -> None:
        by_stream = {self.sink.stream_key(e.app): e.app for e in entries}
        for stream, count in written.items():
            total.written[stream] = total.written.get(stream, 0) + count
            if count:
                metrics.MESSAGES_WRITTEN.labels(app=by_stream.get(stream, "unknown")).inc(count)

    def _set_backpressure(self, on: bool) -> None:
        if on != self.backpressure:
            self.backpressure = on
            stats = self.spool.stats()
            if on:
                log.warning(
                    "spool is full: pulling paused until redis drains it",
                    rows=stats.rows,
                    bytes=stats.bytes,
                )
            else:
                log.info("spool has room again: pulling resumed", rows=stats.rows)
        metrics.BACKPRESSURE_ACTIVE.set(1 if on else 0)

    def _update_gauges(self) -> None:
        stats = self.spool.stats()
        metrics.SPOOL_ROWS.set(stats.rows)
        metrics.SPOOL_BYTES.set(stats.bytes)
        metrics.SPOOL_OLDEST_AGE_SECONDS.set(stats.oldest_age_s or 0.0)
        metrics.QUARANTINE_ROWS.set(stats.quarantined)
