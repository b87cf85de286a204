"""Prometheus metrics: one dedicated registry, every metric named `poller_*` and documented.

Series by application are bounded: the `app` label is a configured application's code, or
`other` for every code that is not configured (messages of any application still flow, and
each new code would otherwise add series for good: 40,000 of them made /metrics 10 MB).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector


class MetricDoc(NamedTuple):
    """One exported metric as the README lists it."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


# The classic text format: what generate_latest writes for our names, and what every
# Prometheus version reads (newer clients announce 1.0.0, which Prometheus 2 may refuse).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# *_created series double the output and no dashboard of ours uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Not the global registry: tests and embedding applications get only the poller's metrics.
REGISTRY = CollectorRegistry(auto_describe=True)
# process_*, python_gc_* and python_info: memory, file descriptors, CPU, start time.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

METRICS: list[MetricDoc] = []
"""Every poller_* metric, in the order the README lists them."""

PULL_OUTCOMES = ("ok", "empty", "error", "throttled", "malformed")
# The `app` label of every application that is not configured (and of bodies with none).
OTHER_APP = "other"

_applications: frozenset[str] = frozenset()
_C = TypeVar("_C", bound="_AppCounter")


def app_label(app: str | None) -> str:
    """The `app` label value for an application code: itself when configured, else `other`."""
    return app if app is not None and app in _applications else OTHER_APP


class _AppCounter(Counter):
    """A counter by application whose `app` label takes only the bounded values."""

    def labels(self: _C, *labelvalues: object, **labelkwargs: object) -> _C:
        if "app" in labelkwargs:
            app = labelkwargs["app"]
            labelkwargs["app"] = app_label(app if isinstance(app, str) else None)
        elif labelvalues and self._labelnames == ("app",):
            app = labelvalues[0]
            labelvalues = (app_label(app if isinstance(app, str) else None),)
        return super().labels(*labelvalues, **labelkwargs)


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _counter(name: str, text: str, labels: Sequence[str] = ()) -> Counter:
    METRICS.append(MetricDoc(f"{name}_total", "counter", tuple(labels), text))
    return Counter(name, text, labels, registry=REGISTRY)


def _app_counter(name: str, text: str) -> _AppCounter:
    METRICS.append(MetricDoc(f"{name}_total", "counter", ("app",), text))
    return _AppCounter(name, text, ["app"], registry=REGISTRY)


def _gauge(name: str, text: str, labels: Sequence[str] = ()) -> Gauge:
    METRICS.append(MetricDoc(name, "gauge", tuple(labels), text))
    return Gauge(name, text, labels, registry=REGISTRY)


def _histogram(name: str, text: str, buckets: Sequence[float]) -> Histogram:
    METRICS.append(MetricDoc(name, "histogram", (), text))
    return Histogram(name, text, buckets=buckets, registry=REGISTRY)


