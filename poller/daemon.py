"""The daemon's lifecycle: start, schedule pull drains, stop gracefully; and burst mode (`once`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from poller import systemd
from poller.health import HealthServer, Readiness
from poller.infobip import AuthError, InfobipError
from poller.runtime import Runtime
from poller.settings import Settings, SettingsError
from poller.sink import SinkError
from poller.sources.pull import DrainResult
from poller.stop import Stop

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
    """`poller run`: bootstrap, then one pull drain per tick until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = Stop(settings.schedule.grace_period)
        self._inflight: asyncio.Task[DrainResult] | None = None
        self._failed_apps: list[str] = [
            *settings.infobip.applications,
            *settings.forward.applications,
        ]
        self.readiness: Readiness | None = None
        self.health: HealthServer | None = None
        self.runtime: Runtime | None = None
        self._ready = False
        self._exit_code = 0

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self.stop.requested

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        """Begin the graceful stop (signal handler)."""
        if self.stop.request(sig.name if sig else None):
            log.info("stop requested", signal=sig.name if sig else None)
            if self.readiness is not None:
                self.readiness.stopping = True

    async def run(self) -> int:
        """Run until stopped; 0 on a clean stop."""
        # Signals first: a SIGTERM while Redis is being reached must stop us gracefully too.
        remove_signals = _install_signals(self.request_stop)
        extender = asyncio.create_task(self._extend_start_timeout(), name="systemd-extend")
        try:
            rt = await Runtime.open_or_report(self.settings, self.stop)
            if rt is None:
                return 1
            self.runtime = rt
            return await self._run(rt)
        finally:
            extender.cancel()
            remove_signals()

    async def _run(self, rt: Runtime) -> int:
        s = self.settings
        scheduler: AsyncIOScheduler | None = None
        watchdog: asyncio.Task[None] | None = None
        retry: asyncio.Task[None] | None = None
        try:
            rt.start_line()
            receiver = rt.receiver
            self.readiness = Readiness(
                max_poll_age=s.max_poll_age(),
                redis_check=rt.sink.ping,
                spool_problem=rt.source.problem,
                stopping=self.stop.requested,
                pulls=s.pulls,
                receiver_listening=None if receiver is None else lambda: receiver.listening,
            )
            rt.source.on_progress = self.readiness.poll_succeeded
            if s.health.enabled:
                self.health = HealthServer(self.readiness, s.health.host, s.health.port)
                await self.health.start()
                log.info("health server listening", host=s.health.host, port=self.health.port)
            rt.start_flushing()
            if receiver is not None:
                # Before bootstrap points Infobip at it; refused until then, Infobip retries.
                try:
                    await receiver.start()
                except OSError as exc:
                    log.error("forward receiver cannot listen", error=str(exc))
                    return 1
            try:
                await self._until_stopped(self._bootstrap(rt))
            except AuthError as exc:
                log.error(
                    "infobip refused the credentials; stopping", error=str(exc), hint=exc.hint
                )
                return 1
            if not self.stop.requested:
                retry = asyncio.create_task(self._retry_bootstrap(rt), name="bootstrap-retry")
                scheduler = self._scheduler(rt)
                if scheduler is not None:
                    scheduler.start()
                self._ready = True
                systemd.ready("polling" if s.pulls else "receiving")
                watchdog = self._start_watchdog()
                await self.stop.wait()
            return await self._shutdown(rt, scheduler)
        finally:
            for task in (watchdog, retry):
                if task is not None:
                    task.cancel()
            if scheduler is not None and scheduler.running:
                scheduler.shutdown(wait=False)
            if self.health is not None:
                await self.health.stop()
            rt.stop_line()
            await rt.close()

    async def _until_stopped(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a start-up step unless a stop comes first (then the step is cancelled)."""
        task = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(self.stop.wait())
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
        while not self._ready and not self.stop.requested:
            systemd.extend_timeout(60)
            await asyncio.sleep(20)

    async def _bootstrap(self, rt: Runtime) -> None:
        assert self.readiness is not None  # nosec B101  # set by run() before the cycle starts: narrows the type
        if not self.settings.infobip.bootstrap:
            log.info("bootstrap off (POLLER_INFOBIP__BOOTSTRAP=false): actions left as they are")
            self._failed_apps = []
            self.readiness.bootstrapped = True
            return
        if self.settings.pulls and not self.settings.infobip.applications:
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

    async def _retry_bootstrap(self, rt: Runtime) -> None:
        """Bootstrap the applications that failed, every BOOTSTRAP_RETRY s, until all are."""
        while self._failed_apps and not await self.stop.sleep(BOOTSTRAP_RETRY):
            try:
                await self._bootstrap(rt)
            except AuthError as exc:
                log.error("infobip refused the credentials", error=str(exc))

    def _scheduler(self, rt: Runtime) -> AsyncIOScheduler | None:
        """The drains (pulled applications) and the retention trim (when set), or None."""
        s = self.settings.schedule
        r = self.settings.redis
        scheduler = AsyncIOScheduler(timezone=UTC)
        if self.settings.pulls:
            trigger: Any
            if s.cron:
                trigger = CronTrigger.from_crontab(s.cron, timezone=UTC)
            else:
                trigger = IntervalTrigger(seconds=s.interval, jitter=s.jitter or None)
            scheduler.add_job(
                self._tick,
                trigger,
                args=(rt,),
                id="poll",
                name="pull drain",
                next_run_time=datetime.now(UTC),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        if r.retention_seconds or r.retention_entries:
            scheduler.add_job(
                self._trim,
                IntervalTrigger(seconds=r.retention_interval),
                args=(rt,),
                id="retention",
                name="retention trim",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        return scheduler if scheduler.get_jobs() else None

    async def _trim(self, rt: Runtime) -> None:
        r = self.settings.redis
        try:
            removed = await rt.sink.trim_retention(r.retention_seconds, r.retention_entries)
        except SinkError as exc:
            log.warning("retention trim failed; the next one tries again", error=str(exc))
            return
        if removed:
            log.info("streams trimmed to their retention", removed=removed)

    async def _tick(self, rt: Runtime) -> None:
        if self.stop.requested:
            return
        # APScheduler cancels its job tasks on shutdown; the drain runs in a task of our own
        # so that a stop waits for it instead of cutting it between pull and spool.
        self._inflight = asyncio.create_task(self._drain(rt), name="pull-drain")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._inflight)

    async def _drain(self, rt: Runtime) -> DrainResult:
        assert self.readiness is not None  # nosec B101  # set by run() before the cycle starts: narrows the type
        result = await rt.source.drain()
        rt.totals.add(result)
        self.readiness.spool_full = result.backpressure
        if result.auth_failed and self.readiness.last_poll_ok is None:
            # Never pulled with these credentials: nothing will work until they are fixed.
            log.error("infobip refused the credentials; stopping", error=result.pull_error)
            self._exit_code = 1
            self.request_stop()
        stats = rt.spool.stats()
        systemd.status(
            f"pulled {rt.totals.pulled}, written {rt.flusher.written}, spool {stats.rows} rows"
            + (", PAUSED: spool full" if result.backpressure else "")
            + (", redis failing" if rt.flusher.error else "")
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
        systemd.stopping("finishing the pulls in flight")
        if scheduler is not None:
            scheduler.pause()
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            log.info("waiting for the drain in flight", seconds_left=round(rt.stop.remaining(), 1))
            # A drain sends no new pull once stopping; its pulls in flight end in rt.finish.
            await asyncio.wait({inflight}, timeout=max(0.5, rt.stop.remaining() - 5.0))
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await rt.finish()
        if rt.source.abandoned:
            log.critical(
                "stopped with pulled messages the spool never took; they are in the log above",
                messages=rt.source.abandoned,
            )
            return 1
        return self._exit_code


async def run_daemon(settings: Settings) -> int:
    """`poller run`."""
    # Every check before the spool is opened: a refused start leaves no file behind.
    problems = settings.start_problems(bootstrap=settings.infobip.bootstrap)
    problems += settings.stop_problems()
    if problems:
        raise SettingsError(problems)
    return await Daemon(settings).run()


async def run_once(settings: Settings, *, bootstrap: bool = True) -> int:
    """`poller once`: drain the inbox into Redis; 0 only when the spool ends empty."""
    problems = settings.start_problems(bootstrap=bootstrap and settings.infobip.bootstrap)
    if problems:
        raise SettingsError(problems)
    stop = Stop(settings.schedule.grace_period)
    rt = await Runtime.open_or_report(settings, stop)
    if rt is None:
        return 1

    def request_stop(sig: signal.Signals) -> None:
        stop.request(sig.name)

    remove_signals = _install_signals(request_stop)
    failed = False
    try:
        rt.start_line()
        rt.start_flushing()
        if bootstrap and settings.infobip.bootstrap:
            reports = await rt.bootstrap(settings.infobip.applications)
            failed = any(not r.ok for r in reports)
        while not stop.requested:
            result = await rt.source.drain()
            rt.totals.add(result)
            if result.pull_error:
                failed = True
                break
            if result.backpressure or not result.pending_reported:
                break
        # Done pulling: the same stop a signal gives ends the flusher and the last flush.
        stop.request("inbox drained")
        empty = await rt.finish()
        failed = failed or rt.source.abandoned > 0 or not empty
        stats = rt.spool.stats()
        if not empty:
            log.error(
                "messages remain in the spool; they will be flushed by the next run",
                spool_rows=stats.rows,
                quarantine_pending=stats.quarantine_pending,
            )
        log.info(
            "once done",
            pulled=rt.totals.pulled,
            written=rt.flusher.written,
            quarantined=rt.totals.quarantined,
            spool_rows=stats.rows,
        )
        return 1 if failed else 0
    except AuthError as exc:
        log.error("infobip refused the credentials", error=str(exc), hint=exc.hint)
        return 1
    finally:
        remove_signals()
        await rt.close()
