"""The replica registry in Redis (``lua/replicas.lua``): one hash per account, beside the
shared request budget, its heartbeats stamped by the server's clock."""

from __future__ import annotations

import json

from poller.coordination import ReplicaState
from poller.sink import SinkError
from poller.sink.redis.connection import REDIS_ERRORS, Connections
from poller.sink.redis.keys import account_key
from poller.sink.redis.lua import Script

_REPLICAS = Script("replicas.lua")
# The registry outlives the last heartbeat of any of its pollers by a week: long enough for an
# operator to notice a stranded spool, short enough that a retired account leaves nothing.
KEY_TTL_MS = 7 * 24 * 3600 * 1000
# A gone poller whose spool was empty is forgotten after an hour.
FORGET_MS = 3600 * 1000


class RedisRegistry:
    """A ``Registry`` every poller of one account shares."""

    def __init__(self, connections: Connections, account: str) -> None:
        self._conn = connections
        self.key = account_key(account, "replicas")

    async def _call(
        self, mode: str, state: ReplicaState | None
    ) -> tuple[float, list[ReplicaState]]:
        body = (
            json.dumps({k: v for k, v in state.to_json().items() if k != "heartbeat"})
            if state
            else "{}"
        )
        instance = state.instance if state else ""
        try:
            reply = await _REPLICAS(
                self._conn.writer(),
                (self.key,),
                (mode, instance, body, str(KEY_TTL_MS), str(FORGET_MS)),
            )
        except REDIS_ERRORS as exc:
            raise SinkError(self._conn.describe_error("replica registry", exc)) from exc
        now = int(reply[0]) / 1000
        found = []
        for i in range(1, len(reply), 2):
            data = reply[i + 1]
            try:
                found.append(ReplicaState.from_json(json.loads(data)))
            except (ValueError, TypeError):
                continue  # an entry this version cannot read is not this one's to judge
        return now, found

    async def beat(self, state: ReplicaState) -> tuple[float, list[ReplicaState]]:
        """Register or renew; every replica."""
        return await self._call("beat", state)

    async def leave(self, state: ReplicaState) -> None:
        """Remove this replica if its spool is empty, else keep it as it stopped."""
        await self._call("leave", state)

    async def replicas(self) -> tuple[float, list[ReplicaState]]:
        """Every replica."""
        return await self._call("list", None)


__all__ = ["RedisRegistry"]
