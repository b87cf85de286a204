"""The one settings model: environment (POLLER_*), an optional TOML file, and .env."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from contextvars import ContextVar
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NestedSecretsSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as PydanticSettingsError

ENV_PREFIX = "POLLER_"
ENV_DELIMITER = "__"
CONFIG_ENV = "POLLER_CONFIG"
# A directory of files named like the variables (Docker and Kubernetes secrets); no default.
SECRETS_DIR_ENV = "POLLER_SECRETS_DIR"
DOTENV_FILE = ".env"
APP_PLACEHOLDER = "${app}"
# The settings each Infobip auth scheme needs.
CREDENTIAL_SETTINGS: dict[str, tuple[str, ...]] = {
    "app": ("api_key",),
    "basic": ("username", "password"),
    "ibsso": ("ibsso_token",),
    "oauth2": ("client_id", "client_secret"),
}

if TYPE_CHECKING:
    from poller.sink.tls import TLSOptions

_toml_file: ContextVar[Path | None] = ContextVar("_toml_file", default=None)
_secrets_dir: ContextVar[Path | None] = ContextVar("_secrets_dir", default=None)


def split_list(value: Any) -> Any:
    """Accept `a,b,c` or a JSON list for list settings given as one string."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("expected a JSON list or comma-separated values") from None
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _Section(BaseModel):
    # A misspelt POLLER_GROUP__NAME or TOML key is an error that names it, not a no-op.
    model_config = ConfigDict(extra="forbid")


