"""The Infobip account's settings: where, how to authenticate, how hard to pull."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from poller.config import Section, env_name, split_list

# The settings each Infobip auth scheme needs.
CREDENTIAL_SETTINGS: dict[str, tuple[str, ...]] = {
    "app": ("api_key",),
    "basic": ("username", "password"),
    "ibsso": ("ibsso_token",),
    "oauth2": ("client_id", "client_secret"),
}


class InfobipSettings(Section):
    """The Infobip account: where, how to authenticate, how hard to pull."""

    base_url: str | None = Field(
        None,
        description="Your account's Infobip API base URL, https://xxxxx.api.infobip.com, no path"
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
        8.0,
        gt=0,
        le=1000,
        description="Requests per second to Infobip that every poller of this account takes"
        " together (every call: pulls, bootstrap, retries). Infobip allows 10 per account: the"
        " default leaves 2/s for other users of the same key (the CLI, other integrations).",
    )
    rate_limit_scope: Literal["shared", "local"] = Field(
        "shared",
        description="shared: one budget for every poller of the account, kept in the sink's"
        " Redis (a 429 pauses them all; while Redis is unreachable each falls back to its share"
        " of the rate); local: this process alone (one poller per account).",
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
        problem = _path_problem(value)
        if problem:
            raise ValueError(problem)
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


def _path_problem(url: str) -> str | None:
    """Why a base URL with a path, query or fragment cannot work: the poller adds each API
    path (/push/1/inbox/reports) to the base URL, so ``.../push/1`` would ask for
    ``/push/1/push/1/...`` and meet 404s that look like unknown applications."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None  # _url_problem names it
    if not (parts.path.strip("/") or parts.query or parts.fragment):
        return None
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    base = f"{parts.scheme}://{shown}" + (f":{port}" if port is not None else "")
    # The path is shown, a query or fragment is not (it might carry a key).
    extra = parts.path.rstrip("/") or ("a query" if parts.query else "a fragment")
    return (
        f"the base URL takes no path ({extra}): the poller adds the API paths itself; write {base}"
    )


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
