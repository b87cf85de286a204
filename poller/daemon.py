"""The daemon's lifecycle: start, let the sources work, stop gracefully; and burst mode (`once`).

Start: open the runtime (spool, salvage, sink) -> start line -> health server -> flusher ->
the sources (the receiver listens before bootstrap points Infobip at it) -> bootstrap ->
scheduler (the pull drains, the retention trim) -> ready. Stop (SIGTERM/SIGINT, or a fatal
error): readiness turns 503, the sources settle within the grace period, the final flush,
close, exit 0 (1 after a fatal error or when a stop had to give messages up).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from apscheduler.triggers.interval import IntervalTrigger

from poller import systemd
from poller.health.readiness import Readiness
from poller.health.server import HealthServer
from poller.infobip import AuthError
from poller.runtime import Runtime
from poller.settings import Settings, SettingsError
from poller.sink import SinkError
from poller.sources.pull import DrainResult
from poller.stop import EarlySignals, Stop
from poller.web import ListenError

log = structlog.get_logger(__name__)

# Exit codes besides 0 (a clean stop) and 2 (bad settings, from the CLI): 1 when something
# failed or messages stayed behind; the shell's 128 + signal when burst mode was interrupted.
EXIT_FAILED = 1
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _install_signals(handler: Callable[[signal.Signals], None]) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)

    def remove() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    return remove


class Daemon:
    """`poller run`: start everything, then serve until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, early: EarlySignals | None = None) -> None:
        self.settings = settings
        self.stop = Stop(settings.schedule.grace_period)
        self._early = early
        self.health: HealthServer | None = None
        self.runtime: Runtime | None = None
        self._ready = False

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        """Begin the graceful stop (signal handler)."""
        if self.stop.request(sig.name if sig else None):
            log.info("stop requested", signal=sig.name if sig else None)

    async def run(self) -> int:
        """Run until stopped; 0 on a clean stop."""
        # Signals first: a SIGTERM while the sink is being reached must stop us gracefully too.
        remove_signals = _install_signals(self.request_stop)
        if self._early is not None:
            self._early.hand_over(self.stop)
        extender = asyncio.create_task(self._extend_start_timeout(), name="systemd-extend")
        try:
            if self.stop.requested:
                log.info("stop requested before the start", signal=self.stop.reason)
            rt = await Runtime.open_or_report(self.settings, self.stop)
            if rt is None:
                return EXIT_FAILED
            self.runtime = rt
            return await self._run(rt)
        finally:
            extender.cancel()
            remove_signals()

    async def _run(self, rt: Runtime) -> int:
        s = self.settings
        watchdog: asyncio.Task[None] | None = None
        retry: asyncio.Task[None] | None = None
        heartbeat = asyncio.create_task(self._heartbeat(rt), name="replica-heartbeat")
        try:
            rt.start_line()
            rt.freeze_heap()
            readiness = Readiness(
                stop=self.stop,
                spool=rt.spool,
                sink=rt.sink,
                sources=rt.sources,
                bootstrap=rt.bootstrapper,
            )
            if s.health.enabled:
                self.health = HealthServer(readiness, s.health.host, s.health.port)
                try:
                    await self.health.start()
                except ListenError as exc:
                    self.health = None
                    raise SettingsError([exc.problem]) from None
                log.info("health server listening", host=s.health.host, port=self.health.port)
            rt.start_flushing()
            if rt.pull is not None:
                rt.pull.on_drain.append(lambda result: self._status(rt, result))
            for source in rt.sources:
                # Before bootstrap points Infobip at the receiver; refused until then, and
                # Infobip retries. The pull drains wait for the scheduler.
                try:
                    await source.start()
                except ListenError as exc:  # a setting to change: exit 2, as for a bad one
                    raise SettingsError([exc.problem]) from None
                except OSError as exc:
                    log.error(f"{source.name} source cannot start", error=str(exc))
                    return EXIT_FAILED
            try:
                await self._until_stopped(self._bootstrap(rt))
            except AuthError as exc:
                log.error(
                    "infobip refused the credentials; stopping", error=str(exc), hint=exc.hint
                )
                return EXIT_FAILED
            if not self.stop.requested:
                retry = asyncio.create_task(rt.bootstrapper.retry(), name="bootstrap-retry")
                self._schedule_trim(rt)
                rt.scheduler.start()
                self._ready = True
                systemd.ready("polling" if s.pulls else "receiving")
                watchdog = self._start_watchdog()
                await self.stop.wait()
            return await self._shutdown(rt)
        finally:
            for task in (watchdog, retry, heartbeat):
                if task is not None:
                    task.cancel()
            await rt.leave()
            if self.health is not None:
                await self.health.stop()
            rt.stop_line()
            await rt.close()

    async def _heartbeat(self, rt: Runtime) -> None:
        """This poller in the account's replica registry, renewed until the stop; the
        dead-letter metrics read at the same pace."""
        while True:
            await rt.beat()
            await rt.count_dead_letters()
            if await self.stop.sleep(self.settings.health.heartbeat_interval):
                return

    async def _bootstrap(self, rt: Runtime) -> None:
        await rt.bootstrapper.run()

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

    def _schedule_trim(self, rt: Runtime) -> None:
        """The retention trim, when a retention is set."""
        r = self.settings.redis
        if not (r.retention_seconds or r.retention_entries):
            return
        rt.scheduler.add_job(
            self._trim,
            IntervalTrigger(seconds=r.retention_interval),
            args=(rt,),
            id="retention",
            name="retention trim",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )

    async def _trim(self, rt: Runtime) -> None:
        r = self.settings.redis
        try:
            removed = await rt.sink.trim_retention(r.retention_seconds, r.retention_entries)
        except SinkError as exc:
            log.warning("retention trim failed; the next one tries again", error=str(exc))
            return
        if removed:
            log.info("streams trimmed to their retention", removed=removed)

    def _status(self, rt: Runtime, result: DrainResult) -> None:
        stats = rt.spool.stats()
        pulled = rt.pull.counts.messages if rt.pull is not None else 0
        systemd.status(
            f"pulled {pulled}, written {rt.flusher.written}, spool {stats.rows} rows"
            + (", PAUSED: spool full" if result.backpressure else "")
            + (", sink failing" if rt.flusher.error else "")
        )

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

    async def _shutdown(self, rt: Runtime) -> int:
        # One deadline, taken when the stop was asked for: what start-up used of it is gone.
        systemd.stopping("finishing the work in flight")
        await rt.finish()
        if rt.abandoned:
            log.critical(
                "stopped with messages the spool never took; they are in the log above",
                messages=rt.abandoned,
            )
            return EXIT_FAILED
        return EXIT_FAILED if self.stop.failed else 0