class InfobipSettings(_Section):
    """The Infobip account: where, how to authenticate, how hard to pull."""

    base_url: str | None = Field(
        None,
        description="Your account's Infobip API base URL, https://xxxxx.api.infobip.com"
        " (required: each account has its own).",
    )
    auth: Literal["app", "basic", "ibsso", "oauth2"] = Field(
        "app", description="Authentication scheme: app (API key), basic, ibsso, oauth2."
    )
    api_key: SecretStr | None = Field(None, description="API key, sent as `App <key>` (auth=app).")
    username: str | None = Field(None, description="User name for auth=basic.")
    password: SecretStr | None = Field(None, description="Password for auth=basic.")
    ibsso_token: SecretStr | None = Field(None, description="Session token for auth=ibsso.")
    client_id: str | None = Field(None, description="OAuth2 client id for auth=oauth2.")
    client_secret: SecretStr | None = Field(None, description="OAuth2 client secret (auth=oauth2).")
    token_url: str | None = Field(
        None, description="OAuth2 token URL; default <base_url>/auth/1/oauth2/token."
    )
    applications: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Application codes to bootstrap (comma-separated or a JSON list).",
    )
    bootstrap: bool = Field(
        True,
        description="run and once ensure each application's configuration and action at start"
        " (needs the mobile-app-messaging:manage scope); false for a pull-only key.",
    )
    callback_data: str | None = Field(
        None, description="callbackData set on the PULL actions bootstrap creates."
    )
    replace_http_forward: bool = Field(
        False,
        description="Bootstrap deletes an existing HTTP_FORWARD action (else only warns).",
    )
    allow_insecure_http: bool = Field(
        False,
        description="Accept an http:// base or token URL for a host other than loopback"
        " (credentials would cross the network in clear).",
    )
    pull_limit: int = Field(1000, ge=1, le=1000, description="Messages per pull (1..1000).")
    pulls_in_flight: int = Field(
        4,
        ge=1,
        le=32,
        description="Pulls a drain keeps going at once; the rate limit still spaces every call."
        " Keeps the limit's pace while seconds per pull x rate_limit stay below it.",
    )
    rate_limit: float = Field(
        10.0, gt=0, le=1000, description="Requests per second to Infobip, all calls together."
    )
    connect_timeout: float = Field(5.0, gt=0, description="Connect timeout, seconds.")
    read_timeout: float = Field(
        15.0, gt=0, description="Read timeout, seconds (at most grace period - connect - 5)."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Body size a pull answer is held to in memory, bytes; pulls ask for fewer"
        " messages when answers pass half of it, and one past it is read on to disk (up to 8x).",
    )
    max_retries: int = Field(5, ge=0, le=50, description="Retries of one call on transient errors.")
    backoff_base: float = Field(0.5, gt=0, description="First retry delay, seconds (doubles).")
    backoff_max: float = Field(30.0, gt=0, description="Longest retry delay, seconds.")
    retry_after_max: float = Field(
        60.0, gt=0, description="Cap on a server's Retry-After, seconds."
    )

    @field_validator("applications", mode="before")
    @classmethod
    def _split_applications(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(
                "expected an http:// or https:// URL, such as https://xxxxx.api.infobip.com"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_transport(self) -> InfobipSettings:
        for name in ("base_url", "token_url"):
            url = getattr(self, name)
            if url is None:
                continue
            problem = _url_problem(url, allow_http=self.allow_insecure_http)
            if problem:
                raise ValueError(f"{name} ({env_name(('infobip', name))}): {problem}")
        return self

    def credential_problems(self) -> list[str]:
        """What the chosen auth scheme lacks, one line per missing setting."""
        needed = CREDENTIAL_SETTINGS[self.auth]
        return [
            f"infobip.{name} ({env_name(('infobip', name))}): needed for auth={self.auth}"
            for name in needed
            if getattr(self, name) is None
        ]

    def account_problems(self) -> list[str]:
        """What calling Infobip lacks: the account's base URL, the auth scheme's credentials."""
        problems = []
        if self.base_url is None:
            problems.append(
                f"infobip.base_url ({env_name(('infobip', 'base_url'))}): not set; your"
                " account's own base URL, https://xxxxx.api.infobip.com"
            )
        return problems + self.credential_problems()


def _url_problem(url: str, *, allow_http: bool) -> str | None:
    """Why an Infobip URL must not be used: credentials in it, or plain HTTP off this host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "not a URL"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL: set them with the auth settings instead"
    if parts.scheme == "http" and not allow_http and not _loopback(host):
        return (
            "http:// to a host other than this one would send the credentials in clear; use"
            f" https://, or set {env_name(('infobip', 'allow_insecure_http'))}=true"
        )
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RedisSettings(_Section):
    """Where the streams go, and how durable a write must be before the spool lets go."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL: redis://, rediss:// or unix:// (for sentinel: the db and options).",
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
    durability: Literal["none", "wait", "waitaof"] = Field(
        "none",
        description="Wait after each flush: none, wait (replicas), waitaof (AOF fsync).",
    )
    durability_replicas: int = Field(1, ge=0, description="Replicas WAIT/WAITAOF must reach.")
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
        if APP_PLACEHOLDER not in value:
            raise ValueError(f"must contain {APP_PLACEHOLDER} (one stream per application)")
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> RedisSettings:
        if self.mode == "sentinel" and not self.sentinels:
            raise ValueError(f"mode=sentinel needs {ENV_PREFIX}REDIS{ENV_DELIMITER}SENTINELS")
        if self.trim == "maxlen" and self.maxlen <= 0:
            raise ValueError(f"trim=maxlen needs {ENV_PREFIX}REDIS{ENV_DELIMITER}MAXLEN > 0")
        if self.durability != "none" and self.durability_timeout_ms >= self.socket_timeout * 1000:
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
    def tls_on(self) -> bool:
        """True when Redis connections use TLS (the URL's scheme, or the tls setting)."""
        from poller.sink.tls import is_tls_url

        return self.tls if self.tls is not None else is_tls_url(self.url)

    def tls_options(self) -> TLSOptions | None:
        """The TLS options every Redis connection uses, or None when TLS is off."""
        if not self.tls_on:
            return None
        from poller.sink.tls import TLSOptions

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
    from poller.sink import tls

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
    import inspect

    from redis.asyncio.connection import AbstractConnection
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    from poller.sink import tls

    known = set(URL_QUERY_ARGUMENT_PARSERS) | set(
        inspect.signature(AbstractConnection.__init__).parameters
    )
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


class SpoolSettings(_Section):
    """The local durable spool every message is written to first."""

    path: Path = Field(Path("poller-spool.db"), description="SQLite spool file.")
    max_rows: int = Field(1_000_000, ge=1, description="Rows at which pulling pauses.")
    max_bytes: int = Field(1024**3, ge=1024, description="Bytes at which pulling pauses.")


class ScheduleSettings(_Section):
    """When to poll, and how long a stop may take."""

    interval: float = Field(5.0, gt=0, description="Seconds between pull drains (scheduler ticks).")
    jitter: float = Field(
        0.0,
        ge=0,
        description="Random extra delay per tick, seconds: spreads the pulls of several"
        " pollers on one account; each second of it adds to the worst-case latency.",
    )
    cron: str | None = Field(
        None, description="Cron expression (5 fields); replaces interval when set."
    )
    max_pulls_per_cycle: int = Field(
        1000, ge=1, description="Drain at most this many pulls per tick."
    )
    grace_period: float = Field(
        25.0, gt=0, description="Seconds a stop may take (match terminationGracePeriodSeconds)."
    )

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"not a cron expression ({exc})") from None
        return value


class ForwardSettings(_Section):
    """The HTTP forward receiver: Infobip POSTs each message of these applications to it."""

    applications: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Application codes received by HTTP forward instead of pulled"
        " (comma-separated or a JSON list); bootstrap gives them an HTTP_FORWARD action.",
    )
    host: str = Field("127.0.0.1", description="Receiver bind address.")
    port: int = Field(8088, ge=0, le=65535, description="Receiver port.")
    path: str = Field("/infobip/forward", description="Receiver path (the token may follow it).")
    public_url: str | None = Field(
        None,
        description="The receiver's URL as Infobip reaches it (https://.../infobip/forward);"
        " bootstrap sets it as forwardUrl, with the token as a path segment when"
        " token_in=path.",
    )
    token: SecretStr | None = Field(
        None, description="Secret every forwarded request must carry (path segment or header)."
    )
    token_in: Literal["path", "header"] = Field(
        "path",
        description="Where bootstrap puts the token in forwardUrl: path (a segment), or header"
        " (the URL carries none; a proxy adds X-Forward-Token). The receiver accepts both.",
    )
    basic_username: str | None = Field(None, description="Optional HTTP basic auth user name.")
    basic_password: SecretStr | None = Field(None, description="Optional HTTP basic password.")
    callback_data: str | None = Field(
        None, description="callbackData set on the HTTP_FORWARD actions bootstrap creates."
    )
    replace_pull: bool = Field(
        False,
        description="Bootstrap deletes a PULL action (or an HTTP_FORWARD action to another URL)"
        " of a forward application (else only warns).",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="Largest request body, bytes."
    )
    max_bytes_in_flight: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Request bodies read or spooled at once, bytes (declared sizes, or"
        " max_body_bytes when undeclared); past it, 503 with Retry-After. Bounds the memory"
        " of concurrent requests.",
    )
    read_timeout: float = Field(
        10.0, gt=0, description="Seconds a request's headers and body may take to arrive."
    )
    idle_timeout: float = Field(
        75.0, gt=0, description="Seconds an idle keep-alive connection stays open."
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="Connections held at once; at the cap a new one replaces the oldest not"
        " inside a request; lowered to fit the open-file limit.",
    )
    dedupe_window: int = Field(
        3600,
        ge=0,
        description="Seconds a forwarded messageId is remembered per stream, so a delivery"
        " Infobip repeats is not written twice (0: off).",
    )
    tls_cert_file: Path | None = Field(None, description="TLS certificate (PEM) to serve HTTPS.")
    tls_key_file: Path | None = Field(None, description="TLS private key (PEM).")

    @field_validator("applications", mode="before")
    @classmethod
    def _split_applications(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or "{" in value:
            raise ValueError("expected a path such as /infobip/forward (no trailing slash)")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _check(self) -> ForwardSettings:
        name = f"{ENV_PREFIX}FORWARD{ENV_DELIMITER}"
        if self.applications and self.token is None:
            raise ValueError(f"forward applications need {name}TOKEN (a long random secret)")
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError(f"{name}TOKEN must be at least 16 characters")
        if (self.basic_username is None) != (self.basic_password is None):
            raise ValueError(f"{name}BASIC_USERNAME and {name}BASIC_PASSWORD go together")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(f"{name}TLS_CERT_FILE and {name}TLS_KEY_FILE go together")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"no such file: {path}")
        return self

    def forward_url(self) -> str | None:
        """The forwardUrl bootstrap sets: the public URL, with the token when token_in=path."""
        if self.public_url is None:
            return None
        if self.token_in == "path" and self.token is not None:  # noqa: S105 (a mode)  # nosec B105  # a mode, not a secret
            return f"{self.public_url}/{self.token.get_secret_value()}"
        return self.public_url


