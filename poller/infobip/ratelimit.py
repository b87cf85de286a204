"""The request budget of an Infobip account: every call waits for its turn.

Infobip throttles per account (10 requests/s documented), not per process. ``Budget`` is what
the client needs; ``TokenBucket`` keeps one in this process. The Redis package's
``SharedBudget`` keeps one for every process of an account together, and falls back to a
``TokenBucket`` of its own while Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Budget(Protocol):
    """Requests per second for one account, shared by whoever holds this object."""

    @property
    def kind(self) -> str:
        """Where the budget is kept now: ``shared`` (every process) or ``local``."""
        ...

    async def acquire(self) -> float:
        """Wait for the next request's turn; the seconds waited."""
        ...

    def pause(self, seconds: float) -> None:
        """Hold every caller back ``seconds`` (a 429's Retry-After is for the whole account)."""
        ...


class TokenBucket:
    """`rate` requests per second, bursts up to `burst`; callers wait in arrival order."""

    kind = "local"

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()
        self._paused_until = 0.0

    async def acquire(self) -> float:
        """Wait for one token; return how long the caller waited."""
        started = time.monotonic()
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                hold = self._paused_until - now
                if hold > 0:
                    await asyncio.sleep(hold)
                    continue
                if self._tokens >= 1:
                    self._tokens -= 1
                    return time.monotonic() - started
                await asyncio.sleep((1 - self._tokens) / self.rate)

    def pause(self, seconds: float) -> None:
        """Hold every caller back (a 429's Retry-After applies to the whole account)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        self._tokens = 0.0

    @property
    def paused_for(self) -> float:
        """Seconds the bucket still holds callers back."""
        return max(0.0, self._paused_until - time.monotonic())
