"""The forwarder: POSTs the messages of HTTP_FORWARD applications to their forwardUrl.

Infobip does not publish the body of a forward, so the simulator sends the documented pull
answer's shape, {"results": [...], "messageCount": n, "pendingMessageCount": 0}, as
application/json. Any 2xx means delivered. A connection error, a timeout or another status is
retried with exponential backoff and jitter until the simulator stops, at most max_attempts
times per message; then the message is recorded as given up.

Per URL, a batch is cut from the head of the URL's queue (up to batch_size of the messages
waiting at that moment; nothing lingers to fill a batch) and up to in_flight batches are on
their way at once. First attempts are sent in queue order; a retried batch may arrive after
later ones, as with any sender that keeps several requests open (in_flight=1 keeps strict
order). A message keeps the URL it was queued for when its application's action changes.
"""

from __future__ import annotations

import asyncio
import base64
import random
import ssl
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import httpx
import structlog

from poller.devtools.simulator.faults import FORWARD_TARGET, FaultSet, delay_of
from poller.devtools.simulator.ledger import ForwardAttempt, Ledger
from poller.devtools.simulator.outbox import Item, Outbox
from poller.devtools.simulator.replies import results_body

log = structlog.get_logger(__name__)

_HEADERS = {"Content-Type": "application/json"}
# Backoff doubles this many times at most (the cap is reached long before).
_MAX_DOUBLINGS = 32


@dataclass(frozen=True)
class ForwarderSettings:
    """How the simulator forwards: batch size, requests in flight, timeout and retries."""

    batch_size: int = 100  # messages per POST (1: one message per request)
    in_flight: int = 4  # POSTs on their way at once, per URL
    timeout: float = 5.0  # seconds per connect, write and read
    backoff_base: float = 0.1  # first retry delay, seconds (doubles, with jitter)
    backoff_max: float = 5.0  # longest retry delay, seconds
    max_attempts: int | None = 50  # per message; None: until the simulator stops

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("forward batch_size must be at least 1")
        if self.in_flight < 1:
            raise ValueError("forward in_flight must be at least 1")
        if not self.timeout > 0:
            raise ValueError("forward timeout must be positive")
        if not 0 < self.backoff_base <= self.backoff_max:
            raise ValueError("forward backoff_base must be positive and at most backoff_max")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("forward max_attempts must be at least 1 (or None for no limit)")

    def to_json(self) -> dict[str, Any]:
        """The settings as shown in the state snapshot."""
        return {
            "batchSize": self.batch_size,
            "inFlight": self.in_flight,
            "timeout": self.timeout,
            "backoffBase": self.backoff_base,
            "backoffMax": self.backoff_max,
            "maxAttempts": self.max_attempts,
        }


@dataclass
class _Batch:
    seq: int
    items: list[Item]
    body: bytes
    attempts: int  # made so far (a batch put back at a stop goes on counting)

    @property
    def ids(self) -> list[str]:
        return [message_id for message_id, _ in self.items]


@dataclass
class _Lane:
    """One forwardUrl: its dispatcher, its free slots and its batches in flight."""

    url: str
    slots: asyncio.Semaphore
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    batches: dict[int, _Batch] = field(default_factory=dict)
    dispatcher: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"