class HealthSettings(_Section):
    """Probes and metrics."""

    enabled: bool = Field(True, description="Serve /livez, /readyz and /metrics.")
    host: str = Field("127.0.0.1", description="Health server bind address.")
    port: int = Field(9464, ge=0, le=65535, description="Health server port.")
    max_poll_age: float | None = Field(
        None,
        gt=0,
        description="Readiness fails when the last good poll is older (default: derived).",
    )


class LogSettings(_Section):
    """Logs."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto (console on a terminal, else JSON lines), json, console."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Everything the poller can be told."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        env_file=DOTENV_FILE,
        env_file_encoding="utf-8",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    infobip: InfobipSettings = Field(default_factory=InfobipSettings, description="Infobip.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis.")
    spool: SpoolSettings = Field(default_factory=SpoolSettings, description="Spool.")
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings, description="Schedule.")
    forward: ForwardSettings = Field(
        default_factory=ForwardSettings, description="HTTP forward receiver."
    )
    health: HealthSettings = Field(default_factory=HealthSettings, description="Health.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order: arguments, environment, .env, secret files, the TOML file, defaults."""
        dotenv = _DotEnvSource(settings_cls)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv]
        secrets_dir = _secrets_dir.get()
        if secrets_dir is not None:
            # Files named like the variables (POLLER_INFOBIP__API_KEY, any case), one value
            # each, surrounding whitespace (the trailing newline of `echo`) stripped.
            sources.append(
                NestedSecretsSettingsSource(
                    file_secret_settings,
                    secrets_dir=secrets_dir,
                    secrets_dir_missing="error",
                    secrets_prefix=ENV_PREFIX,
                    secrets_nested_delimiter=ENV_DELIMITER,
                )
            )
        toml = _toml_file.get()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @model_validator(mode="after")
    def _register_secrets(self) -> Settings:
        # Every secret setting (any SecretStr field, URL passwords) is masked wherever it
        # could show up, by whatever code holds these settings.
        from poller import redact

        redact.register_settings(self)
        return self

    @model_validator(mode="after")
    def _one_mode_per_application(self) -> Settings:
        both = sorted(set(self.infobip.applications) & set(self.forward.applications))
        if both:
            raise ValueError(
                f"{', '.join(both)}: listed in both {env_name(('infobip', 'applications'))}"
                f" (pulled) and {env_name(('forward', 'applications'))} (forwarded); choose one"
            )
        return self

    @property
    def pulls(self) -> bool:
        """True when the daemon pulls: pull applications are configured, or no forward ones
        (then it pulls whatever reaches the account's inbox)."""
        return bool(self.infobip.applications) or not self.forward.applications

    def start_problems(self, *, bootstrap: bool) -> list[str]:
        """What `run` and `once` lack, found before either touches the disk or the network.

        With bootstrap on, an empty application list is refused: bootstrap would route
        nothing to the inbox, and a forgotten setting would look like a quiet account."""
        problems = self.infobip.account_problems()
        if bootstrap and not (self.infobip.applications or self.forward.applications):
            problems.append(
                f"infobip.applications ({env_name(('infobip', 'applications'))}): none"
                " configured; list the application codes to bootstrap and pull (or"
                f" {env_name(('forward', 'applications'))} for HTTP forward), or set"
                f" {env_name(('infobip', 'bootstrap'))}=false to pull the account's inbox"
                " with the actions it already has"
            )
        return problems

    def stop_problems(self) -> list[str]:
        """Why a graceful stop could not finish a pull in flight; checked by `poller run`.

        A stop lets the pull in flight finish (its messages exist nowhere else), so the grace
        period must leave room for the longest pull and the final flush."""
        needed = self.infobip.connect_timeout + self.infobip.read_timeout + 5
        grace = self.schedule.grace_period
        if grace >= needed:
            return []
        return [
            f"schedule.grace_period ({env_name(('schedule', 'grace_period'))}): {grace:g} s"
            f" is shorter than {env_name(('infobip', 'connect_timeout'))}"
            f" + {env_name(('infobip', 'read_timeout'))} + 5 s ({needed:g} s); a pull in"
            " flight at a stop could not finish"
        ]

    def stream_key(self, app: str | None) -> str:
        """The stream key for one application, None for none (the Redis sink's rule)."""
        from poller.sink.redis import stream_key

        return stream_key(self.redis.stream_key_template, app)

    def max_poll_age(self) -> float:
        """Age of the last good poll past which readiness fails."""
        if self.health.max_poll_age is not None:
            return self.health.max_poll_age
        if self.schedule.cron:
            # A cron schedule may be an hour apart; readiness then waits for two periods.
            from datetime import datetime

            from apscheduler.triggers.cron import CronTrigger

            trigger = CronTrigger.from_crontab(self.schedule.cron, timezone=UTC)
            now = datetime.now(UTC)
            first = trigger.get_next_fire_time(None, now)
            second = trigger.get_next_fire_time(first, first) if first else None
            if first and second:
                period = float((second - first).total_seconds())
                return 2 * period + self.infobip.read_timeout * 2 + 30
        return 3 * (self.schedule.interval + self.schedule.jitter) + self.infobip.read_timeout + 30


