"""Liveness, readiness and metrics over HTTP, and the client side used by `poller check`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from aiohttp import web

from poller import metrics, redact
from poller.web import GuardedServer

log = structlog.get_logger(__name__)

Check = tuple[bool, str]
CHECKS = ("bootstrap", "redis", "last_poll", "spool", "shutdown")
# Seconds a Redis probe's result is reused.
REDIS_CHECK_EVERY = 1.0
# The health port faces probes and scrapers: a few connections at once, prompt requests.
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0


@dataclass
class Readiness:
    """What the daemon knows about its own health; the daemon updates the fields."""

    max_poll_age: float
    redis_check: Callable[[], Awaitable[bool]]
    bootstrapped: bool = False
    stopping: bool = False
    spool_full: bool = False
    last_poll_ok: float | None = None  # time.monotonic() of the last good poll
    started: float = field(default_factory=time.monotonic)
    redis_timeout: float = 2.0
    # What keeps the spool from taking messages (a full or read-only disk), said whole.
    spool_problem: Callable[[], str | None] | None = None
    # Whether the daemon pulls (the last_poll check applies to pulled applications only).
    pulls: bool = True
    # The HTTP forward receiver's state when one runs: True while it accepts connections.
    receiver_listening: Callable[[], bool] | None = None
    redis_every: float = REDIS_CHECK_EVERY  # seconds a Redis probe's result is reused
    _redis_result: tuple[float, Check] | None = field(default=None, repr=False)
    _redis_probe: asyncio.Future[Check] | None = field(default=None, repr=False)

    def poll_succeeded(self) -> None:
        """Record a successful poll now."""
        self.last_poll_ok = time.monotonic()

    async def evaluate(self) -> dict[str, Check]:
        """Each check's name -> (ok, one-line detail)."""
        bootstrap = (True, "done") if self.bootstrapped else (False, "bootstrap has not finished")
        spool = (True, "below its cap")
        if self.spool_full:
            spool = (False, "spool is at its cap: pulling paused until Redis takes the backlog")
        problem = self.spool_problem() if self.spool_problem is not None else None
        if problem:
            spool = (False, problem)
        shutdown = (False, "shutting down") if self.stopping else (True, "running")
        checks = {
            "bootstrap": bootstrap,
            "redis": await self._redis(),
            "last_poll": self._last_poll() if self.pulls else (True, "no pulled applications"),
            "spool": spool,
            "shutdown": shutdown,
        }
        if self.receiver_listening is not None:
            listening = self.receiver_listening()
            checks["receiver"] = (True, "listening") if listening else (False, "not listening")
        return checks

    async def _redis(self) -> Check:
        """The Redis probe, at most once a second: concurrent and repeated callers share it
        (300 probes at once must not become 300 connections to Redis)."""
        now = time.monotonic()
        if self._redis_result is not None and now - self._redis_result[0] < self.redis_every:
            return self._redis_result[1]
        if self._redis_probe is None or self._redis_probe.done():
            self._redis_probe = asyncio.ensure_future(self._probe_redis())
        result = await asyncio.shield(self._redis_probe)
        self._redis_result = (time.monotonic(), result)
        return result

    async def _probe_redis(self) -> Check:
        try:
            async with asyncio.timeout(self.redis_timeout):
                ok = await self.redis_check()
        except TimeoutError:
            return False, f"no answer to PING within {self.redis_timeout:g} s"
        except Exception as exc:  # any failure of the probe is a failed check, not a crash
            return False, f"PING failed: {type(exc).__name__}: {exc}"
        return (True, "PING answered") if ok else (False, "PING failed")

    def _last_poll(self) -> Check:
        now = time.monotonic()
        limit = self.max_poll_age
        if self.last_poll_ok is None:
            waited = now - self.started
            if waited < limit:
                return True, f"no poll yet, started {waited:.0f} s ago (limit {limit:g} s)"
            return (
                False,
                f"no successful poll in the {waited:.0f} s since start (limit {limit:g} s)",
            )
        age = now - self.last_poll_ok
        if age <= limit:
            return True, f"last successful poll {age:.0f} s ago"
        return False, f"last successful poll {age:.0f} s ago (limit {limit:g} s)"


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


def local_url(host: str, port: int, path: str = "/readyz") -> str:
    """URL to reach our own health server: a wildcard bind address becomes loopback."""
    if host in ("", "0.0.0.0"):  # nosec B104  # maps a wildcard bind to loopback; binds nothing
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def failing(body: Any) -> list[str]:
    """`name: detail` for each failing check of a /readyz body."""
    checks = body.get("checks") if isinstance(body, dict) else None
    if not isinstance(checks, dict):
        return []
    return [
        f"{name}: {entry.get('detail', '')}"
        for name, entry in checks.items()
        if isinstance(entry, dict) and not entry.get("ok")
    ]


async def check(url: str, timeout: float) -> Check:  # noqa: ASYNC109 (httpx timeouts)
    """GET /readyz; (ready, one-line reason). A base URL gets /readyz appended."""
    if urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/readyz"
    try:
        # trust_env=False: an HTTP(S)_PROXY in the environment must not route a local probe.
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(url)
    except httpx.ConnectError:
        return False, f"health server not reachable at {url}"
    except httpx.TimeoutException:
        return False, f"health server at {url} did not answer within {timeout:g} s"
    except httpx.HTTPError as exc:
        return False, f"health server at {url}: {type(exc).__name__}: {exc}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200:
        return True, "ready"
    if response.status_code == 503:
        reasons = failing(body)
        return False, "not ready: " + ("; ".join(reasons) if reasons else "no reason given")
    return False, f"unexpected HTTP {response.status_code} from {url}"
