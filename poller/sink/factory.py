"""The sink the settings choose (``POLLER_SINK__KIND``): the one place that maps a kind to its
implementation."""

from __future__ import annotations

from poller.settings import Settings
from poller.sink import Sink
from poller.sink.memory import MemorySink
from poller.sink.redis.sink import RedisSink


def open_sink(settings: Settings, instance_id: str) -> Sink:
    """The configured sink, not connected yet; ``instance_id`` names the marks of rows that
    carry no writer (the spool's instance id)."""
    dedupe = settings.forward.dedupe_window
    if settings.sink.kind == "memory":
        return MemorySink(instance_id=instance_id, dedupe_window=dedupe)
    return RedisSink(settings.redis, instance_id=instance_id, dedupe_window=dedupe)