MESSAGES_PULLED = _app_counter(
    "poller_messages_pulled", "Messages pulled from Infobip and spooled."
)
MESSAGES_WRITTEN = _app_counter(
    "poller_messages_written", "Messages written to their Redis stream."
)
MESSAGES_QUARANTINED = _app_counter(
    "poller_messages_quarantined",
    "Messages or bodies that could not be parsed, kept in quarantine and the dead-letter stream.",
)
DUPLICATES_SKIPPED = _counter(
    "poller_duplicates_skipped",
    "Spool rows not written again because the stream's high-water mark already covered them.",
)
PULLS = _counter(
    "poller_pulls",
    "Pull requests by outcome: ok, empty, error, throttled, malformed.",
    ["outcome"],
)
POLL_CYCLE_SECONDS = _histogram(
    "poller_poll_cycle_seconds",
    "Duration of one pull drain (its pulls and their spool appends).",
    _CYCLE_BUCKETS,
)
FLUSH_SECONDS = _histogram(
    "poller_flush_seconds", "Duration of one spool-to-Redis flush.", _LATENCY_BUCKETS
)
PULL_REQUEST_SECONDS = _histogram(
    "poller_pull_request_seconds",
    "Duration of one pull request to Infobip, retries excluded.",
    _LATENCY_BUCKETS,
)
SPOOL_ROWS = _gauge("poller_spool_rows", "Messages in the spool not yet confirmed by Redis.")
SPOOL_BYTES = _gauge("poller_spool_bytes", "Size of the spool's pending messages, bytes.")
SPOOL_OLDEST_AGE_SECONDS = _gauge(
    "poller_spool_oldest_age_seconds", "Age of the oldest message still in the spool (0: empty)."
)
QUARANTINE_ROWS = _gauge("poller_quarantine_rows", "Rows in the spool's quarantine table.")
INFOBIP_PENDING_MESSAGES = _gauge(
    "poller_infobip_pending_messages",
    "pendingMessageCount reported by the last pull: messages still waiting at Infobip.",
)
INFOBIP_RETRIES = _counter(
    "poller_infobip_retries",
    "Retried Infobip calls by reason (timeout, 5xx, 429, ...).",
    ["reason"],
)
INFOBIP_THROTTLED = _counter(
    "poller_infobip_throttled",
    "HTTP 429 answers from Infobip, by the budget the call was made under: shared (every"
    " poller of the account: someone else uses the key too, or the budget is set above the"
    " account's) or local (this process alone, or its share while Redis is unreachable).",
    ["budget"],
)
SINK_DURABILITY_DEGRADED = _gauge(
    "poller_sink_durability_degraded",
    "1 while writes count on the primary's word alone because no replica is left"
    " (POLLER_REDIS__NO_REPLICA=degrade).",
)
SINK_UNCONFIRMED = _counter(
    "poller_sink_unconfirmed",
    "Flushes written but not confirmed (the durability wait unmet, or the primary changed):"
    " their rows stayed in the spool and were written again, once.",
)
INFOBIP_BUDGET_WAIT = _counter(
    "poller_infobip_budget_wait_seconds",
    "Seconds Infobip calls waited for their turn in the account's request budget.",
)
REPLICAS = _gauge(
    "poller_replicas",
    "Pollers of this account in the replica registry, by state: alive (beating), gone (not"
    " beating, empty spool), stranded (not beating while its spool holds rows).",
    ["state"],
)
REPLICAS_STRANDED_ROWS = _gauge(
    "poller_replicas_stranded_rows",
    "Rows in the spools of stranded pollers: messages that wait until a poller runs there.",
)
SINK_ERRORS = _counter(
    "poller_sink_errors",
    "Flushes that failed as a whole: the sink unreachable or taking no writes (each retry counts).",
)
LAST_SUCCESSFUL_POLL = _gauge(
    "poller_last_successful_poll_timestamp_seconds",
    "Unix time of the last pull that worked and whose rows reached Redis.",
)
BACKPRESSURE_ACTIVE = _gauge(
    "poller_backpressure_active", "1 while pulling is paused because the spool is at its cap."
)
SPOOL_DISK_PAUSED = _gauge(
    "poller_spool_disk_paused",
    "1 while pulling is paused because the spool's file system lacks room or is read-only.",
)
PULL_LIMIT = _gauge(
    "poller_pull_limit",
    "Messages asked for per pull: POLLER_INFOBIP__PULL_LIMIT, or less once Infobip refused it.",
)
FORWARD_REQUESTS = _counter(
    "poller_forward_requests",
    "Requests to the HTTP forward receiver by status code.",
    ["status"],
)
FORWARD_MESSAGES = _app_counter(
    "poller_forward_messages",
    "Messages received by HTTP forward and spooled (acknowledged to Infobip).",
)
FORWARD_ACK_SECONDS = _histogram(
    "poller_forward_ack_seconds",
    "From a forwarded request's body read to its 2xx: the spool append and its fsync.",
    _LATENCY_BUCKETS,
)
DUPLICATE_DELIVERIES = _app_counter(
    "poller_duplicate_deliveries",
    "Forwarded messages not written again: their messageId reached the stream within the"
    " dedupe window (Infobip delivered them again).",
)
DEAD_LETTERS = _gauge(
    "poller_dead_letters",
    "Entries in an application's dead-letter stream (`other`: the stream of bodies with no"
    " application), read from Redis at each heartbeat.",
    ["app"],
)
DEAD_LETTERS_REDRIVEN = _gauge(
    "poller_dead_letters_redriven",
    "Messages `poller dead retry` re-drove from an application's dead-letter stream to its"
    " stream, in all: a total kept in Redis beside the dead-letter stream (the command runs"
    " and exits; the daemon reads the total at each heartbeat).",
    ["app"],
)
DEAD_LETTERS_PURGED = _gauge(
    "poller_dead_letters_purged",
    "Dead letters `poller dead purge` removed from an application's dead-letter stream, in"
    " all (kept in Redis as the re-driven total is).",
    ["app"],
)
INFO = Info("poller", "Version and spool writer id of this process.", registry=REGISTRY)
METRICS.append(
    MetricDoc(
        "poller_info",
        "gauge",
        ("version", "writer"),
        "Always 1; carries the labels (writer: this start's spool writer id; not `instance`,"
        " which Prometheus reserves for the scrape target).",
    )
)

_BY_APP = (
    MESSAGES_PULLED,
    MESSAGES_WRITTEN,
    MESSAGES_QUARANTINED,
    FORWARD_MESSAGES,
    DUPLICATE_DELIVERIES,
)

# Known label values exist from the start, so rate() sees a zero before the first event.
for _outcome in PULL_OUTCOMES:
    PULLS.labels(outcome=_outcome)
for _budget in ("shared", "local"):
    INFOBIP_THROTTLED.labels(budget=_budget)
for _state in ("alive", "gone", "stranded"):
    REPLICAS.labels(state=_state)


def set_applications(applications: Iterable[str]) -> None:
    """The configured applications: the `app` label values besides `other`. Their series
    exist from then on, at zero until their first event."""
    global _applications
    _applications = frozenset(applications)
    for metric in _BY_APP:
        for app in (*sorted(_applications), OTHER_APP):
            metric.labels(app=app)


set_applications(())


def set_info(version: str, writer: str) -> None:
    """Publish `poller_info{version,writer} 1`."""
    INFO.info({"version": version, "writer": writer})


def render() -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE


def markdown_table() -> str:
    """The metrics list for the README, generated from METRICS."""
    lines = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for doc in METRICS:
        labels = ", ".join(f"`{label}`" for label in doc.labels)
        lines.append(f"| `{doc.name}` | {doc.kind} | {labels} | {doc.help} |")
    return "\n".join(lines) + "\n"
