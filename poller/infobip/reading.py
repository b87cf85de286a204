"""Reading an Infobip answer's body, and the threads that read pull answers.

``Body`` takes an answer's pieces as they arrive: each goes to the hook first (the pull
source's journal file), then is held in memory up to the body limit. ``Readers`` are the
threads that read pull answers, one per pull in flight, with a blocking client built like the
event loop's: a thread blocked on its socket takes the bytes as they come and writes them to
the journal file, whatever the event loop is busy with meanwhile (parsing, spooling,
flushing), so a SIGKILL finds them in a file, not in the socket's buffers. ``LoopAuth`` runs an
async-only auth flow (OAuth2) on the event loop for a request sent from such a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import TypeVar

import httpx
import structlog

from poller.infobip.errors import (
    InfobipError,
    MalformedResponseError,
    ResponseTooLargeError,
    TransportError,
    TruncatedResponseError,
)

log = structlog.get_logger(__name__)

# How far past the body limit a pull answer is still read into its journal file (disk, not
# memory); what lies beyond is never read, and lost.
OVERSIZE_FACTOR = 8
T = TypeVar("T")

# Called with each piece of a pull answer's body as it arrives.
ChunkHook = Callable[[bytes], None]


class Body:
    """One answer's body as it arrives: every piece goes to the hook first (the journal
    file), then is held in memory up to the limit. With a hook, an answer past the limit is
    read on to the hook alone, up to OVERSIZE_FACTOR times the limit, so that its whole items
    can be kept (Infobip hands a pull answer out once)."""

    def __init__(
        self,
        limit: int,
        operation: str,
        response: httpx.Response,
        keep_partial: bool,
        on_chunk: ChunkHook | None,
    ) -> None:
        ok = 200 <= response.status_code < 300
        self.limit = limit
        self.operation = operation
        self.response = response
        self.keep_partial = keep_partial and ok
        self.on_chunk = on_chunk if ok else None
        self.chunks: list[bytes] = []
        self.size = 0
        self.head: bytes | None = None  # set once the body passed the limit

    def feed(self, chunk: bytes) -> None:
        """Take the next piece; ResponseTooLargeError when no more may be read."""
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        self.size += len(chunk)
        if self.size <= self.limit:
            self.chunks.append(chunk)
            return
        if self.head is None:
            self.head = (b"".join(self.chunks) + chunk)[: self.limit]
            self.chunks = []
        if self.on_chunk is None:
            raise ResponseTooLargeError(
                f"body larger than {self.limit} bytes", self.head, operation=self.operation
            )
        if self.size > self.limit * OVERSIZE_FACTOR:
            raise ResponseTooLargeError(
                f"body larger than {self.limit * OVERSIZE_FACTOR} bytes, not read on",
                self.head,
                operation=self.operation,
                journaled=self.size,
            )

    def failed(self, exc: httpx.HTTPError) -> InfobipError | None:
        """The error that keeps what arrived when reading the body failed, or None when the
        transport's own error is to be raised (a call that may be retried)."""
        cut = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.ReadTimeout)
        reason = transport_reason(exc)
        if self.head is not None:  # read on past the limit to the hook: it has the bytes
            how = "cut" if cut else "unreadable"
            return ResponseTooLargeError(
                f"body larger than {self.limit} bytes, then {how} after {self.size} bytes"
                f" ({reason})",
                self.head,
                operation=self.operation,
                journaled=self.size,
            )
        if not self.keep_partial:
            return None
        partial = b"".join(self.chunks)
        if cut:
            # A pull answer cut after its status line was handed out all the same, even with
            # no body byte received: report it (for quarantine), never retry it away.
            return TruncatedResponseError(
                f"connection ended after {len(partial)} bytes ({reason})",
                partial,
                operation=self.operation,
            )
        # E.g. a body whose Content-Encoding does not decode: it held messages handed out
        # once; keep what arrived for quarantine.
        return MalformedResponseError(
            f"body could not be read ({reason})", partial, operation=self.operation
        )

    def done(self, started: float) -> tuple[int, httpx.Headers, bytes]:
        """Status, headers and body of an answer read to its end."""
        if self.head is not None:
            raise ResponseTooLargeError(
                f"body of {self.size} bytes, larger than {self.limit}",
                self.head,
                operation=self.operation,
                journaled=self.size,
            )
        log.debug(
            "infobip call",
            operation=self.operation,
            status=self.response.status_code,
            seconds=round(time.monotonic() - started, 4),
            bytes=self.size,
        )
        return self.response.status_code, self.response.headers, b"".join(self.chunks)


class Readers:
    """The threads that read pull answers (one per pull in flight), with their blocking
    client. A thread blocked on its socket takes the bytes as they come, whatever the event
    loop is busy with; it needs the interpreter only for a moment per piece."""

    def __init__(self, http: httpx.Client, threads: int) -> None:
        self.http = http
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="pull-reader"
        )
        self._lock = threading.Lock()
        self._busy = 0

    async def run(self, read: Callable[[], T]) -> T:
        """``read()`` in a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._tracked, read)

    def _tracked(self, read: Callable[[], T]) -> T:
        with self._lock:
            self._busy += 1
        try:
            return read()
        finally:
            with self._lock:
                self._busy -= 1

    def close(self) -> None:
        """No new reads; the pool closes unless an answer is still being read, which goes
        on to its end (or its read timeout) into its journal file."""
        self._pool.shutdown(wait=False)
        with self._lock:
            busy = self._busy
        if not busy:
            self.http.close()


class LoopAuth(httpx.Auth):
    """An async-only auth (OAuth2) for a request sent from a reader thread: each step of its
    flow runs on the event loop, so the token is the one every other call uses."""

    def __init__(self, auth: httpx.Auth, loop: asyncio.AbstractEventLoop, wait: float) -> None:
        self._auth = auth
        self._loop = loop
        self._wait = wait
        self.requires_request_body = auth.requires_request_body
        self.requires_response_body = auth.requires_response_body

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """The wrapped flow, step by step on the loop."""
        flow = self._auth.async_auth_flow(request)
        try:
            request = self._on_loop(flow, None)
            while True:
                response = yield request
                request = self._on_loop(flow, response)
        except StopAsyncIteration:
            return

    def _on_loop(
        self, flow: AsyncGenerator[httpx.Request, httpx.Response], response: httpx.Response | None
    ) -> httpx.Request:
        async def step() -> httpx.Request:
            if response is None:
                return await anext(flow)
            return await flow.asend(response)

        try:
            future = asyncio.run_coroutine_threadsafe(step(), self._loop)
        except RuntimeError:  # the loop is closed: the process is stopping
            raise TransportError("not sent: the poller is stopping") from None
        try:
            return future.result(self._wait)
        except TimeoutError:
            future.cancel()
            raise TransportError("not sent: no credentials in time") from None


def transport_reason(exc: BaseException) -> str:
    """The first line of a transport error, bounded."""
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
