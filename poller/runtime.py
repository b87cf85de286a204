"""The components one process runs with (spool, sink, client, poll cycle), opened and closed
together; shared by the daemon, burst mode and `poller status`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import structlog

from poller import __version__, metrics
from poller.bootstrap import AppReport, bootstrap
from poller.cycle import CycleResult, PollCycle
from poller.infobip import InfobipClient
from poller.settings import Settings
from poller.sink import Sink, SinkConfigError, SinkError, redact_url
from poller.spool import Spool, SpoolError

log = structlog.get_logger(__name__)


def make_sink(settings: Settings, instance_id: str) -> Sink:
    """The Redis sink the settings describe."""
    r = settings.redis
    return Sink(
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
    )


@dataclass
class Totals:
    """Counts for the stop line."""

    cycles: int = 0
    pulled: int = 0
    written: int = 0
    quarantined: int = 0

    def add(self, result: CycleResult) -> None:
        """Add one cycle's counts."""
        self.cycles += 1
        self.pulled += result.pulled
        self.written += result.written
        self.quarantined += result.quarantined


@dataclass
class Runtime:
    """The components one process runs with; opened together, closed together."""

    settings: Settings
    spool: Spool
    sink: Sink
    client: InfobipClient
    cycle: PollCycle
    totals: Totals = field(default_factory=Totals)
    redis_server: str | None = None

    @classmethod
    async def open(cls, settings: Settings) -> Runtime:
        """Open the spool (fails on an unusable one), the sink and the client."""
        spool = await asyncio.to_thread(
            Spool.open,
            settings.spool.path,
            max_rows=settings.spool.max_rows,
            max_bytes=settings.spool.max_bytes,
        )
        try:
            sink = make_sink(settings, spool.instance_id)
            client = InfobipClient(settings.infobip, on_retry=_count_retry)
        except BaseException:
            spool.close()
            raise
        cycle = PollCycle(
            client,
            spool,
            sink,
            pull_limit=settings.infobip.pull_limit,
            max_pulls=settings.schedule.max_pulls_per_cycle,
        )
        runtime = cls(settings, spool, sink, client, cycle)
        metrics.set_info(__version__, spool.instance_id)
        try:
            runtime.redis_server = await sink.connect()
        except SinkConfigError:
            await runtime.close()
            raise
        except SinkError as exc:
            log.warning("redis not reachable at start; messages wait in the spool", error=str(exc))
        return runtime

    def begin_stop(self, deadline: float) -> None:
        """No new pull from now on; what is in flight must end by `deadline` (monotonic)."""
        self.cycle.stopping = True
        self.cycle.stop_deadline = deadline
        self.client.stopping = True

    def remaining(self) -> float:
        """Seconds left before the stop deadline (the grace period when none is set)."""
        if self.cycle.stop_deadline is None:
            return self.settings.schedule.grace_period
        return max(0.0, self.cycle.stop_deadline - time.monotonic())

    @classmethod
    async def open_or_report(cls, settings: Settings) -> Runtime | None:
        """`open`, or None after one clear log line when the spool or Redis cannot be used."""
        try:
            return await cls.open(settings)
        except SpoolError as exc:
            log.error("cannot open the spool", error=str(exc))
        except SinkConfigError as exc:
            log.error("redis cannot honour the settings", error=str(exc))
        return None

    async def close(self) -> None:
        """Close everything; safe to call once at the end."""
        # Whatever flush a stop gave up on may finish in the time the grace period has left.
        await self.cycle.settle(grace=max(0.5, self.remaining() - 0.5))
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
            redis=redact_url(s.redis.url),
            redis_server=self.redis_server,
            redis_mode=s.redis.mode,
            durability=s.redis.durability,
            stream_key_template=s.redis.stream_key_template,
            spool=str(s.spool.path),
            spool_rows=stats.rows,
            schedule=s.schedule.cron or f"every {s.schedule.interval:g}s ±{s.schedule.jitter:g}s",
        )

    async def flush_leftovers(self) -> None:
        """Flush what a previous run left in the spool."""
        stats = self.spool.stats()
        if stats.rows == 0 and stats.quarantine_pending == 0:
            return
        log.info("flushing what the spool holds from before", rows=stats.rows)
        try:
            result = await self.cycle.flush()
        except (SinkError, SpoolError) as exc:
            log.warning("could not flush the spool yet", error=str(exc))
            return
        log.info(
            "spool flushed",
            written=result.total_written,
            skipped_as_already_written=result.skipped,
            dead_lettered=result.dead_lettered,
        )

    async def bootstrap(self, apps: list[str]) -> list[AppReport]:
        """Ensure configurations and PULL actions; AuthError propagates."""
        if not apps:
            return []
        return await bootstrap(
            self.client,
            apps,
            callback_data=self.settings.infobip.callback_data,
            replace_http_forward=self.settings.infobip.replace_http_forward,
        )


def _count_retry(reason: str) -> None:
    metrics.INFOBIP_RETRIES.labels(reason=reason).inc()
    if reason == "429":
        metrics.INFOBIP_THROTTLED.inc()
