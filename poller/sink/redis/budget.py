"""The account's request budget kept in Redis, so every poller of an account shares it.

One Lua call per request reserves the next turn (``lua/budget.lua``: GCRA on the server's
clock), so N processes together stay within the rate whatever N; a 429's Retry-After pauses
them all. While Redis cannot be reached, each process falls back to a local bucket at its
share of the rate: the rate divided by the pollers of the account it last saw alive (the
replica registry), so that together they still stay within the budget if the view was right;
it tries Redis again every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from poller.infobip.ratelimit import TokenBucket
from poller.sink import SinkError
from poller.sink.redis.connection import REDIS_ERRORS, Connections
from poller.sink.redis.keys import account_key
from poller.sink.redis.lua import Script

log = structlog.get_logger(__name__)

_BUDGET = Script("budget.lua")
# What a call for a turn may end with besides a turn: the local bucket answers then.
_UNREACHABLE: tuple[type[BaseException], ...] = (*REDIS_ERRORS, SinkError, TimeoutError)
# Seconds a call to Redis for a turn may take before the local bucket answers instead.
CALL_TIMEOUT = 1.0
# Seconds between attempts to reach Redis again while the local bucket serves.
RETRY_EVERY = 5.0
# The budget key outlives its last use by this much (ms).
KEY_TTL_MS = 60_000


class SharedBudget:
    """A ``Budget`` every poller of one account shares through Redis."""

    def __init__(
        self,
        connections: Connections,
        account: str,
        rate: float,
        *,
        pollers: Callable[[], int] = lambda: 1,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._conn = connections
        self.key = account_key(account, "budget")
        self.rate = rate
        self._interval_ms = str(max(1, round(1000 / rate)))
        self._pollers = pollers
        self._local: TokenBucket | None = None
        self._down_until = 0.0  # time.monotonic() before which Redis is not asked
        self._paused_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        # One reservation at a time per process: a pull waiting for its turn holds no Redis
        # connection of its own (four pulls in flight would otherwise open four).
        self._asking = asyncio.Lock()

    @property
    def kind(self) -> str:
        """``shared`` while Redis hands out the turns, ``local`` while it cannot."""
        return "local" if self._local is not None else "shared"

    async def acquire(self) -> float:
        """Wait for this request's turn; the seconds waited."""
        started = time.monotonic()
        wait = await self._reserve()
        if wait is None:
            assert self._local is not None  # nosec B101  # _reserve set it: narrows the type
            await self._local.acquire()
        else:
            await asyncio.sleep(wait)
        hold = self._paused_until - time.monotonic()
        if hold > 0:
            # A 429 seen here after the turn was reserved: the pause is for every request.
            await asyncio.sleep(hold)
        return time.monotonic() - started

    async def _reserve(self) -> float | None:
        """Seconds until the turn Redis gave, or None when the local bucket serves."""
        if time.monotonic() < self._down_until:
            return None
        try:
            async with self._asking, asyncio.timeout(CALL_TIMEOUT):
                wait_ms = await _BUDGET(
                    self._conn.writer(), (self.key,), ("take", self._interval_ms, str(KEY_TTL_MS))
                )
        except _UNREACHABLE as exc:
            self._fall_back(exc)
            return None
        if self._local is not None:
            log.info("shared request budget reachable again", account_key=self.key)
            self._local = None
        return max(0, int(wait_ms)) / 1000

    def _fall_back(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_EVERY
        share = self.rate / max(1, self._pollers())
        if self._local is None or self._local.rate != share:
            if self._local is None:
                log.warning(
                    "shared request budget unreachable; this poller keeps to its share",
                    requests_per_second=round(share, 3),
                    error=self._conn.describe_error("budget", exc),
                )
            local = TokenBucket(share, burst=1.0)
            if self._local is not None:
                local.pause(self._local.paused_for)
            self._local = local

    def pause(self, seconds: float) -> None:
        """Every poller of the account waits ``seconds`` before its next request."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        if self._local is not None:
            self._local.pause(seconds)
        task = asyncio.create_task(self._pause_shared(seconds), name="budget-pause")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pause_shared(self, seconds: float) -> None:
        with contextlib.suppress(*_UNREACHABLE):
            async with asyncio.timeout(CALL_TIMEOUT):
                await _BUDGET(
                    self._conn.writer(),
                    (self.key,),
                    ("pause", str(int(seconds * 1000)), str(KEY_TTL_MS)),
                )


__all__ = ["SharedBudget"]
