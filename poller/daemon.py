"""The daemon's lifecycle: start, schedule poll cycles, stop gracefully; and burst mode (`once`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from poller import systemd
from poller.cycle import CycleResult
from poller.health import HealthServer, Readiness
from poller.infobip import AuthError, InfobipError
from poller.runtime import Runtime
from poller.settings import Settings, SettingsError
from poller.sink import SinkError
from poller.spool import SpoolError

log = structlog.get_logger(__name__)

# Seconds between attempts to bootstrap applications that failed.
BOOTSTRAP_RETRY = 60.0


def _install_signals(handler: Callable[[signal.Signals], None]) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)

    def remove() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    return remove


class Daemon:
    """`poller run`: bootstrap, then one poll cycle per tick until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()
        self._inflight: asyncio.Task[CycleResult] | None = None
        self._failed_apps: list[str] = list(settings.infobip.applications)
        self._last_bootstrap = 0.0
        self.readiness: Readiness | None = None
        self.health: HealthServer | None = None
        self.runtime: Runtime | None = None
        self._ready = False
        self._exit_code = 0
        self._stop_deadline: float | None = None

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        """Begin the graceful stop (signal handler)."""
        if not self._stop.is_set():
            log.info("stop requested", signal=sig.name if sig else None)
            self._stop_deadline = time.monotonic() + self.settings.schedule.grace_period
            if self.readiness is not None:
                self.readiness.stopping = True
            if self.runtime is not None:
                self.runtime.begin_stop(self._stop_deadline)
            self._stop.set()

    async def run(self) -> int:
        """Run until stopped; 0 on a clean stop."""
        s = self.settings
        # Signals first: a SIGTERM while Redis is being reached must stop us gracefully too.
        remove_signals = _install_signals(self.request_stop)
        extender = asyncio.create_task(self._extend_start_timeout(), name="systemd-extend")
        try:
            rt = await Runtime.open_or_report(s)
            if rt is None:
                return 1
            self.runtime = rt
            if self._stop_deadline is not None:
                rt.begin_stop(self._stop_deadline)
            return await self._run(rt)
        finally:
            extender.cancel()
            remove_signals()

    async def _run(self, rt: Runtime) -> int:
        s = self.settings
        scheduler: AsyncIOScheduler | None = None
        watchdog: asyncio.Task[None] | None = None
        try:
            rt.start_line()
            self.readiness = Readiness(
                max_poll_age=s.max_poll_age(),
                redis_check=rt.sink.ping,
                spool_problem=lambda: rt.cycle.spool_error,
                stopping=self._stop.is_set(),
            )
            rt.cycle.on_progress = self.readiness.poll_succeeded
            if s.health.enabled:
                self.health = HealthServer(self.readiness, s.health.host, s.health.port)
                await self.health.start()
                log.info("health server listening", host=s.health.host, port=self.health.port)
            # The flush itself runs on if a stop comes (the final flush waits for it).
            await self._until_stopped(rt.flush_leftovers())
            try:
                await self._until_stopped(self._bootstrap(rt))
            except AuthError as exc:
                log.error("infobip refused the credentials; stopping", error=str(exc))
                return 1
            if not self._stop.is_set():
                scheduler = self._scheduler(rt)
                scheduler.start()
                self._ready = True
                systemd.ready("polling")
                watchdog = self._start_watchdog()
                await self._stop.wait()
            return await self._shutdown(rt, scheduler)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if scheduler is not None and scheduler.running:
                scheduler.shutdown(wait=False)
            if self.health is not None:
                await self.health.stop()
            rows = rt.spool.stats().rows
            await rt.close()
            log.info(
                "poller stopped",
                cycles=rt.totals.cycles,
                pulled=rt.totals.pulled,
                written=rt.totals.written,
                quarantined=rt.totals.quarantined,
                spool_rows=rows,
            )

    async def _until_stopped(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a start-up step unless a stop comes first (then the step is cancelled)."""
        task = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        task.result()

    async def _extend_start_timeout(self) -> None:
        # A big spool left from before, or a slow bootstrap, must not make systemd kill a start
        # that is progressing (TimeoutStartSec). Ends when the daemon is ready or stopping.
        while not self._ready and not self._stop.is_set():
            systemd.extend_timeout(60)
            await asyncio.sleep(20)

    async def _bootstrap(self, rt: Runtime) -> None:
        assert self.readiness is not None
        self._last_bootstrap = time.monotonic()
        if not self.settings.infobip.applications:
            log.warning("no applications configured; pulling whatever reaches the inbox")
        try:
            reports = await rt.bootstrap(self._failed_apps)
        except AuthError:
            raise
        except InfobipError as exc:
            log.warning("bootstrap failed; will retry", error=str(exc))
            return
        self._failed_apps = [r.app for r in reports if not r.ok]
        self.readiness.bootstrapped = not self._failed_apps

    def _scheduler(self, rt: Runtime) -> AsyncIOScheduler:
        s = self.settings.schedule
        trigger: Any
        if s.cron:
            trigger = CronTrigger.from_crontab(s.cron, timezone=UTC)
        else:
            trigger = IntervalTrigger(seconds=s.interval, jitter=s.jitter or None)
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self._tick,
            trigger,
            args=(rt,),
            id="poll",
            name="poll cycle",
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        return scheduler

    async def _tick(self, rt: Runtime) -> None:
        if self._stop.is_set():
            return
        # APScheduler cancels its job tasks on shutdown; the cycle runs in a task of our own
        # so that a stop waits for it instead of cutting it between pull and spool.
        self._inflight = asyncio.create_task(self._cycle(rt), name="poll-cycle")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._inflight)

    async def _cycle(self, rt: Runtime) -> CycleResult:
        assert self.readiness is not None
        if self._failed_apps and time.monotonic() - self._last_bootstrap > BOOTSTRAP_RETRY:
            try:
                await self._bootstrap(rt)
            except AuthError as exc:
                log.error("infobip refused the credentials", error=str(exc))
        result = await rt.cycle.run()
        rt.totals.add(result)
        self.readiness.spool_full = result.backpressure
        if result.auth_failed and self.readiness.last_poll_ok is None:
            # Never pulled with these credentials: nothing will work until they are fixed.
            log.error("infobip refused the credentials; stopping", error=result.pull_error)
            self._exit_code = 1
            self.request_stop()
        stats = rt.spool.stats()
        systemd.status(
            f"pulled {rt.totals.pulled}, written {rt.totals.written}, spool {stats.rows} rows"
            + (", PAUSED: spool full" if result.backpressure else "")
            + (", redis failing" if result.flush_error else "")
        )
        return result

    def _start_watchdog(self) -> asyncio.Task[None] | None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return None

        async def ping() -> None:
            while True:
                live = self.health.liveness()[0] if self.health else True
                if live:
                    systemd.watchdog()
                await asyncio.sleep(interval)  # already half of WatchdogSec

        return asyncio.create_task(ping(), name="systemd-watchdog")

    async def _shutdown(self, rt: Runtime, scheduler: AsyncIOScheduler | None) -> int:
        # One deadline, taken when the stop was asked for: what start-up used of it is gone.
        deadline = self._stop_deadline or time.monotonic() + self.settings.schedule.grace_period
        systemd.stopping("finishing the cycle in flight")
        if scheduler is not None:
            scheduler.pause()
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            log.info("waiting for the cycle in flight", seconds_left=round(rt.remaining(), 1))
            # Keep a few seconds of the grace period for the final flush.
            done, _ = await asyncio.wait({inflight}, timeout=max(0.5, rt.remaining() - 5.0))
            if not done:
                log.warning("cycle in flight did not finish within the grace period; cancelling")
                inflight.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await inflight
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        try:
            async with asyncio.timeout(max(0.5, deadline - time.monotonic() - 1.0)):
                await rt.cycle.flush()
        except (SinkError, SpoolError, TimeoutError) as exc:
            rows = rt.spool.stats().rows
            log.warning(
                "final flush incomplete; the spool keeps the rest for the next start",
                error=str(exc) or type(exc).__name__,
                spool_rows=rows,
            )
        if rt.cycle.abandoned:
            log.critical(
                "stopped with pulled messages the spool never took; they are in the log above",
                messages=rt.cycle.abandoned,
            )
            return 1
        return self._exit_code


async def run_daemon(settings: Settings) -> int:
    """`poller run`."""
    problems = settings.stop_problems()
    if problems:
        raise SettingsError(problems)
    return await Daemon(settings).run()


async def run_once(settings: Settings, *, bootstrap: bool = True) -> int:
    """`poller once`: drain the inbox into Redis; 0 only when the spool ends empty."""
    rt = await Runtime.open_or_report(settings)
    if rt is None:
        return 1
    stop = asyncio.Event()

    def request_stop(_sig: signal.Signals) -> None:
        stop.set()
        rt.begin_stop(time.monotonic() + settings.schedule.grace_period)

    remove_signals = _install_signals(request_stop)
    failed = False
    try:
        rt.start_line()
        await rt.flush_leftovers()
        if bootstrap:
            reports = await rt.bootstrap(settings.infobip.applications)
            failed = any(not r.ok for r in reports)
        while not stop.is_set():
            result = await rt.cycle.run()
            rt.totals.add(result)
            if result.pull_error:
                failed = True
                break
            if result.flush_error or result.backpressure:
                break
            if not result.pending_reported:
                break
        with contextlib.suppress(SinkError, SpoolError):
            await rt.cycle.flush()
        stats = rt.spool.stats()
        failed = failed or rt.cycle.abandoned > 0
        if stats.rows or stats.quarantine_pending:
            log.error(
                "messages remain in the spool; they will be flushed by the next run",
                spool_rows=stats.rows,
                quarantine_pending=stats.quarantine_pending,
            )
            failed = True
        log.info(
            "once done",
            pulled=rt.totals.pulled,
            written=rt.totals.written,
            quarantined=rt.totals.quarantined,
            spool_rows=stats.rows,
        )
        return 1 if failed else 0
    except AuthError as exc:
        log.error("infobip refused the credentials", error=str(exc))
        return 1
    finally:
        remove_signals()
        await rt.close()
