"""The daemon's HTTP servers (health, HTTP forward receiver): aiohttp.web with the limits it
lacks, for a port that may face the internet or a crowd of probes.

aiohttp gives the protocol, routing, keep-alive and streaming bodies. Around its protocol,
``GuardedServer`` adds:
- a cap on open connections, kept within the process's open-file limit, so file descriptors
  never run out (an accept loop starved of them logs thousands of lines a second). At the
  cap a new connection takes the place of the oldest one that is not inside a request (silent,
  still sending its headers, or idle between requests), so a crowd of silent connections
  cannot lock out a probe; only when every connection is inside a request is the new one
  answered 503 and closed at once;
- a timeout on request headers (aiohttp waits for them forever), counted from the connection's
  start and from the first byte of each later request: a connection whose request has not
  reached its handler in time is closed; the handler bounds the body itself;
- a short lingering close after an answer sent with the body unread;
- header limits tighter than aiohttp's defaults (``MAX_LINE_SIZE``, ``MAX_FIELD_SIZE``,
  ``MAX_HEADERS``), and bodies left as sent (no automatic decoding of Content-Encoding: the
  receiver decodes what it accepts itself, counting decoded bytes);
- a request aiohttp's parser refuses (a header too long, bad bytes, too many headers) is one
  log line with no traceback and is counted (``on_bad_request``); aiohttp logged each with a
  traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from poller.env import env_name

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# File descriptors left for what opens after the servers: the spool's journal, Redis and
# Infobip connections.
FD_RESERVE = 48
# Header limits: the request line (method, path with a token, version), one header line, and
# how many header lines. A connection's headers then cost at most 32 x 8 KiB; ingress-nginx
# passes on 32 KiB in all. aiohttp's defaults: 8,190, 8,190 and 128.
MAX_LINE_SIZE = 4096
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 32
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


class _Gate:
    """Connections open now, the cap, the header timeout, and each connection's guard."""

    def __init__(self, name: str, cap: int, header_timeout: float) -> None:
        self.name = name
        self.cap = cap
        self.header_timeout = header_timeout
        self.open = 0
        self.refused = 0
        self.guards: dict[RequestHandler, _Guard] = {}
        self.on_refused: Callable[[], None] | None = None


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: refuses it beyond the cap, and closes it
    when a request's headers do not reach the handler within the timeout."""

    def __init__(self, inner: RequestHandler, gate: _Gate) -> None:
        self.inner = inner
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._admitted = False
        self._evicted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # nosec B101  # a TCP server's transport: narrows the type
        self.transport = transport
        if self.gate.open >= self.gate.cap and not self._make_room():
            self.gate.refused += 1
            if self.gate.on_refused is not None:
                self.gate.on_refused()
            transport.write(_REFUSAL)
            transport.close()
            return
        self._admitted = True
        self.gate.open += 1
        self.gate.guards[self.inner] = self
        self.inner.connection_made(transport)
        # The first request's headers must arrive in time, like every later one's.
        self._timer = asyncio.get_running_loop().call_later(self.gate.header_timeout, self._expire)

    def _make_room(self) -> bool:
        """Close the oldest connection that is not inside a request; False when all are."""
        for guard in self.gate.guards.values():
            if not guard._in_request:
                guard._release()
                guard._evicted = True
                if guard.transport is not None:
                    guard.transport.abort()
                return True
        return False

    def _release(self) -> None:
        if self._admitted:
            self._admitted = False
            self.gate.open -= 1
            self.gate.guards.pop(self.inner, None)
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._evicted:
            self._evicted = False
            self.inner.connection_lost(exc)
            return
        if not self._admitted:
            return
        self._release()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted or self._evicted:
            return
        if not self._in_request and self._timer is None:
            # The first bytes of a request: its headers must all arrive in time.
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.gate.header_timeout, self._expire)
        self.inner.data_received(data)

    def eof_received(self) -> None:
        if self._admitted:
            self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def request_started(self) -> None:
        """The handler has the headers: the body has a timeout of its own."""
        self._in_request = True
        self._disarm()

    def request_done(self) -> None:
        """The response is written: the next bytes start a new request."""
        self._in_request = False

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport is not None and not self._in_request:
            log.info("connection closed: request headers too slow", server=self.gate.name)
            self.transport.abort()


