"""The Redis sink: spooled messages into streams exactly once, then a durability wait.

Every Redis command of the daemon lives in this package. A flush groups entries by stream
and by the spool writer that appended them, and runs one Lua call per ``batch_size`` slice
(``lua/write_batch.lua``): it skips every spool sequence number at or below that writer's
high-water mark for the stream, XADDs the rest and raises the mark, atomically. Replays and
redis-py's own retries of a timed-out call therefore add nothing twice. One WAIT/WAITAOF per
flush (per Cluster primary) follows; see ``RedisSink._wait_durable`` for why it rides behind
a write of its own.

Marks are kept per writer because a spool's sequence only grows within one run (a restored
backup numbers its new rows again); every open of the spool is a new writer. A mark expires
``hwm_ttl`` seconds (30 days by default) after its writer's last write, so the keys of past
runs do not pile up. The price: rows of a spool backup older than that, put back, are
written again. A restore can duplicate; it never loses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ExecAbortError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from poller import metrics, redact
from poller.sink import (
    GroupInfo,
    SinkConfigError,
    SinkError,
    StreamInfo,
    WriteResult,
)
from poller.sink.entries import DEAD_FIELDS, DEAD_SCHEMA, MO_FIELDS, MO_SCHEMA
from poller.sink.redis.connection import REDIS_ERRORS, Connections
from poller.sink.redis.deadletters import RedisDeadLetters
from poller.sink.redis.durability import Durability
from poller.sink.redis.keys import Keys, hwm_key, seen_key
from poller.sink.redis.lua import Script
from poller.sink.redis.reader import RedisReader
from poller.sink.redis.settings import RedisSettings
from poller.sink.redis.tls import refused
from poller.spool import QuarantineEntry, SpoolEntry

log = structlog.get_logger(__name__)

Value = str | bytes
# (spool seq, application, values in field order, skip if its message id was seen lately)
Row = tuple[int, str, Sequence[Value], bool]
Batches = dict[str, dict[str, list[Row]]]  # stream key -> high-water mark key -> rows

# How long a high-water mark outlives its writer's last write.
HWM_TTL_SECONDS = 30 * 24 * 3600
# Settings named in configuration errors (the environment form the operator sets).
_SETTING = "POLLER_REDIS__"

# Replies that say the server (or its cluster) cannot take writes now, whatever the key.
_SERVER_WIDE = (
    AskError,
    ClusterDownError,
    ExecAbortError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)
_SERVER_WIDE_CODES = ("BUSY", "MISCONF", "NOREPLICAS", "MASTERDOWN", "CLUSTERDOWN", "LOADING")

_WRITE = Script("write_batch.lua")
_TRIM_ACKED = Script("trim_acked.lua", libraries=("stream_ids.lua",))
_RETENTION = Script("trim_retention.lua", libraries=("stream_ids.lua",))
# Entries one retention call removes at most for the length limit (the next call goes on).
RETENTION_STEP = 10_000


class RedisSink:
    """Writes spool entries and quarantined bodies to Redis streams (a ``Sink``)."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        instance_id: str,
        dedupe_window: int = 3600,
        hwm_ttl: int = HWM_TTL_SECONDS,
    ) -> None:
        """``settings`` checked its rules when it was read; ``instance_id`` names the marks
        of rows without a writer; ``dedupe_window``: seconds a forwarded message id is kept
        (POLLER_FORWARD__DEDUPE_WINDOW)."""
        if not instance_id:
            raise ValueError("instance_id must not be empty")
        if hwm_ttl < 1:
            raise ValueError("hwm_ttl must be at least 1 second")
        self.settings = settings
        self.keys = Keys(settings.stream_key_template)
        self.instance_id = instance_id
        self.hwm_ttl = hwm_ttl
        self.dedupe_window = dedupe_window
        self._conn = Connections(settings)
        self._durability = Durability(settings, self._conn)
        # Write failures in a row (the "recovered after N tries" line); nothing else counts.
        self._failures = 0
        # True once the server was reached and the durability settings checked against it.
        self._ready = False
        self.server: str | None = None

    @property
    def connections(self) -> Connections:
        """The deployment's clients: the account's shared budget and replica registry use
        the same ones (same servers, same settings)."""
        return self._conn

    def stream_key(self, app: str | None) -> str:
        """The stream of one application (None: no application, for dead letters)."""
        return self.keys.stream(app)

    async def connect(self) -> str:
        """Connect, check the durability settings against the server; returns its version.

        Raises SinkConfigError when the server cannot honour the settings (a TLS handshake
        refused over certificates included), SinkError when it cannot be reached. Either way
        the clients stay: the first write finishes a connect that failed (and checks the
        durability settings then, before it writes anything). Safe to call again; it
        replaces the clients."""
        self._ready = False
        try:
            await self._conn.open()
            await self._ensure_ready()
        except SinkError:
            raise
        except REDIS_ERRORS as exc:
            if refused(str(exc)):
                raise SinkConfigError(self._conn.describe_error("connect", exc)) from exc
            raise self._error("connect", exc) from exc
        return self.server or "unknown"

    async def _ensure_ready(self) -> None:
        """Reach the server and check the settings against it, once per connect()."""
        if self._ready:
            return
        cluster = self._conn.cluster
        if cluster is not None:
            await cluster.initialize()  # a no-op once initialized
        info = await self._conn.admin().info("server")
        self.server = _server_version(info)
        await self._check_durability()
        self._ready = True
        log.info(
            "redis connected",
            url=redact.text(self._conn.url),
            server=self.server,
            mode=self.settings.mode,
        )

    async def _check_durability(self) -> None:
        admin = self._conn.admin()
        if self.settings.durability == "waitaof":
            local = 1 if self.settings.durability_local else 0
            if (
                self.settings.durability_local
                and await self._config_get(admin, "appendonly") == "no"
            ):
                raise SinkConfigError(
                    f"{_SETTING}DURABILITY=waitaof with {_SETTING}DURABILITY_LOCAL=true needs"
                    f" the server ({self.server}) to run with appendonly yes (and appendfsync"
                    f" always); it runs with appendonly no. Turn AOF on, or set"
                    f" {_SETTING}DURABILITY_LOCAL=false (replicas only), or"
                    f" {_SETTING}DURABILITY=wait or none."
                )
            try:
                await admin.waitaof(local, 0, 1)
            except ResponseError as exc:
                if "unknown command" in str(exc).lower():
                    raise SinkConfigError(
                        f"{_SETTING}DURABILITY=waitaof needs Redis >= 7.2 or Valkey; the"
                        f" server is {self.server}. Set {_SETTING}DURABILITY=wait or none."
                    ) from exc
                raise SinkConfigError(
                    f"{_SETTING}DURABILITY=waitaof: the server ({self.server}) refused"
                    f" WAITAOF: {redact.text(str(exc))}"
                ) from exc
            fsync = await self._config_get(admin, "appendfsync")
            if self.settings.durability_local and fsync not in (None, "always"):
                log.warning(
                    "waitaof with appendfsync != always answers before the fsync",
                    appendfsync=fsync,
                )
        if self.settings.durability in ("wait", "auto") and self.settings.mode != "cluster":
            _connected, replicas = await self._durability.replicas("primary", admin)
            wanted = self.settings.durability_replicas
            log.info("durability", mode=self.settings.durability, replicas=replicas)
            if wanted is not None and replicas < wanted:
                log.warning(
                    "fewer replicas connected than durability_replicas; writes will fail",
                    connected=replicas,
                    wanted=wanted,
                )

    @staticmethod
    async def _config_get(client: Redis, name: str) -> str | None:
        """A config value, or None where CONFIG is disabled (managed services)."""
        try:
            reply: dict[Any, Any] = await client.config_get(name)
        except ResponseError:
            return None
        value = reply.get(name.encode(), reply.get(name))
        return value.decode() if isinstance(value, bytes) else value

    async def close(self) -> None:
        """Close every client this sink opened; all are closed even when one fails, then a
        SinkError reports the first failure."""
        self._ready = False
        error = await self._conn.close()
        if error is not None:
            raise self._error("close", error) from error

    async def ping(self) -> bool:
        """True when Redis answers. A probe, not a write: it leaves the write-failure count
        (and its "recovered" line) alone."""
        return await self._conn.ping()

    async def problem(self) -> str | None:
        """Why the sink cannot take writes now (readiness), or None: no answer, or the last
        flush not confirmed (the durability wait unmet, no replica left)."""
        if not await self._conn.ping():
            return f"{self.describe()}: no answer to PING"
        return self._durability.problem

    def reader(self) -> RedisReader:
        """What `poller tail`, `poller status` and the demo read the streams through."""
        return RedisReader(self._conn, self.keys)

    def dead_letters(self) -> RedisDeadLetters:
        """What `poller dead` lists, re-drives and purges through; the markers of letters
        re-driven across Cluster slots live as long as the high-water marks."""
        return RedisDeadLetters(self._conn, self.keys, marker_ttl=self.hwm_ttl)

    def _error(self, op: str, exc: BaseException) -> SinkError:
        """Turn ``exc`` into a SinkError with no secret in it; a write failure is counted."""
        message = self._conn.describe_error(op, exc)
        if op != "write":
            log.debug("redis error", op=op, error=message)
            return SinkError(message)
        self._failures += 1
        # Once per outage at warning level; the caller logs its own retries.
        level = log.warning if self._failures == 1 else log.debug
        level("redis error", op=op, error=message, failures=self._failures)
        return SinkError(message)

    def _recovered(self) -> None:
        if self._failures:
            log.info(
                f"redis recovered after {self._failures} tries",
                tries=self._failures,
                url=redact.text(self._conn.url),
            )
            self._failures = 0

    # -- writing ------------------------------------------------------------------------

    async def write(self, entries: Sequence[SpoolEntry]) -> WriteResult:
        """Write messages to their streams once each, then wait for durability.

        Raises SinkError when Redis cannot be reached or cannot take writes at all (nothing
        of this call can be trusted then), and SinkConfigError when a connect that failed
        earlier finds settings the server cannot honour. A stream that Redis refuses on its
        own (WRONGTYPE: the key holds something else; NOPERM: an ACL) does not stop the
        others: it is reported in ``WriteResult.failed`` and the rest are written, and the
        durability wait covers them. The caller commits only the rows whose application is
        not in ``failed``."""
        streams: Batches = defaultdict(lambda: defaultdict(list))
        keys: dict[tuple[str, str], tuple[str, str]] = {}
        # In seq order (one writer's rows of a stream must reach its mark in order).
        for e in sorted(entries, key=lambda e: e.seq):
            values = (e.message_id, e.app, e.received_at, e.pulled_at, e.payload, MO_SCHEMA)
            pair = keys.get((e.app, e.writer))
            if pair is None:
                key = self.stream_key(e.app)
                pair = keys[e.app, e.writer] = (key, hwm_key(key, e.writer or self.instance_id))
            streams[pair[0]][pair[1]].append((e.seq, e.app, values, bool(e.dedupe)))
        return await self._flush(MO_FIELDS, streams)

    async def write_dead(self, entries: Sequence[QuarantineEntry]) -> WriteResult:
        """Write quarantined bodies to the dead-letter streams once each; unknown app: "".

        Failures are reported as in ``write``."""
        streams: Batches = defaultdict(lambda: defaultdict(list))
        for e in sorted(entries, key=lambda e: e.seq):
            values = (e.reason, e.raw, e.app or "", e.pulled_at, DEAD_SCHEMA)
            key = self.keys.dead(e.app)
            streams[key][hwm_key(key, e.writer or self.instance_id)].append(
                (e.seq, e.app or "", values, False)
            )
        return await self._flush(DEAD_FIELDS, streams)

    async def _flush(self, fields: Sequence[str], streams: Batches) -> WriteResult:
        result = WriteResult()
        if not streams:
            return result
        marks: dict[str, int] = {}  # each mark key written -> the seq it must hold now
        try:
            await self._ensure_ready()
            client = self._conn.writer()
            for key, by_mark in streams.items():
                for rows in by_mark.values():
                    for _seq, app, _values, _dedupe in rows:
                        result.written.setdefault(app, 0)
                        result.skipped.setdefault(app, 0)
                try:
                    for mark, rows in by_mark.items():
                        await self._write_stream(client, key, mark, fields, rows, result)
                        marks[mark] = rows[-1][0]
                except ResponseError as exc:
                    if _server_wide(exc):
                        raise
                    text = self._refused(key, exc)
                    for rows in by_mark.values():
                        result.failed.update((app, text) for _seq, app, _values, _d in rows)
                    continue
                await self._trim(client, key)
            # Grouped after the writes: the Cluster client has followed any MOVED by now.
            if marks:
                for node, node_client, keys in self._conn.by_node(list(marks)):
                    await self._durability.confirm(node, node_client, {k: marks[k] for k in keys})
        except SinkError as exc:
            self._unconfirmed(exc, marks)
            self._error("write", exc)
            raise
        except REDIS_ERRORS as exc:
            self._unconfirmed(exc, marks)
            raise self._error("write", exc) from exc
        self._recovered()
        return result

    def _unconfirmed(self, exc: BaseException, marks: dict[str, int]) -> None:
        """A flush failed: its rows stay in the spool; after writes that went in, say so."""
        self._durability.failed(exc)
        if marks:
            metrics.SINK_UNCONFIRMED.inc()

    def _refused(self, key: str, exc: ResponseError) -> str:
        """The text for ``WriteResult.failed``; logged at error level, it needs a human."""
        text = redact.text(f"{type(exc).__name__}: {exc}")
        log.error("redis refused a stream; its rows stay in the spool", stream=key, error=text)
        return text

    async def _write_stream(
        self,
        client: Redis | RedisCluster,
        key: str,
        mark: str,
        fields: Sequence[str],
        rows: list[Row],
        result: WriteResult,
    ) -> None:
        """One writer's rows into one stream; per application, counts go to ``result`` per
        batch (a stream that fails half-way still counts what went in)."""
        # Batches go one after the other, never pipelined: if batch k failed while k+1
        # went in, the mark would pass k's sequence numbers and a retry would skip them.
        header: list[Value] = [str(len(fields)), *fields]
        ttl = str(self.hwm_ttl)
        for start in range(0, len(rows), self.settings.batch_size):
            batch = rows[start : start + self.settings.batch_size]
            window = self.dedupe_window * 1000 if any(r[3] for r in batch) else 0
            keys = (key, mark, seen_key(key)) if window else (key, mark)
            reply = await _WRITE(client, keys, [*header, _pack(batch), ttl, str(window)])
            # Rows come in ascending seq, so the ones at or below the mark (skipped) are
            # the batch's first ones: that tells which application each count belongs to.
            first_new = int(reply[1])
            repeated = {int(at) - 1 for at in reply[2:]}
            for index, (_seq, app, _values, _dedupe) in enumerate(batch):
                if index < first_new:
                    result.skipped[app] += 1
                elif index in repeated:
                    result.duplicates[app] = result.duplicates.get(app, 0) + 1
                else:
                    result.written[app] += 1

    async def _trim(self, client: Redis | RedisCluster, key: str) -> None:
        """Trim after a write; a refusal is logged, the entries are written all the same."""
        try:
            if self.settings.trim == "maxlen":
                await client.xtrim(key, maxlen=self.settings.maxlen, approximate=True)
            elif self.settings.trim == "acked":
                await _TRIM_ACKED(client, (key,), ())
        except ResponseError as exc:
            if _server_wide(exc):
                raise
            log.warning("stream not trimmed", stream=key, error=redact.text(str(exc)))

    # -- status -------------------------------------------------------------------------

    async def trim_retention(self, seconds: int, entries: int) -> int:
        """Trim every stream of the template (dead-letter ones too) to the retention, never
        past an entry a consumer group still needs; the number of entries removed."""
        removed = 0
        try:
            await self._ensure_ready()
            client = self._conn.writer()
            args = (str(seconds * 1000), str(entries), str(RETENTION_STEP))
            for key in await self.reader().scan():
                try:
                    removed += int(await _RETENTION(client, (key,), args))
                except ResponseError as exc:
                    if _server_wide(exc):
                        raise
                    log.warning("stream not trimmed", stream=key, error=redact.text(str(exc)))
        except REDIS_ERRORS as exc:
            raise self._error("trim", exc) from exc
        return removed

    def describe(self) -> str:
        """The Redis URL with its password masked, and the mode."""
        return self._conn.describe()

    async def stream_info(self, apps: Sequence[str] | None = None) -> list[StreamInfo]:
        """Length and consumer groups of these applications' streams, or of every stream
        matching the template (dead-letter streams included)."""
        try:
            if apps is not None:
                names = [self.stream_key(app) for app in apps]
            else:
                names = await self.reader().scan()
            return [await self._one_stream_info(key) for key in names]
        except REDIS_ERRORS as exc:
            raise self._error("stream info", exc) from exc

    async def _one_stream_info(self, key: str) -> StreamInfo:
        client: Redis | RedisCluster = self._conn.scanner()
        length = int(await client.xlen(key))
        groups = (
            [] if length == 0 and not await client.exists(key) else await client.xinfo_groups(key)
        )
        return StreamInfo(key=key, length=length, groups=[_group(g) for g in groups])


