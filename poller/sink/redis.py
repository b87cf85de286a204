"""The Redis sink: spooled messages into streams exactly once, then a durability wait.

Every Redis command of the poller lives here (and in the consumer helper). A flush groups
entries by stream and by the spool writer that appended them, and runs one Lua call per
``batch_size`` slice (``lua/write_batch.lua``): it skips every spool sequence number at or
below that writer's high-water mark for the stream, XADDs the rest and raises the mark,
atomically. Replays and redis-py's own retries of a timed-out call therefore add nothing
twice. One WAIT/WAITAOF per flush (per Cluster primary) follows; see ``Sink._wait_durable``
for why it rides behind a write of its own.

Marks are kept per writer because a spool's sequence only grows within one run (a restored
backup numbers its new rows again); every open of the spool is a new writer. A mark expires
``hwm_ttl`` seconds (30 days by default) after its writer's last write, so the keys of past
runs do not pile up. The price: rows of a spool backup older than that, put back, are
written again. A restore can duplicate; it never loses.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

import structlog
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
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
from redis.retry import Retry

from poller import redact
from poller.lua import Script
from poller.sink import (
    DEAD_SCHEMA,
    MO_SCHEMA,
    DurabilityError,
    GroupInfo,
    SinkConfigError,
    SinkError,
    StreamInfo,
    WriteResult,
)
from poller.sink.tls import TLSOptions, hint, refused, ssl_kwargs, tls_url
from poller.spool import QuarantineEntry, SpoolEntry

log = structlog.get_logger(__name__)

APP_PLACEHOLDER = "${app}"
# What stands for ${app} when a quarantined body has no application (not a code's form:
# a real application named so is escaped, see ``app_key``).
NO_APPLICATION = "unknown"
# Characters an application code may hold and still name its stream as it is; everything
# else is percent-encoded (braces would move the Cluster hash tag, colons could meet the
# ``:dead`` suffix, glob characters would defeat the SCAN patterns).
APP_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# Longest ${app} part of a key; a longer encoding is cut and given a hash of the whole code.
APP_KEY_MAX = 100
_APP_KEY_PREFIX = 60
_APP_KEY_HASH = 32  # hex digits of SHA-256: 128 bits
MO_FIELDS = ("id", "app", "received_at", "pulled_at", "payload", "schema")
DEAD_FIELDS = ("reason", "raw", "app", "pulled_at", "schema")

Mode = Literal["standalone", "sentinel", "cluster"]
Durability = Literal["none", "wait", "waitaof"]
Trim = Literal["none", "acked", "maxlen"]
Value = str | bytes
StreamRead = tuple[Redis | RedisCluster, list[str]]  # a client, stream keys
# (spool seq, application, values in field order, skip if its message id was seen lately)
Row = tuple[int, str, Sequence[Value], bool]
Batches = dict[str, dict[str, list[Row]]]  # stream key -> high-water mark key -> rows

# How long a high-water mark outlives its writer's last write.
HWM_TTL_SECONDS = 30 * 24 * 3600
# Settings named in configuration errors (the environment form the operator sets).
_SETTING = "POLLER_REDIS__"

# Every exception redis-py defines: not all derive from RedisError (RedisClusterException,
# raised when no cluster node answers, does not), plus the socket errors it lets through.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    *(
        cls
        for _, cls in inspect.getmembers(redis_exceptions, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == redis_exceptions.__name__
    ),
    OSError,
)

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


_PING_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, SinkError)


_WRITE = Script("write_batch.lua")
_TRIM_ACKED = Script("trim_acked.lua", libraries=("stream_ids.lua",))
_RETENTION = Script("trim_retention.lua", libraries=("stream_ids.lua",))
# Entries one retention call removes at most for the length limit (the next call goes on).
RETENTION_STEP = 10_000


def stream_key(template: str, app: str | None) -> str:
    """The stream key of one application under ``template`` (the one rule for it); None
    (or "") for a quarantined body whose application could not be read."""
    return template.replace(APP_PLACEHOLDER, app_key(app))


def app_key(app: str | None) -> str:
    """What stands for ``${app}`` in a key: distinct codes never share it.

    A code of 1 to ``APP_KEY_MAX`` characters from ``APP_KEY_SAFE`` stands as it is. Any other
    character is percent-encoded (its UTF-8 bytes as ``%XX``; ``%`` itself is not safe, so
    the form decodes back to the code). An encoding longer than ``APP_KEY_MAX`` is cut to its
    first ``_APP_KEY_PREFIX`` characters, then ``~`` and 32 hex digits of the SHA-256 of the
    whole code (``~`` is never in an encoding). No application: ``unknown``; a real
    application named ``unknown`` stands as ``%75nknown`` (its ``u`` encoded)."""
    if not app:
        return NO_APPLICATION
    if app == NO_APPLICATION:
        return f"%{ord(app[0]):02X}{app[1:]}"
    if len(app) <= APP_KEY_MAX and APP_KEY_SAFE.issuperset(app):
        return app
    # Only the start of a long code is encoded: the hash stands for all of it.
    encoded = _percent(app[: APP_KEY_MAX + 1])
    if len(app) <= APP_KEY_MAX and len(encoded) <= APP_KEY_MAX:
        return encoded
    prefix = encoded[:_APP_KEY_PREFIX]
    cut = prefix.rfind("%", len(prefix) - 2)
    if cut != -1:
        prefix = prefix[:cut]  # never half of a %XX
    digest = hashlib.sha256(app.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}~{digest[:_APP_KEY_HASH]}"


def _percent(text: str) -> str:
    return "".join(
        char
        if char in APP_KEY_SAFE
        else "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        for char in text
    )


def has_hash_tag(key: str) -> bool:
    """True when ``key`` has a non-empty Cluster hash tag ``{...}``."""
    start = key.find("{")
    if start == -1:
        return False
    end = key.find("}", start + 1)
    return end > start + 1


class RedisSink:
    """Writes spool entries and quarantined bodies to Redis streams (a ``Sink``)."""

    def __init__(
        self,
        *,
        url: str,
        password: str | None = None,
        mode: Mode = "standalone",
        sentinel_master: str = "mymaster",
        sentinels: Sequence[str] = (),
        key_template: str = "infobip:push:{${app}}:mo",
        instance_id: str,
        durability: Durability = "none",
        durability_replicas: int = 1,
        durability_local: bool = True,
        durability_timeout_ms: int = 1000,
        socket_timeout: float = 5.0,
        batch_size: int = 500,
        trim: Trim = "none",
        maxlen: int = 0,
        hwm_ttl: int = HWM_TTL_SECONDS,
        dedupe_window: int = 3600,
        tls: TLSOptions | None = None,
    ) -> None:
        if APP_PLACEHOLDER not in key_template:
            raise ValueError(f"key_template {key_template!r} must contain {APP_PLACEHOLDER}")
        if not instance_id:
            raise ValueError("instance_id must not be empty")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if trim == "maxlen" and maxlen < 1:
            raise ValueError("trim=maxlen needs maxlen >= 1")
        if durability != "none" and durability_timeout_ms >= socket_timeout * 1000:
            raise ValueError("durability_timeout_ms must be shorter than socket_timeout")
        if durability == "waitaof" and not durability_local and durability_replicas < 1:
            raise ValueError("durability=waitaof needs durability_local or durability_replicas")
        if mode == "sentinel" and not sentinels:
            raise ValueError("mode=sentinel needs at least one sentinel host:port")
        if hwm_ttl < 1:
            raise ValueError("hwm_ttl must be at least 1 second")
        if tls is not None and url.startswith("unix://") and mode == "standalone":
            raise ValueError("TLS over a unix:// socket is not supported")
        self.url = url
        self.mode: Mode = mode
        self.key_template = key_template
        self.instance_id = instance_id
        self.durability: Durability = durability
        self.durability_replicas = durability_replicas
        self.durability_local = durability_local
        self.durability_timeout_ms = durability_timeout_ms
        self.batch_size = batch_size
        self.trim: Trim = trim
        self.maxlen = maxlen
        self.hwm_ttl = hwm_ttl
        self.dedupe_window = dedupe_window
        self._sentinel_master = sentinel_master
        self._sentinel_addrs = [_host_port(s) for s in sentinels]
        self._password = password
        self._tls = tls
        # Masked in every error and log line, however this sink was made.
        redact.register(password)
        redact.register_url(url)
        if tls is not None:
            redact.register(tls.key_password)
        self._socket_timeout = socket_timeout
        self._redis: Redis | None = None
        self._cluster: RedisCluster | None = None
        self._sentinel: Sentinel | None = None
        self._node_clients: dict[str, Redis] = {}
        # Write failures in a row (the "recovered after N tries" line); nothing else counts.
        self._failures = 0
        # True once the server was reached and the durability settings checked against it.
        self._ready = False
        self.server: str | None = None
        sample = self.stream_key("app")
        if key_slot(sample.encode()) != key_slot(self.hwm_key(sample).encode()):
            raise ValueError(
                f"key_template {key_template!r}: its keys cannot share a Cluster slot with their"
                " high-water mark; use a hash tag such as infobip:push:{${app}}:mo"
            )

    # -- keys ---------------------------------------------------------------------------

    def stream_key(self, app: str | None) -> str:
        """The stream of one application (None: no application, for dead letters)."""
        return stream_key(self.key_template, app)

    def dead_key(self, app: str | None) -> str:
        """The dead-letter stream of one application (None: its application is not known)."""
        return self.stream_key(app or None) + ":dead"

    def hwm_key(self, stream_key: str, writer: str | None = None) -> str:
        """The high-water mark key of ``writer`` (default: this instance's id) for
        ``stream_key``, in the same Cluster slot."""
        owner = writer or self.instance_id
        if has_hash_tag(stream_key):
            return f"{stream_key}:hwm:{owner}"
        return f"{{{stream_key}}}:hwm:{owner}"

    def seen_key(self, stream_key: str) -> str:
        """The stream's recently written message ids (forwarded messages), same slot."""
        if has_hash_tag(stream_key):
            return f"{stream_key}:seen"
        return f"{{{stream_key}}}:seen"

    # -- connection ---------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "socket_timeout": self._socket_timeout,
            "socket_connect_timeout": self._socket_timeout,
            "health_check_interval": 30,
            # Few and short: the flusher owns the real retry loop (with backoff and logs).
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
            "client_name": "infobip-push-poller",
            "decode_responses": False,
        }
        if self._password is not None:
            kwargs["password"] = self._password
        return kwargs

    def _tls_kwargs(self, *, sentinel: bool = False) -> dict[str, Any]:
        """``ssl=True`` and the TLS options, for a client built from host and port (every
        connection gets the same ones); empty when TLS is off."""
        if self._tls is None or (sentinel and not self._tls.sentinels):
            return {}
        return {"ssl": True, **ssl_kwargs(self._tls)}

    def _client_url(self) -> str:
        """The URL a client is built from: rediss:// whenever TLS is on."""
        return tls_url(self.url) if self._tls is not None else self.url

    async def connect(self) -> str:
        """Connect, check the durability settings against the server; returns its version.

        Raises SinkConfigError when the server cannot honour the settings (a TLS handshake
        refused over certificates included), SinkError when it cannot be reached. Either way
        the clients stay: the first write finishes a connect that failed (and checks the
        durability settings then, before it writes anything). Safe to call again; it
        replaces the clients."""
        self._ready = False
        try:
            await self._open_clients()
            await self._ensure_ready()
        except SinkError:
            raise
        except REDIS_ERRORS as exc:
            if refused(str(exc)):
                raise SinkConfigError(self._describe("connect", exc)) from exc
            raise self._error("connect", exc) from exc
        return self.server or "unknown"

    async def _ensure_ready(self) -> None:
        """Reach the server and check the settings against it, once per connect()."""
        if self._ready:
            return
        if self._cluster is not None:
            await self._cluster.initialize()  # a no-op once initialized
        info = await self._admin().info("server")
        self.server = _server_version(info)
        await self._check_durability()
        self._ready = True
        log.info("redis connected", url=redact.text(self.url), server=self.server, mode=self.mode)

    async def _open_clients(self) -> None:
        # A second connect() must not leak the first clients, nor fail on closing them.
        await self._close_clients()
        kwargs = self._client_kwargs()
        tls = ssl_kwargs(self._tls) if self._tls is not None else {}
        if self.mode == "cluster":
            kwargs.pop("retry")
            self._cluster = RedisCluster.from_url(self._client_url(), **kwargs, **tls)
        elif self.mode == "sentinel":
            # The URL carries only what the master needs (user, password, db); the address
            # comes from the sentinels.
            for name, value in parse_url(self.url).items():
                if name in ("username", "password", "db"):
                    kwargs.setdefault(name, value)
            # The sentinels get the socket options and, unless told otherwise, TLS: never
            # the master's password.
            sentinel_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
            sentinel_kwargs.update(self._tls_kwargs(sentinel=True))
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                self._sentinel_addrs,
                sentinel_kwargs=sentinel_kwargs,
                **kwargs,
                **self._tls_kwargs(),
            )
            self._redis = self._sentinel.master_for(self._sentinel_master, redis_class=Redis)
        else:
            self._redis = Redis.from_url(self._client_url(), **kwargs, **tls)

    def _admin(self) -> Redis:
        """A client for commands that are not about one key (INFO, CONFIG, PING)."""
        if self._cluster is not None:
            primaries = self._cluster.get_primaries()
            if not primaries:
                raise SinkError("sink is not connected to the cluster yet")
            return self._node_client(primaries[0])
        if self._redis is None:
            raise SinkError("sink is not connected (call connect() first)")
        return self._redis

    def _node_client(self, node: ClusterNode) -> Redis:
        """A client for one Cluster primary: WAIT/WAITAOF and INFO have no key to route by."""
        client = self._node_clients.get(node.name)
        if client is None:
            kwargs = self._client_kwargs()
            parts = urlsplit(self.url)
            # Percent-decoded, as redis-py reads the URL of the cluster client itself.
            if parts.username:
                kwargs["username"] = unquote(parts.username)
            if self._password is None and parts.password:
                kwargs["password"] = unquote(parts.password)
            kwargs.update(self._tls_kwargs())
            client = Redis(host=node.host, port=int(node.port), **kwargs)
            self._node_clients[node.name] = client
        return client

    async def _check_durability(self) -> None:
        admin = self._admin()
        if self.durability == "waitaof":
            local = 1 if self.durability_local else 0
            if self.durability_local and await self._config_get(admin, "appendonly") == "no":
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
            if self.durability_local and fsync not in (None, "always"):
                log.warning(
                    "waitaof with appendfsync != always answers before the fsync",
                    appendfsync=fsync,
                )
        if self.durability == "wait" and self.mode != "cluster":
            replicas = (await admin.info("replication")).get("connected_slaves", 0)
            if int(replicas) < self.durability_replicas:
                log.warning(
                    "fewer replicas connected than durability_replicas; writes will fail",
                    connected=replicas,
                    wanted=self.durability_replicas,
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
        error = await self._close_clients()
        if error is not None:
            raise self._error("close", error) from error

    async def _close_clients(self) -> BaseException | None:
        """Close and forget every client; returns the first error instead of raising it."""
        clients: list[Any] = [*self._node_clients.values(), self._redis, self._cluster]
        if self._sentinel is not None:
            clients.extend(self._sentinel.sentinels)
        self._node_clients.clear()
        self._redis = self._cluster = self._sentinel = None
        self._ready = False
        first: BaseException | None = None
        for client in clients:
            if client is None:
                continue
            try:
                await client.aclose()
            except REDIS_ERRORS as exc:
                first = first or exc
        return first

    async def ping(self) -> bool:
        """True when Redis answers. A probe, not a write: it leaves the write-failure count
        (and its "recovered" line) alone."""
        try:
            if self._cluster is not None:
                await self._cluster.ping()
            else:
                await self._admin().ping()
        except _PING_ERRORS as exc:
            log.debug("redis ping failed", error=self._describe("ping", exc))
            return False
        return True

    # -- errors -------------------------------------------------------------------------

    def _describe(self, op: str, exc: BaseException) -> str:
        text = f"redis {op} failed ({self.url}): {type(exc).__name__}: {exc}"
        advice = hint(str(exc), tls_on=self._tls is not None)
        if advice is not None:
            text += f" ({advice})"
        return redact.text(text)

    def _error(self, op: str, exc: BaseException) -> SinkError:
        """Turn ``exc`` into a SinkError with no secret in it; a write failure is counted."""
        message = self._describe(op, exc)
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
                url=redact.text(self.url),
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
                pair = keys[e.app, e.writer] = (key, self.hwm_key(key, e.writer))
            streams[pair[0]][pair[1]].append((e.seq, e.app, values, bool(e.dedupe)))
        return await self._flush(MO_FIELDS, streams)

    async def write_dead(self, entries: Sequence[QuarantineEntry]) -> WriteResult:
        """Write quarantined bodies to the dead-letter streams once each; unknown app: "".

        Failures are reported as in ``write``."""
        streams: Batches = defaultdict(lambda: defaultdict(list))
        for e in sorted(entries, key=lambda e: e.seq):
            values = (e.reason, e.raw, e.app or "", e.pulled_at, DEAD_SCHEMA)
            key = self.dead_key(e.app)
            streams[key][self.hwm_key(key, e.writer)].append((e.seq, e.app or "", values, False))
        return await self._flush(DEAD_FIELDS, streams)

    async def _flush(self, fields: Sequence[str], streams: Batches) -> WriteResult:
        result = WriteResult()
        if not streams:
            return result
        try:
            await self._ensure_ready()
            client = self._writer()
            marks: list[str] = []  # the mark keys written: what the durability wait covers
            for key, by_mark in streams.items():
                for rows in by_mark.values():
                    for _seq, app, _values, _dedupe in rows:
                        result.written.setdefault(app, 0)
                        result.skipped.setdefault(app, 0)
                try:
                    for mark, rows in by_mark.items():
                        await self._write_stream(client, key, mark, fields, rows, result)
                        marks.append(mark)
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
                for node_client, keys in self._by_node(marks):
                    await self._wait_durable(node_client, keys[-1])
        except SinkError as exc:
            self._error("write", exc)
            raise
        except REDIS_ERRORS as exc:
            raise self._error("write", exc) from exc
        self._recovered()
        return result

    def _refused(self, key: str, exc: ResponseError) -> str:
        """The text for ``WriteResult.failed``; logged at error level, it needs a human."""
        text = redact.text(f"{type(exc).__name__}: {exc}")
        log.error("redis refused a stream; its rows stay in the spool", stream=key, error=text)
        return text

    def _writer(self) -> Redis | RedisCluster:
        """The client for keyed commands (the Cluster client follows MOVED by itself)."""
        if self._cluster is not None:
            return self._cluster
        if self._redis is None:
            raise SinkError("sink is not connected (call connect() first)")
        return self._redis

    def _by_node(self, keys: list[str]) -> list[tuple[Redis, list[str]]]:
        """Keys grouped by the server that holds them, with a client for that server."""
        if self._cluster is None:
            return [(cast(Redis, self._writer()), keys)]
        groups: dict[str, list[str]] = defaultdict(list)
        clients: dict[str, Redis] = {}
        for key in keys:
            node = self._cluster.get_node_from_key(key)
            if node is None:
                raise SinkError(f"no cluster node serves the slot of {key}")
            clients[node.name] = self._node_client(node)
            groups[node.name].append(key)
        return [(clients[name], node_keys) for name, node_keys in groups.items()]

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
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            window = self.dedupe_window * 1000 if any(r[3] for r in batch) else 0
            keys = (key, mark, self.seen_key(key)) if window else (key, mark)
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
            if self.trim == "maxlen":
                await client.xtrim(key, maxlen=self.maxlen, approximate=True)
            elif self.trim == "acked":
                await _TRIM_ACKED(client, (key,), ())
        except ResponseError as exc:
            if _server_wide(exc):
                raise
            log.warning("stream not trimmed", stream=key, error=redact.text(str(exc)))

    async def _wait_durable(self, client: Redis, mark: str) -> None:
        """One WAIT or WAITAOF covering every write of this flush on ``client``'s server.

        Both commands are documented to wait only for the writes of the connection they run
        on, and the writes may have used another pooled connection or one redis-py has since
        reconnected. So WAIT travels in a pipeline (one connection, resent whole by redis-py's
        retries) behind ``INCRBY <mark> 0`` on a high-water mark this flush wrote (it exists,
        and keeps its TTL): a write that follows all of them in the replication stream, so
        acknowledging it acknowledges them. (Redis 7.0.15 and Valkey
        9.1.2 were seen to wait for their whole offset anyway; this does not rely on it.)

        WAITAOF with ``appendfsync everysec`` answers before the data is fsynced: only
        ``appendfsync always`` makes its local acknowledgement mean "on disk".
        """
        if self.durability == "none":
            return
        timeout = self.durability_timeout_ms
        local = 1 if self.durability_local else 0
        pipe = client.pipeline(transaction=False)
        pipe.incrby(mark, 0)
        if self.durability == "wait":
            pipe.wait(self.durability_replicas, timeout)
        else:
            pipe.waitaof(local, self.durability_replicas, timeout)
        reply = (await pipe.execute())[1]
        if self.durability == "wait":
            got = int(reply)
            if got < self.durability_replicas:
                raise DurabilityError(
                    f"WAIT: {got} of {self.durability_replicas} replicas acknowledged"
                    f" within {timeout} ms"
                )
            return
        got_local, got_replicas = int(reply[0]), int(reply[1])
        if got_local < local or got_replicas < self.durability_replicas:
            raise DurabilityError(
                f"WAITAOF: local fsync {got_local}/{local}, replicas"
                f" {got_replicas}/{self.durability_replicas} within {timeout} ms"
            )

    # -- status -------------------------------------------------------------------------

    async def trim_retention(self, seconds: int, entries: int) -> int:
        """Trim every stream of the template (dead-letter ones too) to the retention, never
        past an entry a consumer group still needs; the number of entries removed."""
        removed = 0
        try:
            await self._ensure_ready()
            client = self._writer()
            args = (str(seconds * 1000), str(entries), str(RETENTION_STEP))
            for key in await self._scan_streams():
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
        return f"{redact.text(self.url)} ({self.mode})"

    async def stream_info(self, apps: Sequence[str] | None = None) -> list[StreamInfo]:
        """Length and consumer groups of these applications' streams, or of every stream
        matching the template (dead-letter streams included)."""
        try:
            if apps is not None:
                names = [self.stream_key(app) for app in apps]
            else:
                names = await self._scan_streams()
            return [await self._one_stream_info(key) for key in names]
        except REDIS_ERRORS as exc:
            raise self._error("stream info", exc) from exc

    async def reader(self, apps: Sequence[str] = (), *, dead: bool = False) -> StreamRead:
        """A client and the stream keys of these applications (every stream of the template
        when none is named), dead-letter streams with ``dead``: for ``poller tail``."""
        try:
            await self._ensure_ready()
            if apps:
                keys = [self.dead_key(a) if dead else self.stream_key(a) for a in apps]
            else:
                keys = [k for k in await self._scan_streams() if k.endswith(":dead") == dead]
        except REDIS_ERRORS as exc:
            raise self._error("scan", exc) from exc
        return self._writer(), keys

    async def _scan_streams(self) -> list[str]:
        pattern = self.key_template.replace(APP_PLACEHOLDER, "*")
        found: set[str] = set()
        client: Redis | RedisCluster = self._cluster or self._admin()
        for match in (pattern, pattern + ":dead"):
            async for key in client.scan_iter(match=match, count=1000, _type="stream"):
                found.add(key.decode() if isinstance(key, bytes) else key)
        return sorted(found)

    async def _one_stream_info(self, key: str) -> StreamInfo:
        client: Redis | RedisCluster = self._cluster or self._admin()
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


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"sentinel address {value!r} must be host:port")
    return host.strip("[]"), int(port)


__all__ = ["RedisSink", "app_key", "has_hash_tag", "stream_key"]
