"""The forward source: Infobip POSTs each message to this receiver (an HTTP_FORWARD action).

Served by aiohttp.web in the daemon's event loop. A request is answered 2xx only once its
messages are in the spool, fsynced (design invariant 1): a crash before that means no 2xx,
so Infobip delivers again instead of the message being lost. Concurrent requests share one
transaction and one fsync (``GroupCommit``). A delivery Infobip repeats (our 2xx lost on the
way back) is written once: forwarded rows carry a dedupe flag, and the sink skips a message
whose id reached its stream within ``POLLER_FORWARD__DEDUPE_WINDOW``, atomically with the
write and whatever process took the first delivery.

Bodies (``forward_body``): the pull method's envelope (``{"results": [...], ...}``), a
single message object, or a JSON array of them, recognised by content whatever the declared
Content-Type, in the declared charset, gzip or deflate decoded. Anything else is answered 400
with a JSON reason, and its bytes as received go to quarantine and the dead-letter stream, as
for a pulled body. Only the configured forward applications reach streams.

Protection, checked before the body is read (no side effect when refused): the token (a
path segment or the ``X-Forward-Token`` header, of any bytes, compared in constant time),
optional HTTP basic auth, the Content-Encoding, the declared size; then a read timeout on
headers and body, a cap on the body's bytes (received and decoded) while reading, on the
bytes in flight across requests, and on connections. 503 with Retry-After while the spool is
at its cap or the daemon is stopping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from poller import metrics, offload
from poller.flusher import Flusher
from poller.sources import Check, Counts
from poller.sources.forward_body import (
    DECODED,
    Inflater,
    Routed,
    Undecodable,
    encoding_of,
    parse_forward,
    route,
)
from poller.sources.items import count_rows, now_rfc3339, quarantine
from poller.sources.settings import ForwardSettings
from poller.spool import NewMessage, NewQuarantine, Spool, SpoolError
from poller.stop import Stop
from poller.web import GuardedServer

log = structlog.get_logger(__name__)

TOKEN_HEADER = "X-Forward-Token"  # noqa: S105 (a header name)  # nosec B105  # a header name, not a secret
RETRY_AFTER = "5"
# Seconds between two log lines about refused requests of one kind (a flood of wrong tokens
# costs one line per interval, with the count of those it stands for).
REFUSAL_LOG_INTERVAL = 10.0


class GroupCommit:
    """Spool appends of concurrent requests, one transaction and one fsync for all that wait.

    While one append runs, the requests that arrive queue up; the next append takes them all.
    Each caller learns whether its own rows are durable (or the SpoolError)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._queue: list[tuple[list[NewMessage], list[NewQuarantine], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0

    async def append(self, messages: list[NewMessage], quarantined: list[NewQuarantine]) -> None:
        """Return once these rows are fsynced in the spool; SpoolError when they are not."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((messages, quarantined, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="forward-group-commit")
        await asyncio.shield(done)

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            messages = [m for ms, _q, _f in batch for m in ms]
            quarantined = [q for _m, qs, _f in batch for q in qs]
            try:
                await asyncio.to_thread(self.spool.append, messages, quarantined)
            except Exception as exc:  # whatever it is, each waiting request must hear of it
                error = exc if isinstance(exc, SpoolError) else SpoolError(f"append: {exc!r}")
                for _m, _q, done in batch:
                    if not done.done():
                        done.set_exception(error)
                continue
            self.commits += 1
            for _m, _q, done in batch:
                if not done.done():
                    done.set_result(None)


class ForwardReceiver:
    """The HTTP forward source: an aiohttp server in the daemon's loop (a ``Source``)."""

    name = "forward"

    def __init__(
        self,
        settings: ForwardSettings,
        spool: Spool,
        flusher: Flusher,
        stop: Stop,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.flusher = flusher
        self.stop = stop
        self.commit = GroupCommit(spool)
        self._token = settings.token.get_secret_value().encode() if settings.token else b""
        self._basic: bytes | None = None
        if settings.basic_username is not None and settings.basic_password is not None:
            pair = f"{settings.basic_username}:{settings.basic_password.get_secret_value()}"
            self._basic = pair.encode()
        context = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        self.server = GuardedServer(
            "forward",
            [(settings.path, self._handle), (settings.path + "/{token}", self._handle)],
            settings.host,
            settings.port,
            max_connections=settings.max_connections,
            header_timeout=settings.read_timeout,
            idle_timeout=settings.idle_timeout,
            ssl_context=context,
        )
        self.server.on_refused(metrics.FORWARD_REQUESTS.labels(status="503").inc)
        self.server.on_bad_request(
            lambda status: metrics.FORWARD_REQUESTS.labels(status=str(status)).inc()
        )
        self._counts = Counts()
        self._in_flight = 0  # bytes reserved by the requests being read or spooled
        self._apps = frozenset(settings.applications)
        self._refusals = _Refusals({})
        # Called after every request whose messages were spooled (readiness, status).
        self.on_received: Callable[[], None] | None = None

    @property
    def counts(self) -> Counts:
        """Messages and quarantined items received since start."""
        return self._counts

    @property
    def received(self) -> int:
        """Messages received and spooled since start."""
        return self._counts.messages

    @property
    def abandoned(self) -> int:
        """Always 0: nothing is acknowledged before it is in the spool."""
        return 0

    def check(self) -> Check:
        """Readiness: the receiver accepts connections."""
        return (True, "listening") if self.listening else (False, "not listening")

    @property
    def listening(self) -> bool:
        """True while the server accepts connections."""
        return self.server.listening

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self.server.port

    async def start(self) -> None:
        """Bind and serve; OSError when the address cannot be used."""
        await self.server.start()
        log.info(
            "forward receiver listening",
            host=self.settings.host,
            port=self.port,
            path=self.settings.path,
            tls=self.settings.tls_cert_file is not None,
        )

    async def settle(self, seconds: float) -> bool:
        """Stop accepting, let the requests in flight be answered (their spool append
        included) within ``seconds``; True when they all were."""
        try:
            async with asyncio.timeout(seconds):
                await self.server.close()
        except TimeoutError:
            log.warning("forwarded requests still in flight at the stop deadline")
            return False
        return True

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish (their spool append included)."""
        await self.server.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._answer(request)
        metrics.FORWARD_REQUESTS.labels(status=str(response.status)).inc()
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return _reply(405, "only POST is accepted", {"Allow": "POST"})
        refused = self._check_auth(request)
        if refused is not None:
            return refused
        # Any Content-Type is read: JSON is recognised by its content. An encoding is
        # refused before the body is read, unless it is one the receiver decodes.
        encoding = encoding_of(request.headers.get("Content-Encoding"))
        if encoding is None:
            named = request.headers.get("Content-Encoding", "")[:40]
            return _reply(
                415,
                f"content encoding {named!r} is not decoded here: send the body uncompressed,"
                f" or with Content-Encoding {', '.join(DECODED)}",
            )
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _reply(413, f"body larger than {limit} bytes")
        if self.stop.requested:
            return _reply(503, "stopping", {"Retry-After": RETRY_AFTER})
        if not self.spool.has_room():
            return _reply(503, "spool at its cap", {"Retry-After": RETRY_AFTER})
        # Memory: a body costs about three times its size until its rows are spooled (see
        # deploy/OPERATIONS.md, Memory); the sizes of the bodies in hand are capped. A
        # compressed body's decoded bytes are counted as they come (``_Reading.grow``).
        size = limit if request.content_length is None else request.content_length
        if self._in_flight and self._in_flight + size > self.settings.max_bytes_in_flight:
            return _reply(503, "too many bytes in flight", {"Retry-After": "1"})
        reading = _Reading(self, size, limit, Inflater(encoding) if encoding else None)
        try:
            try:
                async with asyncio.timeout(self.settings.read_timeout):
                    refused = await reading.read(request)
            except TimeoutError:
                return _reply(408, f"body not received within {self.settings.read_timeout:g} s")
            if refused is not None:
                return refused
            return await self._store(reading.raw(), reading.decoded(), request.charset)
        finally:
            reading.release()

    def _check_auth(self, request: web.Request) -> web.Response | None:
        given = request.match_info.get("token") or request.headers.get(TOKEN_HEADER)
        if not given:
            self._refusals.note(401, "missing token")
            return _reply(401, f"missing token (path segment or {TOKEN_HEADER} header)")
        # Header bytes that are not UTF-8 come as surrogates: compared as the bytes they were.
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._token):
            self._refusals.note(403, "wrong token")
            return _reply(403, "wrong token")
        if self._basic is None:
            return None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        try:
            pair = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            pair = b""
        if scheme.lower() != "basic" or not hmac.compare_digest(pair, self._basic):
            self._refusals.note(401, "basic authentication missing or wrong")
            return _reply(
                401, "basic authentication required", {"WWW-Authenticate": 'Basic realm="poller"'}
            )
        return None

    async def _store(
        self, raw: bytes, decoded: bytes | Undecodable, charset: str | None
    ) -> web.Response:
        started = time.monotonic()
        received_at = now_rfc3339()
        size = max(len(raw), 0 if isinstance(decoded, Undecodable) else len(decoded))
        routed = await offload.run(size, _rows, raw, decoded, charset, self._apps, received_at)
        if isinstance(routed, NewQuarantine):
            return await self._refuse(routed)
        try:
            await self.commit.append(routed.messages, routed.rows)
        except SpoolError as exc:
            log.error("forwarded messages not spooled; Infobip will deliver again", error=str(exc))
            return _reply(503, "spool unavailable", {"Retry-After": RETRY_AFTER})
        self.flusher.wake()
        self._counts.messages += len(routed.messages)
        self._counts.quarantined += routed.items_quarantined
        count_rows(routed.messages, routed.quarantined, "forwarded")
        if routed.strays is not None:
            metrics.MESSAGES_QUARANTINED.labels(app=None).inc(routed.stray_count)
            log.error("forwarded items quarantined", reason=routed.strays.reason)
        metrics.FORWARD_ACK_SECONDS.observe(time.monotonic() - started)
        if self.on_received is not None:
            self.on_received()
        return web.json_response(
            {"accepted": len(routed.messages), "quarantined": routed.items_quarantined}
        )

    async def _refuse(self, kept: NewQuarantine) -> web.Response:
        """A body that is not a message: its bytes kept, then a 400 with the reason."""
        try:
            await self.commit.append([], [kept])
        except SpoolError as exc:
            log.error("forwarded body not kept: spool refused it", error=str(exc))
            return _reply(503, "spool unavailable", {"Retry-After": RETRY_AFTER})
        self.flusher.wake()
        self._counts.quarantined += 1
        metrics.MESSAGES_QUARANTINED.labels(app=None).inc()
        log.warning(
            "forwarded body refused and quarantined", reason=kept.reason, bytes=len(kept.raw)
        )
        return _reply(400, kept.reason.removeprefix("forwarded body: "))


def _rows(
    raw: bytes,
    decoded: bytes | Undecodable,
    charset: str | None,
    apps: frozenset[str],
    received_at: str,
) -> Routed | NewQuarantine:
    """The spool rows of a body (off the loop when it is big): its messages and quarantined
    items, or one quarantine row of its bytes as received when it is not a message body."""
    items: list[tuple[bytes, Any]] = []
    problem: str | None = str(decoded)
    if not isinstance(decoded, Undecodable):
        items, problem = parse_forward(decoded, charset)
    if problem is not None:
        # Nothing silently dropped: the bytes are kept as received, as for a pulled body.
        return quarantine(raw, f"forwarded body: {problem}", None, received_at)
    return route(items, apps, received_at)


@dataclass
class _Refusals:
    """Log lines about refused requests, one per kind and interval, with a count."""

    since: dict[int, tuple[float, int]]

    def note(self, status: int, reason: str) -> None:
        now = time.monotonic()
        last, count = self.since.get(status, (-REFUSAL_LOG_INTERVAL, 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            self.since[status] = (last, count + 1)
            return
        self.since[status] = (now, 0)
        log.info("forward request refused", status=status, reason=reason, refused_since=count)


class _Reading:
    """One request's body as it is read: its bytes as received, decoded bytes as they come,
    and what it holds of the receiver's bytes in flight."""

    def __init__(
        self, receiver: ForwardReceiver, reserved: int, limit: int, inflater: Inflater | None
    ) -> None:
        self.receiver = receiver
        self.reserved = reserved
        self.limit = limit
        self.inflater = inflater
        self._raw: list[bytes] = []
        self._decoded: list[bytes] = []
        self._failed: Undecodable | None = None
        receiver._in_flight += reserved

    async def read(self, request: web.Request) -> web.Response | None:
        """Read the body; a response when it is refused (past the cap, or past the bytes in
        flight while others are in hand). Reading stops there."""
        try:
            return await self._read(request)
        except HttpProcessingError as exc:  # bad chunked framing, a body cut short
            return _reply(400, f"body cannot be read: {str(exc.message)[:200]}")

    async def _read(self, request: web.Request) -> web.Response | None:
        size = decoded = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self.limit:
                return _reply(413, f"body larger than {self.limit} bytes")
            self._raw.append(chunk)
            if self.inflater is None or self._failed is not None:
                continue
            try:
                for piece in self.inflater.feed(chunk):
                    decoded += len(piece)
                    if decoded > self.limit:
                        return _reply(413, f"decoded body larger than {self.limit} bytes")
                    if not self.grow(len(piece)):
                        return _reply(503, "too many bytes in flight", {"Retry-After": "1"})
                    self._decoded.append(piece)
            except Undecodable as exc:
                self._failed = exc  # the rest is read all the same, to be kept as received
        if self.inflater is not None and self._failed is None:
            try:
                self.inflater.finish()
            except Undecodable as exc:
                self._failed = exc
        return None

    def grow(self, size: int) -> bool:
        """Hold ``size`` more bytes in flight; False when that passes the bytes in flight
        and other requests hold some (one request alone may always go on)."""
        receiver = self.receiver
        total = receiver._in_flight + size
        if total > receiver.settings.max_bytes_in_flight and receiver._in_flight > self.reserved:
            return False
        receiver._in_flight = total
        self.reserved += size
        return True

    def raw(self) -> bytes:
        """The body as received."""
        if len(self._raw) != 1:
            self._raw = [b"".join(self._raw)]
        return self._raw[0]

    def decoded(self) -> bytes | Undecodable:
        """The body after its Content-Encoding, or why it cannot be decoded."""
        if self.inflater is None:
            return self.raw()
        if self._failed is not None:
            return self._failed
        if len(self._decoded) != 1:
            self._decoded = [b"".join(self._decoded)]
        return self._decoded[0]

    def release(self) -> None:
        """Give back the bytes in flight this request held."""
        self.receiver._in_flight -= self.reserved
        self.reserved = 0


def _reply(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(
        status=status,
        text=json.dumps({"error": reason}),
        content_type="application/json",
        headers=headers,
    )
    if status != 400:
        # Refused before its body was read (or while): the connection cannot be reused.
        response.force_close()
    return response
