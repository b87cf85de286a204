"""When a flush counts as written: the confirmation the Redis sink asks of each primary before
the spool may delete a row (design invariant 2), also across failovers.

After a flush's writes, on one connection to each primary that holds them, one pipeline:
the durability wait (WAIT, or WAITAOF), then the high-water marks this flush set, then ROLE
(and, with Sentinel, the server's run id). The flush counts only when
- the wait was acknowledged by the replicas asked for: with ``durability=auto`` (the default)
  every replica the deployment lists as healthy (Sentinel: the replicas the sentinels know,
  which they keep listing for seconds after a failover, so a write to a demoted primary is
  never acknowledged by all of them; Cluster and standalone: the primary's connected
  replicas), none on a server that never had one;
- the node that answered holds every mark this flush set (a write that went to another node,
  the old primary during a failover, is not counted on the word of the new one);
- the node is a primary, and with Sentinel the one a majority of the sentinels names now (a
  demoted primary goes on accepting writes for about ten seconds before it is turned into a
  replica and drops them).
Otherwise the flush fails as a whole: the rows stay in the spool, the flusher retries, and the
high-water marks make the replay write each message once. When a deployment that had replicas
has none left, ``no_replica`` decides: ``wait`` (the default: rows wait in the spool until a
replica is back; readiness says so) or ``degrade`` (the primary's word alone, said loudly).
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from redis.asyncio import Redis

from poller import metrics
from poller.sink import DurabilityError, SinkError
from poller.sink.redis.connection import REDIS_ERRORS, Connections
from poller.sink.redis.settings import RedisSettings

log = structlog.get_logger(__name__)

# Seconds the number of replicas to wait for is reused before it is asked again.
REPLICAS_EVERY = 5.0
_SETTING = "POLLER_REDIS__"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Durability:
    """The confirmation of one sink's flushes (see the module's docstring)."""

    def __init__(self, settings: RedisSettings, connections: Connections) -> None:
        self.settings = settings
        self._conn = connections
        # node -> (asked at, replicas connected to it, replicas the deployment lists for it)
        self._replicas: dict[str, tuple[float, int, int]] = {}
        self._had_replicas = False  # the deployment was seen with replicas
        self.problem: str | None = None  # why the last flush was not confirmed
        self._degraded = False

    async def replicas(self, node: str, client: Redis) -> tuple[int, int]:
        """(replicas connected to ``node`` now, replicas a write on it waits for)."""
        cached = self._replicas.get(node)
        now = time.monotonic()
        if cached is not None and now - cached[0] < REPLICAS_EVERY:
            return cached[1], cached[2]
        info = await client.info("replication")
        connected = int(info.get("connected_slaves", 0) or 0)
        listed = connected
        sentinel = self._conn.sentinel
        if sentinel is not None:
            # The sentinels' healthy replicas: they still list the promoted one for seconds
            # after a failover, so the old primary cannot gather that many acknowledgements.
            known = await sentinel.discover_slaves(self.settings.sentinel_master)
            listed = max(connected, len(known))
        if self.settings.durability_replicas is not None:
            listed = self.settings.durability_replicas
        self._replicas[node] = (now, connected, listed)
        if listed:
            self._had_replicas = True
        return connected, listed

    def forget(self) -> None:
        """Ask for the replicas again at the next flush (after a failure)."""
        self._replicas.clear()

    async def confirm(self, node: str, client: Redis, marks: dict[str, int]) -> None:
        """Confirm this flush's writes on one primary; ``marks``: each high-water mark key
        this flush set on it -> the sequence number it must hold at least. Raises
        DurabilityError (the wait was not met) or SinkError (the node is not the primary)."""
        s = self.settings
        connected, wanted = (0, 0) if s.durability == "none" else await self.replicas(node, client)
        if s.durability == "wait" and s.durability_replicas is None:
            wanted = max(1, wanted)  # asked for a replica's word: at least one
        degraded = s.durability == "auto" and connected == 0 and self._had_replicas
        if degraded:
            wanted = self._no_replica(node)
        pipe = client.pipeline(transaction=False)
        keys = list(marks)
        # A write of this connection's own that follows every write of the flush in the
        # replication stream: acknowledging it acknowledges them (WAIT counts per connection).
        pipe.incrby(keys[-1], 0)
        waiting = s.durability in ("wait", "waitaof") or wanted > 0
        if s.durability == "waitaof":
            pipe.waitaof(1 if s.durability_local else 0, wanted, s.wait_timeout_ms)
        elif waiting:
            pipe.wait(wanted, s.wait_timeout_ms)
        for key in keys:
            pipe.get(key)
        pipe.execute_command("ROLE")
        sentinel = self._conn.sentinel is not None
        if sentinel:
            pipe.info("server")
        replies = await pipe.execute()
        replies = replies[1:]
        if waiting:
            self._check_wait(replies[0], wanted)
            replies = replies[1:]
        for key, value in zip(keys, replies[: len(keys)], strict=True):
            if value is None or int(value) < marks[key]:
                raise SinkError(
                    f"the server that confirmed the flush does not hold its writes (mark {key}:"
                    f" {_text(value) if value is not None else 'missing'}, expected"
                    f" {marks[key]}): the primary changed during the flush"
                )
        role = replies[len(keys)]
        if _text(role[0]) != "master":
            raise SinkError(f"the server written to is a {_text(role[0])} now, not the primary")
        if sentinel:
            await self._check_sentinels(_text(replies[len(keys) + 1].get("run_id", "")))
        self._settled(degraded)

    def _no_replica(self, node: str) -> int:
        """No replica left on a node that had some: wait for one, or degrade (0)."""
        if self.settings.no_replica == "degrade":
            if not self._degraded:
                log.warning(
                    "no replica left: writes count on the primary's word alone until one is"
                    f" back ({_SETTING}NO_REPLICA=degrade)",
                    node=node,
                )
            return 0
        self.problem = (
            f"no replica left on {node}: rows wait in the spool until one is back"
            f" ({_SETTING}NO_REPLICA=wait; =degrade takes the primary's word alone)"
        )
        raise DurabilityError(self.problem)

    def _check_wait(self, reply: Any, wanted: int) -> None:
        s = self.settings
        if s.durability == "waitaof":
            local = 1 if s.durability_local else 0
            got_local, got = int(reply[0]), int(reply[1])
            if got_local < local or got < wanted:
                self.problem = (
                    f"WAITAOF: local fsync {got_local}/{local}, replicas {got}/{wanted} within"
                    f" {s.wait_timeout_ms} ms: rows wait in the spool"
                )
                raise DurabilityError(self.problem)
            return
        got = int(reply)
        if got < wanted:
            self.problem = (
                f"WAIT: {got} of {wanted} replicas acknowledged within"
                f" {s.wait_timeout_ms} ms: rows wait in the spool"
            )
            raise DurabilityError(self.problem)

    async def _check_sentinels(self, run_id: str) -> None:
        """A majority of the sentinels must name this server as the master now."""
        sentinel = self._conn.sentinel
        assert sentinel is not None  # nosec B101  # called in sentinel mode only: narrows the type
        agree = 0
        for client in sentinel.sentinels:
            try:
                state = await client.sentinel_master(self.settings.sentinel_master)
            except REDIS_ERRORS:
                continue
            if isinstance(state, dict) and _text(state.get("runid", "")) == run_id:
                agree += 1
        if agree * 2 <= len(sentinel.sentinels):
            await self._conn.reset_master()
            self.forget()
            raise SinkError(
                f"the server written to is not the master a majority of the sentinels name"
                f" ({agree} of {len(sentinel.sentinels)}): a failover; the flush is retried on"
                " the new master"
            )

    def _settled(self, degraded: bool) -> None:
        if self.problem is not None:
            log.info("flushes are confirmed again", was=self.problem)
        self.problem = None
        if self._degraded and not degraded:
            log.info("a replica is back: writes wait for the replicas again")
        self._degraded = degraded
        metrics.SINK_DURABILITY_DEGRADED.set(1 if degraded else 0)

    def failed(self, exc: BaseException) -> None:
        """A flush failed: ask for the replicas again, and find the master again in
        sentinel mode (a write to a demoted primary fails as READONLY or a timeout)."""
        self.forget()
        if isinstance(exc, DurabilityError | SinkError) and self.problem is None:
            self.problem = str(exc)


__all__ = ["Durability"]
