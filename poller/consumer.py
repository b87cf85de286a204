"""A small helper for downstream services that read the poller's streams with a group.

consumer = StreamConsumer(redis, "infobip:push:{my-app}:mo", "billing", "worker-1")
await consumer.ensure_group()
for message in await consumer.read(count=100, block_ms=5000):
    handle(message.payload)
    await consumer.ack([message.entry_id])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

Fields = dict[str, str]
Entry = tuple[Any, dict[Any, Any] | None]  # (entry id, fields); fields None once deleted


@dataclass(frozen=True)
class Message:
    """One stream entry written by the poller (schema ``infobip.push.mo.v1``)."""

    entry_id: str
    message_id: str
    app: str
    received_at: str
    pulled_at: str
    schema: str
    payload: dict[str, Any]
    fields: Fields
    error: str | None = None  # set when the entry could not be parsed; payload is then {}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def parse_entry(entry_id: Any, raw: dict[Any, Any]) -> Message:
    """Turn a raw stream entry into a Message; a malformed one gets ``error`` set."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    error: str | None = None
    payload: dict[str, Any] = {}
    try:
        decoded = json.loads(fields.get("payload", ""))
        if isinstance(decoded, dict):
            payload = decoded
        else:
            error = "payload is not a JSON object"
    except json.JSONDecodeError as exc:
        error = f"payload is not JSON: {exc}"
    return Message(
        entry_id=_text(entry_id),
        message_id=fields.get("id", ""),
        app=fields.get("app", ""),
        received_at=fields.get("received_at", ""),
        pulled_at=fields.get("pulled_at", ""),
        schema=fields.get("schema", ""),
        payload=payload,
        fields=fields,
        error=error,
    )


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
            if _text(cursor) == "0-0":
                break
        return claimed


__all__ = ["Message", "StreamConsumer", "parse_entry"]
