"""The streams' reading side on Redis (a ``StreamReader``): what `poller tail`, `poller
status` and the demo read through, by application names, never by keys."""

from __future__ import annotations

from collections.abc import Sequence

from poller.sink import SinkError
from poller.sink.entries import Message
from poller.sink.redis.connection import REDIS_ERRORS, Connections
from poller.sink.redis.consumer import StreamConsumer, last_ids, read_streams
from poller.sink.redis.keys import Keys, is_dead


class RedisReader:
    """Reads the streams of one key template; every redis-py error becomes a SinkError."""

    def __init__(self, connections: Connections, keys: Keys) -> None:
        self._conn = connections
        self.keys = keys

    def _error(self, op: str, exc: BaseException) -> SinkError:
        return SinkError(self._conn.describe_error(op, exc))

    async def scan(self) -> list[str]:
        """Every stream of the template that exists, message and dead-letter ones, sorted."""
        found: set[str] = set()
        client = self._conn.scanner()
        for match in self.keys.patterns():
            async for key in client.scan_iter(match=match, count=1000, _type="stream"):
                found.add(key.decode() if isinstance(key, bytes) else key)
        return sorted(found)

    async def streams(self, apps: Sequence[str] = (), *, dead: bool = False) -> list[str]:
        """These applications' streams (dead-letter ones with ``dead``), or every stream."""
        if apps:
            return [self.keys.dead(a) if dead else self.keys.stream(a) for a in apps]
        try:
            return [key for key in await self.scan() if is_dead(key) == dead]
        except REDIS_ERRORS as exc:
            raise self._error("scan", exc) from exc

    async def missing(self, streams: Sequence[str]) -> list[str]:
        """Those of ``streams`` that are no stream of the template, found by SCAN: a
        reader's least-privilege ACL has SCAN (and the stream reads), not EXISTS."""
        try:
            found = set(await self.scan())
        except REDIS_ERRORS as exc:
            raise self._error("scan", exc) from exc
        return [stream for stream in streams if stream not in found]

    async def read(
        self, positions: dict[str, str], *, count: int = 100, block_ms: int | None = None
    ) -> list[tuple[str, Message]]:
        """XREAD after each position; ``positions`` moves past what was read."""
        try:
            return await read_streams(
                self._conn.writer(), positions, count=count, block_ms=block_ms
            )
        except REDIS_ERRORS as exc:
            raise self._error("read", exc) from exc

    async def ends(self, streams: Sequence[str]) -> dict[str, str]:
        """Each stream's last entry id now (``0-0`` when empty)."""
        try:
            return await last_ids(self._conn.writer(), list(streams))
        except REDIS_ERRORS as exc:
            raise self._error("read", exc) from exc

    def group(self, stream: str, group: str, consumer: str, *, start: str = "0") -> StreamConsumer:
        """The consumer-group helper on one stream."""
        return StreamConsumer(self._conn.writer(), stream, group, consumer, start_id=start)
