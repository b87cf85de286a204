"""One object owns "we are stopping": an event, a deadline and why, handed to every stage.

The daemon (or burst mode) creates it; the sources, the flusher, the Infobip client and
readiness read it. A stop is asked for once (SIGTERM, SIGINT, a fatal error); from then on no
stage starts new work, and what is in flight must end by ``deadline``. ``budget`` is the one
place that shares out what is left of the grace period between the steps of a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from types import FrameType

# The least a step of a stop is given, however late it comes: one more try, not none.
MIN_STEP = 0.5


class Stop:
    """A graceful stop: asked for once, with a deadline ``grace`` seconds later."""

    def __init__(self, grace: float) -> None:
        if grace <= 0:
            raise ValueError("grace must be positive")
        self.grace = grace
        self.deadline: float | None = None  # time.monotonic() by which the stop must be done
        self.reason: str | None = None
        # True when the stop comes from a failure (the process then exits non-zero).
        self.failed = False
        self._event = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        """True once a stop was asked for."""
        return self._event.is_set()

    def request(self, reason: str | None = None, *, failed: bool = False) -> bool:
        """Ask for the stop; True the first time (the deadline starts then), False after.
        ``failed``: the stop comes from an error that nothing can get past (refused
        credentials), not from a signal or the end of the work."""
        if self._event.is_set():
            return False
        self.reason = reason
        self.failed = failed
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

    def budget(self, reserve: float = 0.0) -> float:
        """Seconds a step of the stop may take so that ``reserve`` seconds stay for the steps
        after it (at least ``MIN_STEP``)."""
        return max(MIN_STEP, self.remaining() - reserve)

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


class EarlySignals:
    """SIGTERM and SIGINT caught from the first moment the command runs until the event loop
    takes them over: without it, a signal during start-up (imports, reading the settings)
    would end the process at once, with no log line and exit code 143. The first signal
    caught becomes the stop's reason (``hand_over``)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous = {sig: signal.signal(sig, self._catch) for sig in self.SIGNALS}

    def _catch(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    def hand_over(self, stop: Stop) -> Stop:
        """Give ``stop`` the signal caught so far, if any (the loop's handlers take the next)."""
        if self.received is not None:
            stop.request(self.received.name)
        return stop

    def restore(self) -> None:
        """Put the handlers back as they were."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