class ListenError(OSError):
    """A server cannot listen on its address: ``problem`` names the setting to change."""

    def __init__(self, section: str, host: str, port: int, cause: OSError) -> None:
        code = cause.errno
        name = "port"
        if code == errno.EADDRINUSE:
            advice = "address already in use; choose another port or stop what listens there"
        elif code == errno.EACCES:
            advice = "permission denied; a port from 1024 up needs no privilege"
        elif code == errno.EADDRNOTAVAIL or isinstance(cause, socket.gaierror):
            name = "host"
            advice = "not an address of this machine; use one of its addresses (0.0.0.0 for all)"
        else:
            advice = cause.strerror or str(cause)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        setting = f"{section}.{name} ({env_name((section, name))})"
        self.problem = f"{setting}: cannot listen on {address}: {advice}"
        super().__init__(code, self.problem)


class _ProtocolLog(logging.Logger):
    """aiohttp's logger for one server: a request its parser refused becomes one bounded
    line and a count; anything else goes on to aiohttp's own logger, traceback and all."""

    def __init__(self, server: str) -> None:
        super().__init__(f"aiohttp.server.{server}")
        self.parent = logging.getLogger("aiohttp.server")
        self.server = server
        self.on_bad_request: Callable[[int], None] | None = None

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            log.info(
                "bad request refused",
                server=self.server,
                status=exc.code,
                error=str(exc.message)[:200],
            )
            if self.on_bad_request is not None:
                self.on_bad_request(exc.code)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


# Connections the running servers of this process may hold together.
_claimed = 0


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class GuardedServer:
    """An aiohttp application served with the limits above, in the running event loop;
    ``name`` is also its settings section (health, forward), named when it cannot listen."""

    def __init__(
        self,
        name: str,
        routes: list[tuple[str, Handler]],
        host: str,
        port: int,
        *,
        max_connections: int,
        header_timeout: float,
        idle_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self._port = port
        self._ssl = ssl_context
        self._gate = _Gate(name, max_connections, header_timeout)
        self._idle_timeout = idle_timeout
        self._app = web.Application(middlewares=[self._track])
        for path, handler in routes:
            self._app.router.add_route("*", path, handler)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._claim = 0
        self._protocol_log = _ProtocolLog(name)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def listening(self) -> bool:
        """True while the server accepts connections."""
        return self._server is not None and self._server.is_serving()

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return self._gate.open

    def on_refused(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` for each connection refused at the cap (a metric)."""
        self._gate.on_refused = callback

    def on_bad_request(self, callback: Callable[[int], None]) -> None:
        """Call ``callback`` with the status of each request aiohttp's parser refused."""
        self._protocol_log.on_bad_request = callback

    async def start(self) -> None:
        """Bind and serve; ListenError when the address cannot be used."""
        runner = web.AppRunner(
            self._app,
            access_log=None,
            keepalive_timeout=self._idle_timeout,
            # After an answer sent with the body unread: how long the client may go on
            # sending it (so it can read the answer) before the connection is closed.
            lingering_time=2.0,
            handle_signals=False,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
            auto_decompress=False,
            logger=self._protocol_log,
        )
        await runner.setup()
        self._claim_descriptors()
        factory = runner.server
        assert factory is not None  # nosec B101  # setup() just above made it: narrows the type
        gate = self._gate
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Guard(factory(), gate),
                self.host,
                self._port,
                ssl=self._ssl,
                # Also the most connections asyncio accepts at once, each a descriptor.
                backlog=min(512, gate.cap),
            )
        except OSError as exc:
            self._release_descriptors()
            await runner.cleanup()
            raise ListenError(self.name, self.host, self._port, exc) from exc
        self._runner = runner

    def _claim_descriptors(self) -> None:
        """Lower the cap to what the open-file limit leaves, after the descriptors open now,
        a reserve, and the caps of the other servers of this process."""
        global _claimed
        gate = self._gate
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            # A soft limit below what the cap needs is raised as far as the hard limit allows.
            need = _open_descriptors() + FD_RESERVE + _claimed + 2 * gate.cap
            if soft < need and (hard == resource.RLIM_INFINITY or soft < hard):
                raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                    soft = raised
                except (OSError, ValueError):
                    pass
            # Each connection admitted, and as many again accepted in one burst before the
            # cap can turn them away (asyncio accepts up to the backlog at once).
            room = max(1, (soft - _open_descriptors() - FD_RESERVE - _claimed) // 2)
            if gate.cap > room:
                log.warning(
                    "connection cap lowered to fit the open-file limit",
                    server=gate.name,
                    configured=gate.cap,
                    cap=room,
                    open_file_limit=soft,
                )
                gate.cap = room
        self._claim = 2 * gate.cap
        _claimed += self._claim

    def _release_descriptors(self) -> None:
        global _claimed
        _claimed -= self._claim
        self._claim = 0

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish, close every connection."""
        self._release_descriptors()
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = self._gate.guards.get(request.protocol)
        if guard is not None:
            guard.request_started()
        try:
            return await handler(request)
        finally:
            if guard is not None:
                guard.request_done()
