"""What the settings choose (``POLLER_SINK__KIND``): the sink, and beside it the account's
shared request budget and replica registry, kept on the same deployment. The one place that
maps a kind to its implementation."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from poller.coordination import MemoryRegistry, Registry
from poller.infobip.ratelimit import Budget, TokenBucket
from poller.settings import Settings
from poller.sink import Sink
from poller.sink.memory import MemorySink
from poller.sink.redis.budget import SharedBudget
from poller.sink.redis.replicas import RedisRegistry
from poller.sink.redis.sink import RedisSink


def open_sink(settings: Settings, instance_id: str) -> Sink:
    """The configured sink, not connected yet; ``instance_id`` names the marks of rows that
    carry no writer (the spool's instance id)."""
    dedupe = settings.forward.dedupe_window
    if settings.sink.kind == "memory":
        return MemorySink(instance_id=instance_id, dedupe_window=dedupe)
    return RedisSink(settings.redis, instance_id=instance_id, dedupe_window=dedupe)


def account_of(settings: Settings) -> str:
    """What names the Infobip account in shared keys: its base URL's host (never a secret)."""
    return (urlsplit(settings.infobip.base_url or "").hostname or "unknown").lower()


def open_budget(settings: Settings, sink: Sink, pollers: Callable[[], int] = lambda: 1) -> Budget:
    """The account's request budget: shared through the sink's Redis, or this process's own
    (POLLER_INFOBIP__RATE_LIMIT_SCOPE=local, or a sink without a server). ``pollers``: how
    many pollers of the account are alive, for the share a poller keeps while Redis is away."""
    rate = settings.infobip.rate_limit
    if settings.infobip.rate_limit_scope == "shared" and isinstance(sink, RedisSink):
        return SharedBudget(sink.connections, account_of(settings), rate, pollers=pollers)
    # Evenly spaced, no burst: Infobip counts requests per second, so a burst that a bucket
    # allows can still land 11 calls in one of Infobip's windows.
    return TokenBucket(rate, burst=1.0)


def open_registry(settings: Settings, sink: Sink) -> Registry:
    """The account's replica registry, on the sink's deployment."""
    if isinstance(sink, RedisSink):
        return RedisRegistry(sink.connections, account_of(settings))
    return MemoryRegistry()
