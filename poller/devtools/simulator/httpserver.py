"""A small asyncio HTTP/1.1 server (stdlib only) for the simulator: it can misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_HEADER_BYTES = 64 << 10
IDLE_TIMEOUT = 75.0


@dataclass(frozen=True)
class Request:
    """A parsed request; header names are lower-cased, the query is percent-decoded."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    # True once the client closed or reset the connection while the handler was running.
    peer_gone: Callable[[], bool] = field(default=lambda: False, compare=False, repr=False)


@dataclass
class Response:
    """A response, plus hooks that let a test server misbehave on purpose."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    # Announce the full Content-Length, send only this many body bytes, then close.
    truncate_to: int | None = None
    # Send the status line and headers, then close the connection.
    drop_after_headers: bool = False
    # Send this many body bytes, wait ``pause`` seconds, then send the rest.
    pause_at: int | None = None
    pause: float = 0.0
    # Called once: True when the whole response was written and drained, False otherwise.
    on_sent: Callable[[bool], None] | None = None


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


class HttpServer:
    """Serves one handler over HTTP/1.1 with keep-alive and Content-Length bodies."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._stopping = False
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._port, limit=MAX_HEADER_BYTES
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8089."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # nosec B101  # a connection handler always runs in a task
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # asyncio's stream callback reports a cancelled connection task as an error,
            # so a cancellation that stop() asked for ends the task quietly.
            if not self._stopping:
                raise
        finally:
            self._connections.discard(task)
            if self._stopping:
                writer.transport.abort()
            writer.close()
            # A peer that stops reading would keep a graceful close waiting forever.
            try:
                async with asyncio.timeout(5.0):
                    await writer.wait_closed()
            except Exception:
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # peer closed between requests: the normal end of keep-alive
            except asyncio.LimitOverrunError:
                await _write(writer, _plain(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE), False)
                return
            try:
                request, keep_alive = await _parse(head, reader)
            except _BadRequest as exc:
                await _write(writer, _plain(exc.status), False)
                return
            try:
                response = await self._handler(request)
            except Exception:
                log.exception("http handler failed", method=request.method, path=request.path)
                response = _plain(HTTPStatus.INTERNAL_SERVER_ERROR)
            if not await _write(writer, response, keep_alive) or not keep_alive:
                return


async def _parse(head: bytes, reader: asyncio.StreamReader) -> tuple[Request, bool]:
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text[:-4].split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise _BadRequest(HTTPStatus.BAD_REQUEST) from None
    if version not in ("HTTP/1.1", "HTTP/1.0") or not method.isalpha():
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        # A space before the colon or a folded line is a smuggling vector: refuse it.
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise _BadRequest(HTTPStatus.BAD_REQUEST)
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "transfer-encoding" in headers:
        raise _BadRequest(HTTPStatus.LENGTH_REQUIRED)
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    request = Request(
        method.upper(),
        unquote(parts.path) or "/",
        query,
        headers,
        body,
        peer_gone=lambda: reader.at_eof() or reader.exception() is not None,
    )
    return request, keep_alive


def _plain(status: HTTPStatus) -> Response:
    return Response(int(status), status.phrase.encode(), content_type="text/plain; charset=utf-8")


def _head(response: Response, keep_alive: bool) -> tuple[bytes, bytes]:
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Unknown"
    no_body = response.status in (204, 304) or response.status < 200
    body = b"" if no_body else response.body
    lines = [f"HTTP/1.1 {response.status} {phrase}"]
    if not no_body:
        lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in response.headers.items())
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body


async def _write(writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> bool:
    """Write one response; False means the connection must be closed."""
    cut = response.drop_after_headers or response.truncate_to is not None
    head, body = _head(response, keep_alive)
    ok = False
    try:
        if response.drop_after_headers:
            writer.write(head)
        elif response.truncate_to is not None:
            writer.write(head + body[: max(0, response.truncate_to)])
        elif response.pause_at is not None:
            writer.write(head + body[: response.pause_at])
            await writer.drain()
            await asyncio.sleep(response.pause)
            writer.write(body[response.pause_at :])
        else:
            writer.write(head + body)
        await writer.drain()
        ok = not cut
    except ConnectionError:
        ok = False
    finally:
        # Runs on cancellation too, so a ledger never waits on a response that will not finish.
        if response.on_sent is not None:
            try:
                response.on_sent(ok)
            except Exception:
                log.exception("on_sent hook failed")
    return ok
