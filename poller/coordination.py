"""What the pollers of one account know of each other: the replica registry.

Each process registers itself (its spool's instance id, host, spool rows, oldest row's age)
and renews the entry with a heartbeat; a spool with rows whose poller stopped beating is
*stranded*: its messages wait until a poller runs on that volume again, and an alert should
say so. The registry lives where the sink writes (``poller.sink.redis.replicas``); this module
has the protocol and an in-process twin for the fast tests.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

# Heartbeats a replica may miss before it counts as gone.
MISSED_BEATS = 3


@dataclass
class ReplicaState:
    """One poller as the registry holds it; ``heartbeat`` is set by the registry's clock."""

    instance: str
    host: str
    pid: int
    version: str
    spool: str
    rows: int
    oldest_age_s: float | None
    sources: list[str] = field(default_factory=list)
    started: float = 0.0  # unix time of its start
    heartbeat: float = 0.0  # unix time of its last beat (the registry's clock)
    interval: float = 5.0  # seconds between its beats

    def to_json(self) -> dict[str, Any]:
        """The entry as stored."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplicaState:
        """An entry read back (unknown fields of a newer version left out)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def alive(self, now: float) -> bool:
        """True while its heartbeat is recent."""
        return now - self.heartbeat <= MISSED_BEATS * self.interval

    def stranded(self, now: float) -> bool:
        """True when it stopped beating while its spool held rows."""
        return not self.alive(now) and self.rows > 0


class Registry(Protocol):
    """The replicas of one account."""

    async def beat(self, state: ReplicaState) -> tuple[float, list[ReplicaState]]:
        """Register or renew this replica; (the registry's time now, every replica)."""
        ...

    async def leave(self, state: ReplicaState) -> None:
        """This replica stops: its entry goes when its spool is empty, else it stays (and
        shows as stranded once its heartbeat is old)."""
        ...

    async def replicas(self) -> tuple[float, list[ReplicaState]]:
        """(the registry's time now, every replica it holds)."""
        ...


class MemoryRegistry:
    """The registry in this process (one poller per process: for tests and the memory sink)."""

    def __init__(self) -> None:
        self.entries: dict[str, ReplicaState] = {}

    async def beat(self, state: ReplicaState) -> tuple[float, list[ReplicaState]]:
        """Register or renew."""
        state.heartbeat = time.time()
        self.entries[state.instance] = state
        return await self.replicas()

    async def leave(self, state: ReplicaState) -> None:
        """Remove it when its spool is empty."""
        if state.rows == 0:
            self.entries.pop(state.instance, None)
        else:
            self.entries[state.instance] = state

    async def replicas(self) -> tuple[float, list[ReplicaState]]:
        """Every replica."""
        return time.time(), list(self.entries.values())


__all__ = ["MISSED_BEATS", "MemoryRegistry", "Registry", "ReplicaState"]