def _server_wide(exc: ResponseError) -> bool:
    """True for a reply that is about the server, not about the key: no stream would fare
    better, so the whole write fails (and counts as a Redis outage)."""
    if isinstance(exc, _SERVER_WIDE):
        return True
    text = str(exc)
    return text.startswith(_SERVER_WIDE_CODES) or "unknown command" in text.lower()


def _pack(rows: Sequence[Row]) -> bytes:
    """Entries as ``<length>:<bytes>`` items (seq, then values), the format the script reads."""
    parts: list[bytes] = []
    append = parts.append
    for seq, _app, values, dedupe in rows:
        text = b"d%d" % seq if dedupe else b"%d" % seq
        append(b"%d:%s" % (len(text), text))
        for value in values:
            data = value if isinstance(value, bytes) else value.encode()
            append(b"%d:%s" % (len(data), data))
    return b"".join(parts)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _group(raw: dict[Any, Any]) -> GroupInfo:
    def get(name: str) -> Any:
        return raw.get(name, raw.get(name.encode()))

    lag = get("lag")
    return GroupInfo(
        name=_text(get("name")),
        consumers=int(get("consumers") or 0),
        pending=int(get("pending") or 0),
        lag=None if lag is None else int(lag),
        last_delivered_id=_text(get("last-delivered-id")),
    )


def _server_version(info: dict[Any, Any]) -> str:
    """``valkey 9.1.2`` or ``redis 7.0.15`` from INFO server."""
    name = _text(info.get("server_name") or "redis").lower()
    version = info.get(f"{name}_version") or info.get("redis_version") or "unknown"
    return f"{name} {_text(version)}"


__all__ = ["HWM_TTL_SECONDS", "RedisSink"]
