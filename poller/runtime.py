"""The components one process runs with, opened and closed together: the spool and its
journal, the sink, the Infobip client, the flusher, the sources the settings ask for, and the
scheduler their drains run on; shared by the daemon and burst mode."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from poller import __version__, metrics
from poller.bootstrap import Bootstrapper
from poller.coordination import Registry, ReplicaState
from poller.env import env_name
from poller.flusher import Flusher
from poller.infobip import InfobipClient
from poller.journal import Journal, JournalError
from poller.settings import Settings
from poller.sink import Sink, SinkConfigError, SinkError
from poller.sink.factory import open_budget, open_registry, open_sink
from poller.sources import Source
from poller.sources.forward import ForwardReceiver
from poller.sources.pull import PullSource, salvage
from poller.spool import Spool, SpoolError
from poller.stop import Stop

log = structlog.get_logger(__name__)

# Named when the spool cannot be opened: the setting that gives its file.
SPOOL_SETTING = env_name(("spool", "path"))

# Seconds of a stop's grace period kept, after the sources settled, for the final flush.
FLUSH_RESERVE = 3.0
# Seconds kept, after the final flush, for closing everything.
CLOSE_RESERVE = 1.0


def build_sources(
    settings: Settings,
    *,
    client: InfobipClient,
    spool: Spool,
    journal: Journal,
    flusher: Flusher,
    stop: Stop,
    scheduler: AsyncIOScheduler,
) -> list[Source]:
    """The sources the settings ask for: the pull source when anything is pulled, the
    forward receiver when applications are forwarded."""
    sources: list[Source] = []
    if settings.pulls:
        sources.append(
            PullSource(
                client,
                spool,
                journal,
                flusher,
                stop,
                pull_limit=settings.infobip.pull_limit,
                max_pulls=settings.schedule.max_pulls_per_cycle,
                in_flight=settings.infobip.pulls_in_flight,
                schedule=settings.schedule,
                scheduler=scheduler,
                max_poll_age=settings.max_poll_age(),
            )
        )
    if settings.forward.applications:
        sources.append(ForwardReceiver(settings.forward, spool, flusher, stop))
    return sources


@dataclass
class Runtime:
    """The components one process runs with; opened together, closed together."""

    settings: Settings
    stop: Stop
    spool: Spool
    sink: Sink
    client: InfobipClient
    flusher: Flusher
    sources: list[Source]
    scheduler: AsyncIOScheduler
    bootstrapper: Bootstrapper
    registry: Registry
    sink_server: str | None = None
    # Pollers of the account seen alive at the last heartbeat (this one included), shared
    # with the request budget (its share of the rate while Redis is unreachable).
    alive: list[int] = field(default_factory=lambda: [1])
    started: float = field(default_factory=time.time)
    _stranded: set[str] = field(default_factory=set)
    _flushing: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: Settings, stop: Stop | None = None) -> Runtime:
        """Open the spool (fails on an unusable one) and spool what its journal holds from
        an earlier run; then the sink and the client. ``stop``: the process' stop (a new one
        with the grace period of the settings when not given)."""
        stop = stop or Stop(settings.schedule.grace_period)
        spool = await asyncio.to_thread(
            Spool.open,
            settings.spool.path,
            max_rows=settings.spool.max_rows,
            max_bytes=settings.spool.max_bytes,
        )
        try:
            journal = Journal.beside(spool.path)
            await asyncio.to_thread(salvage, spool, journal)
            sink = open_sink(settings, spool.instance_id)
            alive = [1]  # the registry's view, for the budget's share while Redis is away
            client = InfobipClient(
                settings.infobip,
                on_retry=_count_retry,
                stop=stop,
                on_throttled=_count_throttled,
                budget=open_budget(settings, sink, lambda: alive[0]),
                on_wait=metrics.INFOBIP_BUDGET_WAIT.inc,
            )
        except JournalError as exc:
            spool.close()
            raise SpoolError(str(exc)) from exc
        except BaseException:
            spool.close()
            raise
        flusher = Flusher(spool, sink, stop)
        scheduler = AsyncIOScheduler(timezone="UTC")
        sources = build_sources(
            settings,
            client=client,
            spool=spool,
            journal=journal,
            flusher=flusher,
            stop=stop,
            scheduler=scheduler,
        )
        bootstrapper = Bootstrapper(settings, client, stop)
        registry = open_registry(settings, sink)
        runtime = cls(
            settings,
            stop,
            spool,
            sink,
            client,
            flusher,
            sources,
            scheduler,
            bootstrapper,
            registry,
            alive=alive,
        )
        metrics.set_info(__version__, spool.instance_id)
        metrics.set_applications([*settings.infobip.applications, *settings.forward.applications])
        try:
            runtime.sink_server = await sink.connect()
        except SinkConfigError:
            await runtime.close()
            raise
        except SinkError as exc:
            log.warning("sink not reachable at start; messages wait in the spool", error=str(exc))
        return runtime

    @classmethod
    async def open_or_report(cls, settings: Settings, stop: Stop) -> Runtime | None:
        """`open`, or None after one clear log line when the spool or the sink cannot be used."""
        try:
            return await cls.open(settings, stop)
        except SpoolError as exc:
            log.error("cannot open the spool", error=str(exc), setting=SPOOL_SETTING)
        except SinkConfigError as exc:
            log.error("the sink cannot honour the settings", error=str(exc))
        return None

    @property
    def pull(self) -> PullSource | None:
        """The pull source, when the settings pull (burst mode drives it by hand)."""
        return next((s for s in self.sources if isinstance(s, PullSource)), None)

    @property
    def receiver(self) -> ForwardReceiver | None:
        """The forward receiver, when applications are forwarded."""
        return next((s for s in self.sources if isinstance(s, ForwardReceiver)), None)

    @property
    def abandoned(self) -> int:
        """Messages a stop made the sources give up on (they are in the log only)."""
        return sum(source.abandoned for source in self.sources)

    def replica_state(self) -> ReplicaState:
        """What the replica registry holds of this poller."""
        stats = self.spool.stats()
        return ReplicaState(
            instance=self.spool.instance_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            spool=str(self.spool.path),
            rows=stats.rows,
            oldest_age_s=stats.oldest_age_s,
            sources=[source.name for source in self.sources],
            started=self.started,
            interval=self.settings.health.heartbeat_interval,
        )

    async def beat(self) -> None:
        """Renew this poller in the replica registry; count and name the stranded ones."""
        try:
            now, replicas = await self.registry.beat(self.replica_state())
        except SinkError as exc:
            log.debug("replica heartbeat failed; the next one tries again", error=str(exc))
            return
        alive = [r for r in replicas if r.alive(now)]
        stranded = [r for r in replicas if r.stranded(now)]
        self.alive[0] = max(1, len(alive))
        metrics.REPLICAS.labels(state="alive").set(len(alive))
        metrics.REPLICAS.labels(state="stranded").set(len(stranded))
        metrics.REPLICAS.labels(state="gone").set(len(replicas) - len(alive) - len(stranded))
        metrics.REPLICAS_STRANDED_ROWS.set(sum(r.rows for r in stranded))
        for replica in stranded:
            if replica.instance not in self._stranded:
                log.warning(
                    "a poller stopped beating while its spool holds rows: start a poller on"
                    " that spool to deliver them",
                    instance=replica.instance,
                    host=replica.host,
                    spool=replica.spool,
                    rows=replica.rows,
                    last_heartbeat_s_ago=round(now - replica.heartbeat),
                )
        self._stranded = {r.instance for r in stranded}

    async def count_dead_letters(self) -> None:
        """The dead-letter streams of the configured applications (and of bodies with no
        application) as metrics: their length, and the totals `poller dead` keeps beside
        them in Redis (a command that runs and exits has no metrics of its own to scrape)."""
        apps = dict.fromkeys(
            [*self.settings.infobip.applications, *self.settings.forward.applications]
        )
        try:
            streams = await self.sink.dead_letters().dead_streams([*apps, ""])
        except SinkError as exc:
            log.debug(
                "dead-letter streams not read; the next heartbeat tries again", error=str(exc)
            )
            return
        for stream in streams:
            app = metrics.app_label(stream.app or None)
            metrics.DEAD_LETTERS.labels(app=app).set(stream.length)
            metrics.DEAD_LETTERS_REDRIVEN.labels(app=app).set(stream.redriven)
            metrics.DEAD_LETTERS_PURGED.labels(app=app).set(stream.purged)

    async def leave(self) -> None:
        """Tell the registry this poller stops (its entry stays while its spool has rows)."""
        with contextlib.suppress(SinkError):
            await self.registry.leave(self.replica_state())

    def start_flushing(self) -> None:
        """Start the flusher (it begins with what a previous run left in the spool)."""
        stats = self.spool.stats()
        if stats.rows or stats.quarantine_pending:
            log.info(
                "flushing what the spool holds from before",
                rows=stats.rows,
                quarantined=stats.quarantine_pending,
            )
        self._flushing = asyncio.create_task(self.flusher.run(), name="flusher")

    async def finish(self) -> bool:
        """After a stop was asked for: let the sources settle (pulls in flight spooled,
        forwarded requests answered), end the flusher, then flush what is left, all by the
        stop deadline. True when the spool is empty."""
        for source in self.sources:
            await source.settle(self.stop.budget(FLUSH_RESERVE))
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._flushing is not None:
            _done, late = await asyncio.wait({self._flushing}, timeout=self.stop.remaining())
            for task in late:
                task.cancel()
            self._flushing = None
        try:
            async with asyncio.timeout(self.stop.budget(CLOSE_RESERVE)):
                await self.flusher.flush(retry_parked=True)
        except (SinkError, SpoolError, TimeoutError) as exc:
            log.warning(
                "final flush incomplete; the spool keeps the rest for the next start",
                error=str(exc) or type(exc).__name__,
                spool_rows=self.spool.stats().rows,
            )
        stats = self.spool.stats()
        return not stats.rows and not stats.quarantine_pending

    async def close(self) -> None:
        """Close everything; safe to call once at the end."""
        if self._flushing is not None:
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flushing
            self._flushing = None
        for source in self.sources:
            await source.settle(self.stop.budget(CLOSE_RESERVE))
            with contextlib.suppress(Exception):
                await source.close()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        with contextlib.suppress(Exception):
            await self.client.aclose()
        with contextlib.suppress(Exception):
            await self.sink.close()
        await asyncio.to_thread(self.spool.close)

    @staticmethod
    def freeze_heap() -> None:
        """Put what start made (modules, settings, clients) out of the cyclic collector's
        reach. A full collection walks every tracked object and holds the GIL, so the event
        loop, while it runs: with the start's ~160,000 objects in its walk, parsing a body of
        84,000 items set off pauses of 50-120 ms; with them frozen, 6-30 ms."""
        gc.collect()
        gc.freeze()

    def start_line(self) -> None:
        """One line at start: version, settings summary (no secrets), the sink's server."""
        s = self.settings
        stats = self.spool.stats()
        log.info(
            "poller starting",
            version=__version__,
            instance=self.spool.instance_id,
            infobip=s.infobip.base_url,
            auth=s.infobip.auth,
            applications=s.infobip.applications,
            forward_applications=s.forward.applications or None,
            sources=[source.name for source in self.sources],
            sink=self.sink.describe(),
            sink_server=self.sink_server,
            durability=s.redis.durability if s.sink.kind == "redis" else None,
            stream_key_template=s.redis.stream_key_template if s.sink.kind == "redis" else None,
            spool=str(s.spool.path),
            spool_rows=stats.rows,
            spool_directory_created=_shown(self.spool.created_directory),
            pulls_in_flight=s.infobip.pulls_in_flight,
            schedule=s.schedule.cron or f"every {s.schedule.interval:g}s ±{s.schedule.jitter:g}s",
        )

    def stop_line(self) -> None:
        """One line at stop: counts, per source."""
        log.info(
            "poller stopped",
            **{f"{source.name}_messages": source.counts.messages for source in self.sources},
            **{f"{source.name}_quarantined": source.counts.quarantined for source in self.sources},
            written=self.flusher.written,
            dead_lettered=self.flusher.dead_lettered,
            spool_rows=self.spool.stats().rows,
        )


def _shown(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _count_throttled(budget: str) -> None:
    metrics.INFOBIP_THROTTLED.labels(budget=budget).inc()


def _count_retry(reason: str) -> None:
    metrics.INFOBIP_RETRIES.labels(reason=reason).inc()
