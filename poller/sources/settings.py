"""The sources' settings: the pull schedule (``[schedule]``) and the HTTP forward receiver
(``[forward]``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from apscheduler.triggers.cron import CronTrigger
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from poller.config import ENV_DELIMITER, ENV_PREFIX, Section, split_list


class ScheduleSettings(Section):
    """When to poll, and how long a stop may take."""

    interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between pull drains while the inbox stays empty (after the hot"
        " period and the back-off); the most an idle poller asks.",
    )
    hot_interval: float = Field(
        0.2,
        gt=0,
        description="Seconds between drains for hot_period after an answer that held messages:"
        " while messages flow, a message waits about this long at Infobip (0.2: p99 under"
        " 0.5 s at a steady 100 msg/s). Every call still waits for the request budget.",
    )
    hot_period: float = Field(
        30.0,
        ge=0,
        description="Seconds the hot interval lasts after the last answer with messages; then"
        " the interval doubles at each empty answer up to `interval` (0: no hot period).",
    )
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
        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"not a cron expression ({exc})") from None
        return value

    @model_validator(mode="after")
    def _check_cadence(self) -> ScheduleSettings:
        if self.hot_interval > self.interval:
            raise ValueError(
                f"{ENV_PREFIX}SCHEDULE{ENV_DELIMITER}HOT_INTERVAL ({self.hot_interval:g} s) must"
                f" not be longer than {ENV_PREFIX}SCHEDULE{ENV_DELIMITER}INTERVAL"
                f" ({self.interval:g} s)"
            )
        return self


class ForwardSettings(Section):
    """The HTTP forward receiver: Infobip POSTs each message of these applications to it."""

    applications: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Application codes received by HTTP forward instead of pulled"
        " (comma-separated or a JSON list); bootstrap gives them an HTTP_FORWARD action. The"
        " receiver writes only these applications' messages to streams (the rest: quarantine).",
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
        " max_body_bytes when undeclared, and what compressed bodies decode to as it comes);"
        " past it, 503 with Retry-After. Bounds the memory of concurrent requests.",
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