class _DotEnvSource(DotEnvSettingsSource):
    """.env read like the environment: other programs' variables (and POLLER_CONFIG, which
    load_settings reads itself) are not settings, so they are left alone instead of failing
    as unknown ones."""

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {key: value for key, value in super().__call__().items() if key in fields}


class SettingsError(Exception):
    """Bad settings: one line per problem, each naming the setting and its env var."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def env_name(loc: tuple[str | int, ...]) -> str:
    """The environment variable of a setting path such as ('infobip', 'api_key')."""
    return ENV_PREFIX + ENV_DELIMITER.join(str(part).upper() for part in loc)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the settings; raise SettingsError naming every bad one."""
    path_text = config_file if config_file is not None else os.environ.get(CONFIG_ENV)
    if path_text is None and Path(DOTENV_FILE).is_file():
        path_text = dotenv_values(DOTENV_FILE).get(CONFIG_ENV)
    path = Path(path_text) if path_text else None
    if path is not None and not path.is_file():
        raise SettingsError([f"{CONFIG_ENV}/--config: no such file: {path}"])
    secrets_dir = _secrets_dir_of()
    token = _toml_file.set(path)
    secrets_token = _secrets_dir.set(secrets_dir)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, prefix=())) from None
    except PydanticSettingsError as exc:  # the secrets directory cannot be read
        raise SettingsError([f"{SECRETS_DIR_ENV} ({secrets_dir}): {exc}"]) from None
    except ValueError as exc:  # a malformed TOML file
        raise SettingsError([f"{path}: {exc}"]) from None
    finally:
        _secrets_dir.reset(secrets_token)
        _toml_file.reset(token)
    return settings


def _secrets_dir_of() -> Path | None:
    """The secrets directory: $POLLER_SECRETS_DIR, else the .env file's; it must exist."""
    text = os.environ.get(SECRETS_DIR_ENV)
    if text is None and Path(DOTENV_FILE).is_file():
        text = dotenv_values(DOTENV_FILE).get(SECRETS_DIR_ENV)
    if not text:
        return None
    directory = Path(text)
    if not directory.is_dir():
        raise SettingsError([f"{SECRETS_DIR_ENV}: no such directory: {directory}"])
    return directory


def _describe(exc: ValidationError, prefix: tuple[str, ...]) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = prefix + tuple(str(p) for p in error["loc"] if not str(p).startswith("function-"))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (misspelt?)"
        if loc:
            dotted = ".".join(loc)
            lines.append(f"{dotted} ({env_name(loc)}): {message}")
        else:
            lines.append(message)
    return lines
