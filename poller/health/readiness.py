"""Readiness: asked of the state's owners at each probe, never a copy pushed to it.

The checks: ``bootstrap`` (every application has its action), ``sink`` (the destination
takes writes), ``spool`` (below its cap, its file system has room), ``shutdown`` (the stop
object), and one per source under its name (``pull``: a recent good poll; ``forward``: the
receiver listens).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

from poller.sink import Sink
from poller.sources import Check, Source
from poller.spool import Spool
from poller.stop import Stop

# Seconds a sink probe's result is reused.
SINK_CHECK_EVERY = 1.0


class HasProblem(Protocol):
    """A stage that can say what keeps it from doing its job (None: nothing)."""

    def problem(self) -> str | None:
        """What is wrong now, in one line, or None."""
        ...


class Readiness:
    """Each check's state, read from its owner when asked."""

    def __init__(
        self,
        *,
        stop: Stop,
        spool: Spool,
        sink: Sink,
        sources: Sequence[Source],
        bootstrap: HasProblem,
        sink_timeout: float = 2.0,
        sink_every: float = SINK_CHECK_EVERY,
    ) -> None:
        self.stop = stop
        self.spool = spool
        self.sink = sink
        self.sources = sources
        self.bootstrap = bootstrap
        self.sink_timeout = sink_timeout
        self.sink_every = sink_every
        self._sink_result: tuple[float, Check] | None = None
        self._sink_probe: asyncio.Future[Check] | None = None

    async def evaluate(self) -> dict[str, Check]:
        """Each check's name -> (ok, one-line detail)."""
        bootstrap = self.bootstrap.problem()
        spool = self.spool.problem()
        checks: dict[str, Check] = {
            "bootstrap": (True, "done") if bootstrap is None else (False, bootstrap),
            "sink": await self._sink(),
            "spool": (True, "below its cap") if spool is None else (False, spool),
            "shutdown": (False, "shutting down") if self.stop.requested else (True, "running"),
        }
        for source in self.sources:
            checks[source.name] = source.check()
        return checks

    async def _sink(self) -> Check:
        """The sink probe, at most once a second: concurrent and repeated callers share it
        (300 probes at once must not become 300 connections to Redis)."""
        now = time.monotonic()
        if self._sink_result is not None and now - self._sink_result[0] < self.sink_every:
            return self._sink_result[1]
        if self._sink_probe is None or self._sink_probe.done():
            self._sink_probe = asyncio.ensure_future(self._probe_sink())
        result = await asyncio.shield(self._sink_probe)
        self._sink_result = (time.monotonic(), result)
        return result

    async def _probe_sink(self) -> Check:
        try:
            async with asyncio.timeout(self.sink_timeout):
                problem = await self.sink.problem()
        except TimeoutError:
            return False, f"{self.sink.describe()}: no answer within {self.sink_timeout:g} s"
        except Exception as exc:  # any failure of the probe is a failed check, not a crash
            return False, f"{self.sink.describe()}: {type(exc).__name__}: {exc}"
        return (True, "takes writes") if problem is None else (False, problem)


__all__ = ["Check", "HasProblem", "Readiness"]