async def run_daemon(settings: Settings, early: EarlySignals | None = None) -> int:
    """`poller run`; ``early``: the signals caught while the command started."""
    # Every check before the spool is opened: a refused start leaves no file behind.
    problems = settings.start_problems(bootstrap=settings.infobip.bootstrap)
    problems += settings.stop_problems()
    if problems:
        raise SettingsError(problems)
    return await Daemon(settings, early).run()


async def run_once(
    settings: Settings, *, bootstrap: bool = True, early: EarlySignals | None = None
) -> int:
    """`poller once`: drain the inbox into the sink; 0 only when the spool ends empty, 130 or
    143 when a signal cut the drain short."""
    problems = settings.start_problems(bootstrap=bootstrap and settings.infobip.bootstrap)
    if problems:
        raise SettingsError(problems)
    stop = Stop(settings.schedule.grace_period)
    interrupted: signal.Signals | None = None

    def request_stop(sig: signal.Signals) -> None:
        nonlocal interrupted
        if stop.request(sig.name):
            interrupted = sig
            log.info("stop requested", signal=sig.name)

    remove_signals = _install_signals(request_stop)
    if early is not None and early.received is not None:
        request_stop(early.received)
    rt = await Runtime.open_or_report(settings, stop)
    if rt is None:
        remove_signals()
        return EXIT_FAILED
    failed = False
    pending: int | None = None
    try:
        rt.start_line()
        await rt.beat()
        rt.start_flushing()
        if bootstrap and settings.infobip.bootstrap:
            reports = await rt.bootstrapper.once(settings.infobip.applications)
            failed = any(not r.ok for r in reports)
        pull = rt.pull
        while pull is not None and not stop.requested:
            result = await pull.drain()
            pending = result.pending_reported
            if result.pull_error:
                failed = True
                break
            if result.backpressure or not result.pending_reported:
                break
        # Done pulling: the same stop a signal gives ends the flusher and the last flush.
        stop.request("inbox drained")
        empty = await rt.finish()
        failed = failed or rt.abandoned > 0 or not empty
        stats = rt.spool.stats()
        if not empty:
            log.error(
                "messages remain in the spool; they will be flushed by the next run",
                spool_rows=stats.rows,
                quarantine_pending=stats.quarantine_pending,
            )
        counts = pull.counts if pull is not None else None
        log.info(
            "once interrupted" if interrupted else "once done",
            signal=interrupted.name if interrupted else None,
            pulled=counts.messages if counts else 0,
            written=rt.flusher.written,
            quarantined=counts.quarantined if counts else 0,
            spool_rows=stats.rows,
            still_at_infobip=pending if interrupted else None,
        )
        if interrupted is not None:
            return EXIT_SIGINT if interrupted == signal.SIGINT else EXIT_SIGTERM
        return EXIT_FAILED if failed else 0
    except AuthError as exc:
        log.error("infobip refused the credentials", error=str(exc), hint=exc.hint)
        return EXIT_FAILED
    finally:
        remove_signals()
        await rt.leave()
        await rt.close()
