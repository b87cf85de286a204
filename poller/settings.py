"""The one settings model: environment (POLLER_*), an optional TOML file, and .env.

Each stage's section lives beside the stage (``poller.infobip.settings``,
``poller.sink.redis.settings``, ``poller.sources.settings``); the process-wide ones (sink
choice, spool, health, logs) are here.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from apscheduler.triggers.cron import CronTrigger
from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as PydanticSettingsError

from poller import origins, redact
from poller.config import Section, SettingsError
from poller.env import CONFIG_ENV, DOTENV_FILE, ENV_DELIMITER, ENV_PREFIX, SECRETS_DIR_ENV, env_name
from poller.infobip.settings import CREDENTIAL_SETTINGS, InfobipSettings
from poller.sink.redis.settings import RedisSettings
from poller.sources.settings import ForwardSettings, ScheduleSettings

_toml_file: ContextVar[Path | None] = ContextVar("_toml_file", default=None)
_secrets_dir: ContextVar[Path | None] = ContextVar("_secrets_dir", default=None)


class SinkSettings(Section):
    """Which sink the flusher writes to."""

    kind: Literal["redis", "memory"] = Field(
        "redis",
        description="redis: the streams on the [redis] deployment. memory: streams held in the"
        " process (the fast tests; nothing survives the process, so not for production).",
    )


class SpoolSettings(Section):
    """The local durable spool every message is written to first."""

    path: Path = Field(Path("poller-spool.db"), description="SQLite spool file.")
    max_rows: int = Field(1_000_000, ge=1, description="Rows at which pulling pauses.")
    max_bytes: int = Field(1024**3, ge=1024, description="Bytes at which pulling pauses.")


class HealthSettings(Section):
    """Probes and metrics."""

    enabled: bool = Field(True, description="Serve /livez, /readyz and /metrics.")
    host: str = Field("127.0.0.1", description="Health server bind address.")
    port: int = Field(9464, ge=0, le=65535, description="Health server port.")
    heartbeat_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between this poller's heartbeats in the account's replica"
        " registry (on the sink's Redis); one missed 3 times counts as gone.",
    )
    max_poll_age: float | None = Field(
        None,
        gt=0,
        description="Readiness fails when the last good poll is older (default: derived).",
    )


class LogSettings(Section):
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
    sink: SinkSettings = Field(default_factory=SinkSettings, description="Sink.")
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis.")
    spool: SpoolSettings = Field(default_factory=SpoolSettings, description="Spool.")
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings, description="Schedule.")
    forward: ForwardSettings = Field(
        default_factory=ForwardSettings, description="HTTP forward receiver."
    )
    health: HealthSettings = Field(default_factory=HealthSettings, description="Health.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")

    # Which source gave each setting given (dotted name -> origins label), when read by
    # load_settings.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def sections(cls) -> dict[str, type[BaseModel]]:
        """Each section's name and model."""
        found = {}
        for name, info in cls.model_fields.items():
            model = info.annotation
            if isinstance(model, type) and issubclass(model, BaseModel):
                found[name] = model
        return found

    def origin(self, dotted: str) -> str:
        """Where a setting (``redis.url``) came from: env, .env, secrets, TOML, argument (given
        in code) or default."""
        found = self._origins.get(dotted)
        if found is not None:
            return found
        section, _, name = dotted.partition(".")
        given = getattr(self, section).model_fields_set
        return origins.ARGUMENT if name in given else origins.DEFAULT

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
        problems = self.infobip.account_problems() + self.sink_problems()
        if bootstrap and not (self.infobip.applications or self.forward.applications):
            problems.append(
                f"infobip.applications ({env_name(('infobip', 'applications'))}): none"
                " configured; list the application codes to bootstrap and pull (or"
                f" {env_name(('forward', 'applications'))} for HTTP forward), or set"
                f" {env_name(('infobip', 'bootstrap'))}=false to pull the account's inbox"
                " with the actions it already has"
            )
        return problems

    def sink_problems(self) -> list[str]:
        """What writing to the sink lacks: the Redis address, which has no default a start may
        fall back on (127.0.0.1 would quietly be another Redis than the one meant)."""
        if self.sink.kind != "redis" or self.redis.mode == "sentinel":
            return []  # the sentinels give the address
        if "url" in self.redis.model_fields_set:
            return []
        url = env_name(("redis", "url"))
        return [
            f"redis.url ({url}): not set; the Redis the streams go to, such as"
            f" {url}=redis://127.0.0.1:6379/0"
            f" (or {env_name(('redis', 'sentinels'))} with {env_name(('redis', 'mode'))}=sentinel;"
            " `poller demo` brings its own)"
        ]

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

    def max_poll_age(self) -> float:
        """Age of the last good poll past which readiness fails."""
        if self.health.max_poll_age is not None:
            return self.health.max_poll_age
        if self.schedule.cron:
            # A cron schedule may be an hour apart; readiness then waits for two periods.
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


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the settings; raise SettingsError naming every bad one."""
    path_text = config_file if config_file is not None else os.environ.get(CONFIG_ENV)
    if path_text is None and Path(DOTENV_FILE).is_file():
        path_text = dotenv_values(DOTENV_FILE).get(CONFIG_ENV)
    path = Path(path_text) if path_text else None
    if path is not None and not path.is_file():
        raise SettingsError([f"{CONFIG_ENV}/--config: no such file: {path}"])
    secrets_dir = _secrets_dir_of()
    given = origins.read(
        Settings.sections(),
        environ=os.environ,
        dotenv_file=Path(DOTENV_FILE),
        secrets_dir=secrets_dir,
        toml_file=path,
    )
    token = _toml_file.set(path)
    secrets_token = _secrets_dir.set(secrets_dir)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        # The names that are no setting first (pydantic saw those of a section too).
        raise SettingsError(
            given.unknown + _describe(exc, prefix=(), extra=not given.unknown)
        ) from None
    except PydanticSettingsError as exc:  # the secrets directory cannot be read
        raise SettingsError([f"{SECRETS_DIR_ENV} ({secrets_dir}): {exc}"]) from None
    except ValueError as exc:  # a malformed TOML file
        raise SettingsError([f"{path}: {exc}"]) from None
    finally:
        _secrets_dir.reset(secrets_token)
        _toml_file.reset(token)
    if given.unknown:
        raise SettingsError(given.unknown)
    settings._origins = given.origins
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


def _describe(exc: ValidationError, prefix: tuple[str, ...], *, extra: bool = True) -> list[str]:
    """One line per error; ``extra=False`` leaves out the unknown names (reported already)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = prefix + tuple(str(p) for p in error["loc"] if not str(p).startswith("function-"))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            if not extra:
                continue
            known = [
                f"{s}.{n}" for s, model in Settings.sections().items() for n in model.model_fields
            ]
            best = origins.closest(".".join(loc), known)
            message = "not a setting" + (
                f"; did you mean {env_name(tuple(best.split('.')))}?" if best else ""
            )
        if loc:
            dotted = ".".join(loc)
            lines.append(f"{dotted} ({env_name(loc)}): {message}")
        else:
            lines.append(message)
    return lines


__all__ = [
    "CONFIG_ENV",
    "CREDENTIAL_SETTINGS",
    "SECRETS_DIR_ENV",
    "ForwardSettings",
    "HealthSettings",
    "InfobipSettings",
    "LogSettings",
    "RedisSettings",
    "ScheduleSettings",
    "Settings",
    "SettingsError",
    "SinkSettings",
    "SpoolSettings",
    "env_name",
    "load_settings",
]
