"""A small helper for downstream services that read the poller's streams with a group.

consumer = StreamConsumer(redis, "infobip:push:{my-app}:mo", "billing", "worker-1")
async for delivery in consumer.deliveries():
    handle(delivery.message.payload)
    await delivery.ack()

``deliveries`` creates the group when it is missing, takes over entries another consumer left
unacknowledged for ``claim_idle_ms`` (a consumer that died), moves an entry delivered more than
``max_deliveries`` times to the dead-letter stream and acknowledges it in one atomic step (a
poison message), and ends cleanly when its task is cancelled (what was not acknowledged stays
pending in the group, for a consumer to claim). An entry it cannot parse (``Message.error``:
a payload that is not JSON, an integer of more than 4,300 digits, nesting deeper than the
interpreter's stack, missing fields) is never handed over: it goes to the dead-letter stream
at its first delivery, since reading it again cannot succeed, and the loop goes on.
``read``/``ack``/``claim_stale`` are the steps (they return such entries with ``error`` set).

The poller reads the streams only through this package (``poller.sink.redis.reader``, for
`poller tail`); ``poller.consumer`` is the import path for downstream code.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from poller.sink.entries import Message, parse_entry, text_of
from poller.sink.redis.keys import dead_of
from poller.sink.redis.lua import Script

_DEAD_LETTER = Script("dead_letter.lua")

# How much of a parse error a dead letter's reason carries.
MAX_REASON = 300

Entry = tuple[Any, dict[Any, Any] | None]  # (entry id, fields); fields None once deleted


@dataclass(frozen=True)
class Delivery:
    """A message handed to this consumer; ``deliveries`` counts this one."""

    message: Message
    deliveries: int
    consumer: StreamConsumer

    async def ack(self) -> bool:
        """Acknowledge it: done, never delivered again."""
        return await self.consumer.ack([self.message.entry_id]) == 1


class StreamConsumer:
    """Reads one stream as one consumer of a consumer group."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        stream_key: str,
        group: str,
        consumer: str,
        *,
        start_id: str = "0",
    ) -> None:
        self.redis = redis
        self.stream_key = stream_key
        self.group = group
        self.consumer = consumer
        self.start_id = start_id

    async def ensure_group(self) -> bool:
        """Create the group (and the stream) unless it exists; True when created."""
        try:
            await self.redis.xgroup_create(
                self.stream_key, self.group, id=self.start_id, mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def read(self, count: int = 100, block_ms: int | None = None) -> list[Message]:
        """New entries for this consumer (XREADGROUP >), waiting up to ``block_ms``."""
        reply: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream_key: ">"}, count=count, block=block_ms
        )
        # RESP2 answers [[key, entries]], RESP3 {key: entries}.
        streams = reply.items() if isinstance(reply, dict) else (reply or [])
        entries: list[Entry] = [entry for _, batch in streams for entry in batch]
        return [parse_entry(entry_id, raw) for entry_id, raw in entries if raw is not None]

    async def ack(self, entry_ids: list[str]) -> int:
        """Acknowledge processed entries; returns how many were pending."""
        if not entry_ids:
            return 0
        return int(await self.redis.xack(self.stream_key, self.group, *entry_ids))

    async def claim_stale(self, min_idle_ms: int, count: int = 100) -> list[Message]:
        """Take over up to ``count`` entries another consumer left unacked for ``min_idle_ms``."""
        claimed: list[Message] = []
        cursor: Any = "0-0"
        while len(claimed) < count:
            reply = await self.redis.xautoclaim(
                self.stream_key,
                self.group,
                self.consumer,
                min_idle_time=min_idle_ms,
                start_id=cursor,
                count=count - len(claimed),
            )
            cursor, entries = reply[0], reply[1]
            # Entries deleted from the stream come back as (id, None) on some servers.
            claimed.extend(parse_entry(i, raw) for i, raw in entries if raw is not None)
            if text_of(cursor) == "0-0":
                break
        return claimed

    @property
    def dead_key(self) -> str:
        """The stream's dead-letter stream (the same Cluster slot)."""
        return dead_of(self.stream_key)

    async def dead_letter(self, entry_id: str, reason: str) -> bool:
        """Move a pending entry to the dead-letter stream and acknowledge it, atomically."""
        moved = await _DEAD_LETTER(
            self.redis, (self.stream_key, self.dead_key), (self.group, entry_id, reason)
        )
        return bool(moved)

    async def deliveries(
        self,
        *,
        count: int = 100,
        block_ms: int = 2000,
        claim_idle_ms: int = 60_000,
        max_deliveries: int = 5,
    ) -> AsyncIterator[Delivery]:
        """Messages for this consumer until cancelled: entries taken over from consumers that
        left them unacknowledged for ``claim_idle_ms``, then new ones. An entry delivered more
        than ``max_deliveries`` times goes to the dead-letter stream instead, and so does an
        entry that cannot be parsed, at once (a failed delivery that no retry can mend)."""
        await self.ensure_group()
        next_claim = 0.0
        while True:
            if time.monotonic() >= next_claim:
                next_claim = time.monotonic() + claim_idle_ms / 2000
                for message in await self.claim_stale(claim_idle_ms, count):
                    if await self._unreadable(message):
                        continue
                    times = await self._times_delivered(message.entry_id)
                    if times > max_deliveries:
                        reason = (
                            f"delivered {times} times to group {self.group} without an"
                            f" acknowledgement (entry {message.entry_id})"
                        )
                        await self.dead_letter(message.entry_id, reason)
                        continue
                    yield Delivery(message, times, self)
            block = max(1, min(block_ms, int((next_claim - time.monotonic()) * 1000)))
            for message in await self.read(count, block):
                if not await self._unreadable(message):
                    yield Delivery(message, 1, self)

    async def _unreadable(self, message: Message) -> bool:
        """True for an entry that cannot be parsed, now moved to the dead-letter stream."""
        if message.error is None:
            return False
        reason = f"entry {message.entry_id} cannot be parsed: {message.error[:MAX_REASON]}"
        await self.dead_letter(message.entry_id, reason)
        return True

    async def _times_delivered(self, entry_id: str) -> int:
        rows = await self.redis.xpending_range(
            self.stream_key, self.group, min=entry_id, max=entry_id, count=1
        )
        return int(rows[0]["times_delivered"]) if rows else 0


async def read_streams(
    redis: Redis | RedisCluster,
    positions: dict[str, str],
    *,
    count: int = 100,
    block_ms: int | None = None,
) -> list[tuple[str, Message]]:
    """Entries after each stream's position (XREAD, no group), oldest first per stream;
    ``positions`` moves past what was read. ``$`` means "only what comes from now on"."""
    reply: Any = await redis.xread(positions, count=count, block=block_ms)  # type: ignore[arg-type]
    streams = reply.items() if isinstance(reply, dict) else (reply or [])
    found: list[tuple[str, Message]] = []
    for key, batch in streams:
        name = text_of(key)
        for entry_id, raw in batch:
            positions[name] = text_of(entry_id)
            if raw is not None:
                found.append((name, parse_entry(entry_id, raw)))
    return found


async def last_ids(redis: Redis | RedisCluster, keys: list[str]) -> dict[str, str]:
    """Each stream's last entry id now (``0-0`` when empty): XREAD from "now" without ``$``,
    which some servers read once per call instead of keeping."""
    positions: dict[str, str] = {}
    for key in keys:
        last: Any = await redis.xrevrange(key, count=1)
        positions[key] = text_of(last[0][0]) if last else "0-0"
    return positions


__all__ = ["Delivery", "Message", "StreamConsumer", "last_ids", "parse_entry", "read_streams"]
