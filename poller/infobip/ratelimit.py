"""A token bucket shared by every call of one Infobip account."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """`rate` requests per second, bursts up to `burst`; callers wait in arrival order."""

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
