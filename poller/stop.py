"""One object owns "we are stopping": an event and a deadline, handed to every stage.

The daemon (or burst mode) creates it; the pull source, the flusher and the Infobip client
read it. A stop is asked for once (SIGTERM, SIGINT, a fatal error); from then on no stage
starts new work, and what is in flight must end by ``deadline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable


class Stop:
    """A graceful stop: asked for once, with a deadline ``grace`` seconds later."""

    def __init__(self, grace: float) -> None:
        if grace <= 0:
            raise ValueError("grace must be positive")
        self.grace = grace
        self.deadline: float | None = None  # time.monotonic() by which the stop must be done
        self.reason: str | None = None
        self._event = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        """True once a stop was asked for."""
        return self._event.is_set()

    def request(self, reason: str | None = None) -> bool:
        """Ask for the stop; True the first time (the deadline starts then), False after."""
        if self._event.is_set():
            return False
        self.reason = reason
        self.deadline = time.monotonic() + self.grace
        self._event.set()
        for callback in self._callbacks:
            callback()
        return True

    def on_request(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the stop is asked for (at once if it already was)."""
        self._callbacks.append(callback)
        if self.requested:
            callback()

    def remaining(self) -> float:
        """Seconds left before the deadline; the whole grace period while none was asked."""
        if self.deadline is None:
            return self.grace
        return max(0.0, self.deadline - time.monotonic())

    async def wait(self) -> None:
        """Return once a stop is asked for."""
        await self._event.wait()

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until a stop is asked for; True when the stop cut it short."""
        if self.requested:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._event.wait()
        return self.requested
