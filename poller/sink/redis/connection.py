"""Connections to the Redis deployment the settings name: standalone, sentinel or cluster, with
the same TLS options and timeouts on every client, and redis-py's errors mapped once into the
sink's (``SinkError``, with no secret in the text)."""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import structlog
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from poller import redact
from poller.sink import SinkError
from poller.sink.redis.settings import RedisSettings
from poller.sink.redis.tls import hint, ssl_kwargs, tls_url

log = structlog.get_logger(__name__)

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
_PING_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, SinkError)

Client = Redis | RedisCluster


class Connections:
    """The clients of one deployment; ``open`` (again) replaces them."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.url = settings.url
        self._password = settings.password.get_secret_value() if settings.password else None
        self._tls = settings.tls_options()
        # Masked in every error and log line, however these settings were made.
        redact.register(self._password)
        redact.register_url(self.url)
        if self._tls is not None:
            redact.register(self._tls.key_password)
        self._redis: Redis | None = None
        self._cluster: RedisCluster | None = None
        self._sentinel: Sentinel | None = None
        self._node_clients: dict[str, Redis] = {}

    @property
    def tls_on(self) -> bool:
        """True when every connection uses TLS."""
        return self._tls is not None

    @property
    def sentinel(self) -> Sentinel | None:
        """The sentinels (mode=sentinel), else None."""
        return self._sentinel

    async def reset_master(self) -> None:
        """Drop the connections to the master (mode=sentinel): the next ones ask the
        sentinels where it is now, instead of writing on to a demoted one."""
        if self._sentinel is not None and self._redis is not None:
            await self._redis.connection_pool.disconnect()

    @property
    def cluster(self) -> RedisCluster | None:
        """The cluster client (mode=cluster), else None."""
        return self._cluster

    def _client_kwargs(self) -> dict[str, Any]:
        timeout = self.settings.socket_timeout
        kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
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

    async def open(self) -> None:
        """Build the clients anew (connections are made on first use)."""
        # A second open must not leak the first clients, nor fail on closing them.
        await self.close()
        self._build()

    def _build(self) -> None:
        kwargs = self._client_kwargs()
        tls = ssl_kwargs(self._tls) if self._tls is not None else {}
        mode = self.settings.mode
        if mode == "cluster":
            kwargs.pop("retry")
            self._cluster = RedisCluster.from_url(self._client_url(), **kwargs, **tls)
        elif mode == "sentinel":
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
                self.settings.sentinel_addresses(),
                sentinel_kwargs=sentinel_kwargs,
                **kwargs,
                **self._tls_kwargs(),
            )
            self._redis = self._sentinel.master_for(
                self.settings.sentinel_master, redis_class=Redis
            )
        else:
            self._redis = Redis.from_url(self._client_url(), **kwargs, **tls)

    def writer(self) -> Client:
        """The client for keyed commands (the Cluster client follows MOVED by itself)."""
        self._ensure_built()
        if self._cluster is not None:
            return self._cluster
        assert self._redis is not None  # nosec B101  # _ensure_built made one: narrows the type
        return self._redis

    def _ensure_built(self) -> None:
        """Clients exist from the first use on, whether ``open`` ran or not."""
        if self._redis is None and self._cluster is None:
            self._build()

    def admin(self) -> Redis:
        """A client for commands that are not about one key (INFO, CONFIG, PING)."""
        self._ensure_built()
        if self._cluster is not None:
            primaries = self._cluster.get_primaries()
            if not primaries:
                raise SinkError("sink is not connected to the cluster yet")
            return self.node_client(primaries[0])
        assert self._redis is not None  # nosec B101  # _ensure_built made one: narrows the type
        return self._redis

    def scanner(self) -> Client:
        """The client SCAN goes through (every node, for a cluster)."""
        return self._cluster or self.admin()

    def node_client(self, node: ClusterNode) -> Redis:
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

    def by_node(self, keys: list[str]) -> list[tuple[str, Redis, list[str]]]:
        """Keys grouped by the server that holds them: its name, a client for it, the keys."""
        if self._cluster is None:
            return [("primary", cast(Redis, self.writer()), keys)]
        groups: dict[str, list[str]] = defaultdict(list)
        clients: dict[str, Redis] = {}
        for key in keys:
            node = self._cluster.get_node_from_key(key)
            if node is None:
                raise SinkError(f"no cluster node serves the slot of {key}")
            clients[node.name] = self.node_client(node)
            groups[node.name].append(key)
        return [(name, clients[name], node_keys) for name, node_keys in groups.items()]

    async def close(self) -> BaseException | None:
        """Close and forget every client; returns the first error instead of raising it."""
        clients: list[Any] = [*self._node_clients.values(), self._redis, self._cluster]
        if self._sentinel is not None:
            clients.extend(self._sentinel.sentinels)
        self._node_clients.clear()
        self._redis = self._cluster = self._sentinel = None
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
        """True when the deployment answers PING."""
        try:
            if self._cluster is not None:
                await self._cluster.ping()
            else:
                await self.admin().ping()
        except _PING_ERRORS as exc:
            log.debug("redis ping failed", error=self.describe_error("ping", exc))
            return False
        return True

    def describe_error(self, op: str, exc: BaseException) -> str:
        """One line for a failed operation: what, where, why, and what to check (TLS)."""
        text = f"redis {op} failed ({self.url}): {type(exc).__name__}: {exc}"
        advice = hint(str(exc), tls_on=self._tls is not None)
        if advice is not None:
            text += f" ({advice})"
        return redact.text(text)

    def describe(self) -> str:
        """The Redis URL with its password masked, and the mode."""
        return f"{redact.text(self.url)} ({self.settings.mode})"
