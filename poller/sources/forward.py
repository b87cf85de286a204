"""The forward source: Infobip POSTs each message to this receiver (an HTTP_FORWARD action).

Served by aiohttp.web in the daemon's event loop. A request is answered 2xx only once its
messages are in the spool, fsynced (design invariant 1): a crash before that means no 2xx,
so Infobip delivers again instead of the message being lost. Concurrent requests share one
transaction and one fsync (``GroupCommit``). A delivery Infobip repeats (our 2xx lost on the
way back) is written once: forwarded rows carry a dedupe flag, and the sink skips a message
whose id reached its stream within ``POLLER_FORWARD__DEDUPE_WINDOW``, atomically with the
write and whatever process took the first delivery.

Bodies: the pull method's envelope (``{"results": [...], ...}``), a single message object,
or a JSON array of them. Anything else is answered 400 with a JSON reason, and its bytes go
to quarantine and the dead-letter stream, as for a pulled body.

Protection, checked before the body is read (no side effect when refused): the token (a
path segment or the ``X-Forward-Token`` header, compared in constant time), optional HTTP
basic auth, the content type, the declared size; then a read timeout on headers and body, a
size cap while reading, and a cap on connections. 503 with Retry-After while the spool is
at its cap or the daemon is stopping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import hmac
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from poller import metrics, offload
from poller.flusher import Flusher
from poller.infobip.body import scan_pull
from poller.sources import Check, Counts
from poller.sources.items import count_rows, now_rfc3339, quarantine, rows_from_items
from poller.sources.settings import ForwardSettings
from poller.spool import NewMessage, NewQuarantine, Spool, SpoolError
from poller.stop import Stop
from poller.web import GuardedServer

log = structlog.get_logger(__name__)

TOKEN_HEADER = "X-Forward-Token"  # noqa: S105 (a header name)  # nosec B105  # a header name, not a secret
RETRY_AFTER = "5"


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


def parse_forward(body: bytes) -> tuple[list[tuple[bytes, Any]], str | None]:
    """The items of a forwarded body (bytes as sent, routing fields), or a reason it is not
    one of the accepted shapes: envelope, one message object, an array of messages. A UTF-8
    byte order mark before the document is skipped."""
    body = body.removeprefix(codecs.BOM_UTF8)
    head = body.lstrip()[:1]
    if head == b"[":
        scan = scan_pull(b'{"results":' + body + b"}")
    elif head == b"{":
        scan = scan_pull(body)
        if scan.error == "`results` is not a list" and not scan.items:
            scan = scan_pull(b'{"results":[' + body + b"]}")
            if scan.error is None and not isinstance(scan.items[0][1], dict):
                return [], "not a message object"
    else:
        return [], "not JSON: expected an object or an array"
    if scan.error is not None:
        return [], scan.error
    return scan.items, None


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
        self._counts = Counts()
        self._in_flight = 0  # bytes reserved by the requests being read or spooled
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
        if request.content_type != "application/json" and not request.content_type.endswith(
            "+json"
        ):
            return _reply(415, f"content type {request.content_type!r}: send application/json")
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _reply(413, f"body larger than {limit} bytes")
        if self.stop.requested:
            return _reply(503, "stopping", {"Retry-After": RETRY_AFTER})
        if not self.spool.has_room():
            return _reply(503, "spool at its cap", {"Retry-After": RETRY_AFTER})
        # Memory: a body costs about three times its size until its rows are spooled (see
        # deploy/OPERATIONS.md, Memory); the sizes of the bodies in hand are capped.
        size = limit if request.content_length is None else request.content_length
        if self._in_flight and self._in_flight + size > self.settings.max_bytes_in_flight:
            return _reply(503, "too many bytes in flight", {"Retry-After": "1"})
        self._in_flight += size
        try:
            try:
                async with asyncio.timeout(self.settings.read_timeout):
                    body = await _read(request, limit)
            except TimeoutError:
                return _reply(408, f"body not received within {self.settings.read_timeout:g} s")
            if body is None:
                return _reply(413, f"body larger than {limit} bytes")
            return await self._store(body)
        finally:
            self._in_flight -= size

    def _check_auth(self, request: web.Request) -> web.Response | None:
        given = request.match_info.get("token") or request.headers.get(TOKEN_HEADER)
        if not given:
            return _reply(401, f"missing token (path segment or {TOKEN_HEADER} header)")
        if not hmac.compare_digest(given.encode(), self._token):
            return _reply(403, "wrong token")
        if self._basic is None:
            return None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        try:
            pair = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            pair = b""
        if scheme.lower() != "basic" or not hmac.compare_digest(pair, self._basic):
            return _reply(
                401, "basic authentication required", {"WWW-Authenticate": 'Basic realm="poller"'}
            )
        return None

    async def _store(self, body: bytes) -> web.Response:
        started = time.monotonic()
        received_at = now_rfc3339()
        items, problem = await offload.run(len(body), parse_forward, body)
        if problem is not None:
            # Nothing silently dropped: the bytes are kept, as for a pulled body.
            kept = quarantine(body, f"forwarded body: {problem}", None, received_at)
            try:
                await self.commit.append([], [kept])
            except SpoolError as exc:
                log.error("forwarded body not kept: spool refused it", error=str(exc))
                return _reply(503, "spool unavailable", {"Retry-After": RETRY_AFTER})
            self.flusher.wake()
            self._counts.quarantined += 1
            metrics.MESSAGES_QUARANTINED.labels(app=None).inc()
            log.warning("forwarded body refused and quarantined", reason=problem, bytes=len(body))
            return _reply(400, problem)
        messages, quarantined = rows_from_items(items, received_at, dedupe=True)
        try:
            await self.commit.append(messages, quarantined)
        except SpoolError as exc:
            log.error("forwarded messages not spooled; Infobip will deliver again", error=str(exc))
            return _reply(503, "spool unavailable", {"Retry-After": RETRY_AFTER})
        self.flusher.wake()
        self._counts.messages += len(messages)
        self._counts.quarantined += len(quarantined)
        count_rows(messages, quarantined, "forwarded")
        metrics.FORWARD_ACK_SECONDS.observe(time.monotonic() - started)
        if self.on_received is not None:
            self.on_received()
        return web.json_response({"accepted": len(messages), "quarantined": len(quarantined)})


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (reading stops there)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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
