"""The components one process runs with, opened and closed together: spool and its journal,
sink, Infobip client, flusher and pull source; shared by the daemon, burst mode and status."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog

from poller import __version__, metrics
from poller.bootstrap import AppReport, bootstrap, wants_of
from poller.flusher import Flusher
from poller.infobip import InfobipClient
from poller.journal import Journal, JournalError
from poller.settings import Settings
from poller.sink import SinkConfigError, SinkError
from poller.sink.redis import RedisSink
from poller.sources.forward import ForwardReceiver
from poller.sources.pull import DrainResult, PullSource, salvage
from poller.spool import Spool, SpoolError
from poller.stop import Stop

log = structlog.get_logger(__name__)


def make_sink(settings: Settings, instance_id: str) -> RedisSink:
    """The Redis sink the settings describe."""
    r = settings.redis
    return RedisSink(
        url=r.url,
        password=r.password.get_secret_value() if r.password else None,
        mode=r.mode,
        sentinel_master=r.sentinel_master,
        sentinels=r.sentinels,
        key_template=r.stream_key_template,
        instance_id=instance_id,
        durability=r.durability,
        durability_replicas=r.durability_replicas,
        durability_local=r.durability_local,
        durability_timeout_ms=r.durability_timeout_ms,
        socket_timeout=r.socket_timeout,
        batch_size=r.batch_size,
        trim=r.trim,
        maxlen=r.maxlen,
        dedupe_window=settings.forward.dedupe_window,
        tls=r.tls_options(),
    )


@dataclass
class Totals:
    """Counts for the stop line."""

    drains: int = 0
    pulled: int = 0
    quarantined: int = 0

    def add(self, result: DrainResult) -> None:
        """Add one drain's counts."""
        self.drains += 1
        self.pulled += result.pulled
        self.quarantined += result.quarantined


@dataclass
class Runtime:
    """The components one process runs with; opened together, closed together."""

    settings: Settings
    stop: Stop
    spool: Spool
    sink: RedisSink
    client: InfobipClient
    flusher: Flusher
    source: PullSource
    receiver: ForwardReceiver | None = None
    totals: Totals = field(default_factory=Totals)
    redis_server: str | None = None
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
            sink = make_sink(settings, spool.instance_id)
            client = InfobipClient(
                settings.infobip,
                on_retry=_count_retry,
                stop=stop,
                on_throttled=metrics.INFOBIP_THROTTLED.inc,
            )
        except JournalError as exc:
            spool.close()
            raise SpoolError(str(exc)) from exc
        except BaseException:
            spool.close()
            raise
        flusher = Flusher(spool, sink, stop)
        source = PullSource(
            client,
            spool,
            journal,
            flusher,
            stop,
            pull_limit=settings.infobip.pull_limit,
            max_pulls=settings.schedule.max_pulls_per_cycle,
            in_flight=settings.infobip.pulls_in_flight,
        )
        receiver = None
        if settings.forward.applications:
            receiver = ForwardReceiver(settings.forward, spool, flusher, stop)
        runtime = cls(settings, stop, spool, sink, client, flusher, source, receiver)
        metrics.set_info(__version__, spool.instance_id)
        try:
            runtime.redis_server = await sink.connect()
        except SinkConfigError:
            await runtime.close()
            raise
        except SinkError as exc:
            log.warning("redis not reachable at start; messages wait in the spool", error=str(exc))
        return runtime

    @classmethod
    async def open_or_report(cls, settings: Settings, stop: Stop) -> Runtime | None:
        """`open`, or None after one clear log line when the spool or Redis cannot be used."""
        try:
            return await cls.open(settings, stop)
        except SpoolError as exc:
            log.error("cannot open the spool", error=str(exc))
        except SinkConfigError as exc:
            log.error("redis cannot honour the settings", error=str(exc))
        return None

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
        """After a stop was asked for: let the pulls in flight be spooled and the forwarded
        requests in flight be answered, end the flusher, then flush what is left, all by the
        stop deadline. True when the spool is empty."""
        await self.source.settle(max(0.5, self.stop.remaining() - 3.0))
        if self.receiver is not None:
            try:
                async with asyncio.timeout(max(0.5, self.stop.remaining() - 3.0)):
                    await self.receiver.close()
            except TimeoutError:
                log.warning("forwarded requests still in flight at the stop deadline")
        if self._flushing is not None:
            _done, late = await asyncio.wait({self._flushing}, timeout=self.stop.remaining())
            for task in late:
                task.cancel()
            self._flushing = None
        try:
            async with asyncio.timeout(max(0.5, self.stop.remaining() - 1.0)):
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
        await self.source.settle(max(0.5, self.stop.remaining() - 0.5))
        if self.receiver is not None:
            with contextlib.suppress(Exception):
                await self.receiver.close()
        with contextlib.suppress(Exception):
            await self.client.aclose()
        with contextlib.suppress(Exception):
            await self.sink.close()
        await asyncio.to_thread(self.spool.close)

    def start_line(self) -> None:
        """One line at start: version, settings summary (no secrets), Redis server."""
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
            redis=self.sink.describe(),
            redis_server=self.redis_server,
            durability=s.redis.durability,
            stream_key_template=s.redis.stream_key_template,
            spool=str(s.spool.path),
            spool_rows=stats.rows,
            pulls_in_flight=s.infobip.pulls_in_flight,
            schedule=s.schedule.cron or f"every {s.schedule.interval:g}s ±{s.schedule.jitter:g}s",
        )

    def stop_line(self) -> None:
        """One line at stop: counts."""
        log.info(
            "poller stopped",
            drains=self.totals.drains,
            pulled=self.totals.pulled,
            written=self.flusher.written,
            quarantined=self.totals.quarantined,
            spool_rows=self.spool.stats().rows,
        )

    async def bootstrap(self, apps: list[str]) -> list[AppReport]:
        """Ensure configurations and the action of each application's mode (PULL, or
        HTTP_FORWARD to the receiver); AuthError propagates."""
        forward = self.settings.forward
        if forward.public_url is None and set(apps) & set(forward.applications):
            log.warning(
                "forward applications not bootstrapped: POLLER_FORWARD__PUBLIC_URL is not set"
                " (create their HTTP_FORWARD action with `poller infobip action create`)",
                applications=forward.applications,
            )
            apps = [app for app in apps if app not in forward.applications]
        if not apps:
            return []
        wants, secrets = wants_of(self.settings)
        return await bootstrap(
            self.client,
            apps,
            callback_data=self.settings.infobip.callback_data,
            replace_http_forward=self.settings.infobip.replace_http_forward,
            wants=wants,
            secrets=secrets,
        )


def _count_retry(reason: str) -> None:
    metrics.INFOBIP_RETRIES.labels(reason=reason).inc()
