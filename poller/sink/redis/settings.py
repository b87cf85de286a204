"""The Redis sink's settings (``[redis]``, ``POLLER_REDIS__*``): where the streams go, how
durable a write must be before the spool lets go, TLS. Each rule is checked here, once, when
the settings are read; the sink takes the section whole."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode
from redis.asyncio.connection import AbstractConnection
from redis.connection import URL_QUERY_ARGUMENT_PARSERS

from poller.config import ENV_DELIMITER, ENV_PREFIX, Section, split_list
from poller.sink.redis import tls
from poller.sink.redis.keys import template_problem
from poller.sink.redis.tls import TLSOptions, is_tls_url

# What redis-py reads from a URL's query: its parsers, and any connection argument.
_URL_PARAMETERS = frozenset(URL_QUERY_ARGUMENT_PARSERS) | frozenset(
    inspect.signature(AbstractConnection.__init__).parameters
)


class RedisSettings(Section):
    """Where the streams go, and how durable a write must be before the spool lets go."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL: redis://, rediss:// or unix:// (for sentinel: the db and options);"
        " run and once require it (with sink kind redis, unless mode=sentinel): the default"
        " serves the reading commands only.",
    )
    password: SecretStr | None = Field(None, description="Redis password (overrides the URL's).")
    mode: Literal["standalone", "sentinel", "cluster"] = Field(
        "standalone", description="standalone, sentinel or cluster."
    )
    sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Sentinel addresses host:port (mode=sentinel)."
    )
    sentinel_master: str = Field("mymaster", description="Sentinel master name.")
    stream_key_template: str = Field(
        "infobip:push:{${app}}:mo",
        description="Stream key; ${app} is the message's applicationCode.",
    )
    batch_size: int = Field(500, ge=1, le=10000, description="Entries per Lua call.")
    socket_timeout: float = Field(5.0, gt=0, description="Redis socket timeout, seconds.")
    durability: Literal["auto", "none", "wait", "waitaof"] = Field(
        "auto",
        description="When a flush counts as written (then the spool lets its rows go): auto"
        " (WAIT for every replica the deployment lists as healthy; none on a server that never"
        " had one), none (the primary's word: a failover can lose what it acknowledged), wait"
        " (WAIT for durability_replicas, at least 1), waitaof (WAITAOF: AOF fsync). Every mode"
        " also checks the server written to is still the primary.",
    )
    durability_replicas: int | None = Field(
        None,
        ge=0,
        description="Replicas WAIT/WAITAOF must reach (default: every replica the deployment"
        " lists as healthy: the sentinels' replicas, or the primary's connected ones).",
    )
    no_replica: Literal["wait", "degrade"] = Field(
        "wait",
        description="durability=auto when a deployment that had replicas has none left: wait"
        " (rows stay in the spool until one is back; readiness says so) or degrade (count on"
        " the primary alone meanwhile; poller_sink_durability_degraded is 1).",
    )
    durability_local: bool = Field(True, description="WAITAOF also waits for the local fsync.")
    durability_timeout_ms: int = Field(1000, ge=1, description="WAIT/WAITAOF timeout, ms.")
    trim: Literal["none", "acked", "maxlen"] = Field(
        "none",
        description="none; acked (only what every group acknowledged); maxlen (plain MAXLEN ~).",
    )
    maxlen: int = Field(0, ge=0, description="Entries kept per stream with trim=maxlen.")
    retention_seconds: int = Field(
        0,
        ge=0,
        description="Scheduled trim: entries older than this go (0: no age limit); never one a"
        " consumer group has not read and acknowledged.",
    )
    retention_entries: int = Field(
        0,
        ge=0,
        description="Scheduled trim: entries kept per stream (0: no length limit); never"
        " removes one a consumer group has not read and acknowledged.",
    )
    retention_interval: float = Field(
        60.0, gt=0, description="Seconds between scheduled trims (with a retention set)."
    )
    tls: bool | None = Field(
        None,
        description="Connect over TLS (every connection, in every mode); default: on for a"
        " rediss:// URL, off otherwise; true turns it on with a redis:// URL.",
    )
    tls_ca_file: Path | None = Field(
        None, description="CA certificates (PEM) that verify the server (default: the system's)."
    )
    tls_cert_file: Path | None = Field(
        None, description="Client certificate (PEM) for servers with tls-auth-clients."
    )
    tls_key_file: Path | None = Field(
        None, description="The client certificate's private key (PEM), unless in the cert file."
    )
    tls_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted client key (not with mode=cluster)."
    )
    tls_verify: bool = Field(
        True,
        description="Verify the server's certificate; false encrypts without knowing who"
        " answers (testing only).",
    )
    tls_check_hostname: bool = Field(
        True,
        description="The server's certificate must name the host connected to (for sentinel"
        " and cluster: the address each server announces).",
    )
    tls_sentinels: bool | None = Field(
        None,
        description="mode=sentinel: the sentinels speak TLS too (default: as the master)."
        " false for sentinels on a plain port.",
    )

    @field_validator("sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix|valkey|valkeys)://", value):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        problem = _redis_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("stream_key_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        problem = template_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> RedisSettings:
        if self.mode == "sentinel" and not self.sentinels:
            raise ValueError(f"mode=sentinel needs {ENV_PREFIX}REDIS{ENV_DELIMITER}SENTINELS")
        if self.trim == "maxlen" and self.maxlen <= 0:
            raise ValueError(f"trim=maxlen needs {ENV_PREFIX}REDIS{ENV_DELIMITER}MAXLEN > 0")
        if (
            self.durability == "waitaof"
            and not self.durability_local
            and self.durability_replicas == 0
        ):
            raise ValueError(
                f"durability=waitaof needs {ENV_PREFIX}REDIS{ENV_DELIMITER}DURABILITY_LOCAL=true"
                f" or {ENV_PREFIX}REDIS{ENV_DELIMITER}DURABILITY_REPLICAS >= 1"
            )
        for address in self.sentinels:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(
                    f"{ENV_PREFIX}REDIS{ENV_DELIMITER}SENTINELS: {address!r} is not host:port"
                )
        if (
            self.durability in ("wait", "waitaof")
            and self.durability_timeout_ms >= self.socket_timeout * 1000
        ):
            raise ValueError(
                f"{ENV_PREFIX}REDIS{ENV_DELIMITER}DURABILITY_TIMEOUT_MS "
                f"({self.durability_timeout_ms}) must be shorter than "
                f"{ENV_PREFIX}REDIS{ENV_DELIMITER}SOCKET_TIMEOUT ({self.socket_timeout:g} s)"
            )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> RedisSettings:
        problems = _tls_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def wait_timeout_ms(self) -> int:
        """The WAIT/WAITAOF timeout: the setting, kept within the socket timeout (with
        durability=auto the wait must not outlast the connection waiting for it)."""
        return max(1, min(self.durability_timeout_ms, int(self.socket_timeout * 800)))

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The sentinels as (host, port), brackets of an IPv6 address removed."""
        pairs = [address.rpartition(":") for address in self.sentinels]
        return [(host.strip("[]"), int(port)) for host, _, port in pairs]

    @property
    def tls_on(self) -> bool:
        """True when Redis connections use TLS (the URL's scheme, or the tls setting)."""
        return self.tls if self.tls is not None else is_tls_url(self.url)

    def tls_options(self) -> TLSOptions | None:
        """The TLS options every Redis connection uses, or None when TLS is off."""
        if not self.tls_on:
            return None
        password = self.tls_key_password
        return TLSOptions(
            ca_file=self.tls_ca_file,
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
            key_password=password.get_secret_value() if password else None,
            verify=self.tls_verify,
            check_hostname=self.tls_check_hostname,
            sentinels=self.tls_sentinels if self.tls_sentinels is not None else True,
        )


def _tls_problems(redis: RedisSettings) -> list[str]:
    """Why the Redis TLS settings cannot be honoured, one line each (naming the setting)."""
    name = f"{ENV_PREFIX}REDIS{ENV_DELIMITER}"
    scheme = redis.url.partition("://")[0].lower()
    query = redis.url.partition("?")[2]
    problems = [
        f"{param} in {name}URL: set {name}{setting} instead (TLS is configured by settings)"
        for param, setting in tls.URL_QUERY_SETTINGS.items()
        if re.search(rf"(^|&){param}=", query)
    ]
    files = {"TLS_CA_FILE": redis.tls_ca_file, "TLS_CERT_FILE": redis.tls_cert_file}
    files["TLS_KEY_FILE"] = redis.tls_key_file
    given = [f"{name}{key}" for key, value in files.items() if value is not None]
    if redis.tls_key_password is not None:
        given.append(f"{name}TLS_KEY_PASSWORD")
    if redis.tls_sentinels is not None:
        given.append(f"{name}TLS_SENTINELS")
    if redis.tls is False and tls.is_tls_url(redis.url):
        problems.append(f"{name}TLS=false contradicts the {scheme}:// URL")
    if not redis.tls_on:
        if given:
            problems.append(
                f"{', '.join(given)} set but TLS is off: use a rediss:// URL or {name}TLS=true"
            )
        return problems
    if scheme == "unix" and redis.mode == "standalone":
        problems.append(f"TLS over a unix:// socket ({name}URL) is not supported")
    if redis.tls_key_file is not None and redis.tls_cert_file is None:
        problems.append(f"{name}TLS_KEY_FILE needs {name}TLS_CERT_FILE")
    if redis.tls_key_password is not None and redis.tls_cert_file is None:
        problems.append(f"{name}TLS_KEY_PASSWORD needs {name}TLS_CERT_FILE")
    if redis.tls_key_password is not None and redis.mode == "cluster":
        problems.append(
            f"{name}TLS_KEY_PASSWORD is not supported with mode=cluster (redis-py's cluster"
            " client cannot pass it): use an unencrypted key file readable by the poller only"
        )
    for key, path in files.items():
        if path is not None and not _readable(path):
            problems.append(f"{name}{key}: cannot read {path}")
    options = redis.tls_options()
    if not problems and options is not None:
        problems.extend(tls.check(options))
    return problems


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return path.is_file()
    except OSError:
        return False


def _redis_url_problem(url: str) -> str | None:
    """Why a Redis URL cannot be read as meant; never quotes the URL (it may hold a password).

    An unencoded ``@`` in the password is read as urllib and redis-py read it (the last ``@``
    ends the userinfo); an unencoded ``#``, ``?`` or ``/`` cuts the URL short, its host is
    then lost and what follows would be taken for a port, a query or a fragment."""
    advice = (
        "cannot be read as a Redis URL: a # ? or / in the password must be percent-encoded"
        f" (%23 %3F %2F), or the password set with {ENV_PREFIX}REDIS{ENV_DELIMITER}PASSWORD"
    )
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        # urllib keeps a space in the password, but the masks stop at it: its tail would show.
        return "cannot be read as a Redis URL: a space or control character must be percent-encoded"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return advice
    if "#" in url or "@" in parts.path + parts.query:
        # An @ past the host: the password went on after a # ? or /, and its tail would be
        # read as the host, the path or the query.
        return advice
    if parts.scheme == "unix":
        return _redis_query_problem(parts.query) if parts.path else advice
    return _redis_query_problem(parts.query) if parts.hostname else advice


def _redis_query_problem(query: str) -> str | None:
    """Why redis-py would fail on a query parameter at connect (a traceback), naming it
    but never quoting its value."""
    known = _URL_PARAMETERS
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in tls.URL_QUERY_SETTINGS:
            continue  # the TLS checks name the setting to use instead
        if name not in known or name in ("self", "kwargs"):
            shown = repr(name) if re.fullmatch(r"[a-z_]{1,40}", name) else "(not shown)"
            return f"unknown query parameter {shown} in the Redis URL"
        parser: Any = URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parser is not None and value:
            try:
                parser(value)
            except (ValueError, TypeError):
                return f"query parameter {name!r} of the Redis URL has a value redis cannot read"
    return None