class Forwarder:
    """Takes batches from the outbox and POSTs them, per URL, with retries."""

    def __init__(
        self,
        outbox: Outbox,
        ledger: Ledger,
        faults: FaultSet,
        settings: ForwarderSettings,
        rng: random.Random,
    ) -> None:
        self.settings = settings
        self._outbox = outbox
        self._ledger = ledger
        self._faults = faults
        self._rng = rng
        self._client: httpx.AsyncClient | None = None
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0

    async def start(self) -> None:
        """Start delivering what is queued and whatever is queued later."""
        # trust_env=False: Infobip reaches the URL directly, whatever proxy this shell names.
        self._client = httpx.AsyncClient(
            timeout=self.settings.timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            trust_env=False,
        )
        self._outbox.listener = self._wake
        for url in self._outbox.urls():
            self._wake(url)

    async def stop(self) -> None:
        """Cancel every POST; batches not delivered go back to the head of their queue."""
        self._outbox.listener = None
        tasks = [lane.dispatcher for lane in self._lanes.values() if lane.dispatcher is not None]
        tasks += self._tasks
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes.values():
            leftover = [item for seq in sorted(lane.batches) for item in lane.batches[seq].items]
            if leftover:
                self._outbox.put_back(lane.url, leftover)
        self._lanes.clear()
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def in_flight(self) -> int:
        """Messages in batches on their way or waiting for a retry."""
        return sum(len(b.items) for lane in self._lanes.values() for b in lane.batches.values())

    def snapshot(self) -> dict[str, Any]:
        """Settings, waiting messages per URL and messages in flight."""
        return {
            "settings": self.settings.to_json(),
            "queued": self._outbox.snapshot(),
            "inFlight": self.in_flight(),
        }

    def _wake(self, url: str) -> None:
        lane = self._lanes.get(url)
        if lane is None:
            lane = _Lane(url, asyncio.Semaphore(self.settings.in_flight))
            lane.dispatcher = asyncio.create_task(self._dispatch(lane), name="simulator-forward")
            lane.dispatcher.add_done_callback(_report_failure)
            self._lanes[url] = lane
        lane.wake.set()

    async def _dispatch(self, lane: _Lane) -> None:
        while True:
            await lane.slots.acquire()
            while not self._outbox.depth(lane.url):
                lane.wake.clear()
                await lane.wake.wait()
            items = self._outbox.take(lane.url, self.settings.batch_size)
            self._seq += 1
            made = max(self._ledger.forward_attempts_of(message_id) for message_id, _ in items)
            batch = _Batch(self._seq, items, results_body([m for _, m in items], 0), made)
            lane.batches[batch.seq] = batch
            # Tasks start in the order they are created: first attempts leave in queue order.
            task = asyncio.create_task(self._deliver(lane, batch), name="simulator-forward-post")
            self._tasks.add(task)
            task.add_done_callback(partial(self._done, lane))

    def _done(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        lane.slots.release()
        _report_failure(task)

    async def _deliver(self, lane: _Lane, batch: _Batch) -> None:
        ids = batch.ids
        limit = self.settings.max_attempts
        while True:
            batch.attempts += 1
            fault = self._faults.pick(lane.path, FORWARD_TARGET)
            kind = fault.kind if fault is not None else None
            if fault is not None and kind == "forward_delay":
                await asyncio.sleep(delay_of(fault))
            attempt = self._ledger.record_forward(lane.url, ids, batch.attempts, kind)
            if fault is not None and kind == "forward_drop":
                await self._send_and_drop(lane.url, batch.body, attempt, fault.params.get("delay"))
            else:
                await self._post(lane.url, batch.body, attempt)
            if attempt.delivered:
                if batch.attempts > 1:
                    log.info("forward recovered", origin=_origin(lane.url), tries=batch.attempts)
                if kind == "forward_duplicate":
                    again = self._ledger.record_forward(
                        lane.url, ids, batch.attempts, kind, duplicate=True
                    )
                    await self._post(lane.url, batch.body, again)
                break
            failure = {"status": attempt.status, "error": attempt.error, "attempt": batch.attempts}
            if limit is not None and batch.attempts >= limit:
                self._ledger.forward_gave_up(ids)
                log.warning(
                    "forward gave up", origin=_origin(lane.url), messages=len(ids), **failure
                )
                break
            log.debug("forward failed, will retry", origin=_origin(lane.url), **failure)
            await asyncio.sleep(self._backoff(batch.attempts))
        del lane.batches[batch.seq]

    def _backoff(self, attempts: int) -> float:
        settings = self.settings
        delay = settings.backoff_base * 2.0 ** min(attempts - 1, _MAX_DOUBLINGS)
        return min(settings.backoff_max, delay) * (0.5 + self._rng.random() / 2)

    async def _post(self, url: str, body: bytes, attempt: ForwardAttempt) -> None:
        assert self._client is not None  # nosec B101  # start() opened the client: narrows the type
        try:
            response = await self._client.post(url, content=body, headers=_HEADERS)
        except httpx.TimeoutException:
            self._ledger.finish_forward(attempt, error="timeout")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            self._ledger.finish_forward(attempt, error=_describe(exc))
        except asyncio.CancelledError:
            self._ledger.finish_forward(attempt, error="stopped")
            raise
        else:
            self._ledger.finish_forward(attempt, status=response.status_code)

    async def _send_and_drop(
        self, url: str, body: bytes, attempt: ForwardAttempt, delay: float | None
    ) -> None:
        """The forward_drop fault: write the request, then close without reading the answer:
        when it starts to arrive (or at the timeout), or delay seconds after the write."""
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.settings.timeout):
                reader, writer = await asyncio.open_connection(
                    parts.hostname,
                    parts.port or (443 if secure else 80),
                    ssl=ssl.create_default_context() if secure else None,
                )
                writer.write(_request_head(parts, len(body)) + body)
                await writer.drain()
            if delay is None:
                try:
                    async with asyncio.timeout(self.settings.timeout):
                        await reader.read(1)
                except OSError:
                    pass  # a timeout or a reset: the request went out all the same
            else:
                await asyncio.sleep(float(delay))
            self._ledger.finish_forward(attempt, error="dropped")
        except OSError as exc:
            self._ledger.finish_forward(attempt, error=_describe(exc))
        except asyncio.CancelledError:
            self._ledger.finish_forward(attempt, error="stopped")
            raise
        finally:
            if writer is not None:
                writer.transport.abort()


def _request_head(parts: SplitResult, length: int) -> bytes:
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"POST {target} HTTP/1.1",
        f"Host: {parts.netloc.rpartition('@')[2]}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        "Connection: close",
    ]
    if parts.username is not None:
        user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Authorization: Basic " + base64.b64encode(user_password.encode()).decode())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _origin(url: str) -> str:
    # Logs name the receiver without its path or user info, which may hold a token.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("simulator forwarder failed", exc_info=exc)
