"""Liveness, readiness and metrics over HTTP (aiohttp, in the daemon's event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import structlog
from aiohttp import web

from poller import metrics, redact
from poller.health.readiness import Check, Readiness
from poller.web import GuardedServer

log = structlog.get_logger(__name__)

# The health port faces probes and scrapers: a few connections at once, prompt requests.
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0


class HealthServer:
    """Serves /livez, /readyz and /metrics from the daemon's own event loop."""

    def __init__(
        self,
        readiness: Readiness,
        host: str,
        port: int,
        *,
        block_threshold: float = 10.0,
        block_window: float = 30.0,
        heartbeat: float = 0.5,
    ) -> None:
        self.readiness = readiness
        self._server = GuardedServer(
            "health",
            [("/{path:.*}", self._handle)],
            host,
            port,
            max_connections=MAX_CONNECTIONS,
            header_timeout=REQUEST_TIMEOUT,
            idle_timeout=IDLE_TIMEOUT,
        )
        self._block_threshold = block_threshold
        self._block_window = block_window
        self._heartbeat_interval = heartbeat
        self._heartbeat: asyncio.Task[None] | None = None
        self._last_block: tuple[float, float] | None = None  # (monotonic time seen, seconds)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.port

    async def start(self) -> None:
        """Bind and start the loop-lag heartbeat."""
        await self._server.start()
        self._heartbeat = asyncio.create_task(self._watch_loop(), name="health-heartbeat")

    async def stop(self) -> None:
        """Stop serving."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        await self._server.close()

    def liveness(self) -> Check:
        """(ok, detail): fails for block_window seconds after the loop was seen blocked."""
        if self._last_block is not None:
            seen, seconds = self._last_block
            ago = time.monotonic() - seen
            if ago < self._block_window:
                return False, f"event loop was blocked for {seconds:.1f} s, {ago:.0f} s ago"
        return True, "alive"

    async def _watch_loop(self) -> None:
        # A sleep that wakes late means something held the loop: sync I/O, a CPU-bound call.
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self._heartbeat_interval)
            lag = loop.time() - before - self._heartbeat_interval
            if lag > self._block_threshold:
                self._last_block = (time.monotonic(), lag)
                log.warning("event loop was blocked", seconds=round(lag, 3))

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _json(405, {"status": "method not allowed"}, {"Allow": "GET"})
        if request.content_length or "Transfer-Encoding" in request.headers:
            # A probe sends no body; one that does is not read (nor waited for).
            return _json(400, {"status": "a GET takes no body"}, close=True)
        path = request.path.rstrip("/") or "/"
        if path == "/livez":
            ok, detail = self.liveness()
            live = {"status": "ok" if ok else "fail", "detail": redact.text(detail)}
            return _json(200 if ok else 503, live)
        if path == "/readyz":
            checks = await self.readiness.evaluate()
            ready = all(ok for ok, _ in checks.values())
            body = {
                "status": "ok" if ready else "fail",
                "checks": {
                    name: {"ok": ok, "detail": redact.text(detail)}
                    for name, (ok, detail) in checks.items()
                },
            }
            return _json(200 if ready else 503, body)
        if path == "/metrics":
            payload, content_type = metrics.render()
            response = web.Response(status=200, body=payload)
            response.headers["Content-Type"] = content_type
            return response
        return _json(404, {"status": "not found", "paths": ["/livez", "/readyz", "/metrics"]})


def _json(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None, *, close: bool = False
) -> web.Response:
    response = web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )
    if close:
        response.force_close()
    return response
