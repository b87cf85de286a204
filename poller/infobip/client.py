"""The Infobip client: every configuration, action and pull operation, over httpx."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import structlog
from pydantic import BaseModel, ValidationError

from poller import __version__, backoff, offload
from poller.config import SettingsError, env_name
from poller.infobip.auth import HeaderAuth, OAuth2ClientCredentials
from poller.infobip.body import scan_pull
from poller.infobip.errors import (
    ApiError,
    ConflictError,
    InfobipError,
    MalformedResponseError,
    NotFoundError,
    ServerError,
    ThrottledError,
    TransportError,
    api_error,
    transport_error,
)
from poller.infobip.models import (
    Action,
    ActionList,
    ActionRequest,
    Configuration,
    ConfigurationList,
    PullResponse,
)
from poller.infobip.ratelimit import Budget, TokenBucket
from poller.infobip.reading import (
    Body,
    ChunkHook,
    LoopAuth,
    Readers,
)
from poller.infobip.settings import InfobipSettings
from poller.stop import Stop

log = structlog.get_logger(__name__)

USER_AGENT = f"infobip-push-poller/{__version__}"
PULL_PATH = "/push/1/inbox/reports"
# Named by an error that could not reach the account's host.
BASE_URL_SETTING = env_name(("infobip", "base_url"))
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Hooks for metrics: called with a reason ("timeout", "5xx", "429", ...) on each retry.
RetryHook = Callable[[str], None]


class _Ambiguous(Exception):
    """A write may or may not have been applied (timeout or 5xx after sending).

    `in_flight` is True when no answer came back (a timeout, a lost connection): the server
    may still be working on the request and apply it after the client gave up."""

    def __init__(
        self, cause: Exception, retry_after: float | None = None, *, in_flight: bool = False
    ) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after = retry_after
        self.in_flight = in_flight


def build_auth(settings: InfobipSettings) -> httpx.Auth:
    """The httpx auth for the configured scheme; SettingsError when a credential is missing."""
    problems = settings.credential_problems()
    if problems:
        raise SettingsError(problems)
    if settings.auth == "app":
        assert settings.api_key is not None  # nosec B101  # credential_problems() refused a missing one above
        return HeaderAuth.app(settings.api_key.get_secret_value())
    if settings.auth == "basic":
        assert settings.username is not None  # nosec B101  # credential_problems() refused a missing one above
        assert settings.password is not None  # nosec B101  # credential_problems() refused a missing one above
        return HeaderAuth.basic(settings.username, settings.password.get_secret_value())
    if settings.auth == "ibsso":
        assert settings.ibsso_token is not None  # nosec B101  # credential_problems() refused a missing one above
        return HeaderAuth.ibsso(settings.ibsso_token.get_secret_value())
    assert settings.client_id is not None  # nosec B101  # credential_problems() refused a missing one above
    assert settings.client_secret is not None  # nosec B101  # credential_problems() refused a missing one above
    return OAuth2ClientCredentials(
        settings.token_url or f"{settings.base_url}/auth/1/oauth2/token",
        settings.client_id,
        settings.client_secret.get_secret_value(),
        timeout=settings.read_timeout,
        headers={"User-Agent": USER_AGENT},
        url_setting=env_name(("infobip", "token_url" if settings.token_url else "base_url")),
    )


def parse_retry_after(value: str | None, cap: float) -> float | None:
    """Retry-After as seconds, from delta-seconds or an HTTP date; capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            return None
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), cap)


class InfobipClient:
    """Async client for one Infobip account; share one instance per process."""

    def __init__(
        self,
        settings: InfobipSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: RetryHook | None = None,
        stop: Stop | None = None,
        on_throttled: Callable[[str], None] | None = None,
        budget: Budget | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        """``budget``: the account's request budget (default: this process's own, at
        POLLER_INFOBIP__RATE_LIMIT); ``on_throttled`` hears of every 429, with the kind of
        budget the call was made under."""
        self.settings = settings
        self._on_throttled = on_throttled
        self._on_wait = on_wait  # seconds each call waited for its turn
        problems = settings.account_problems()
        if problems:
            raise SettingsError(problems)
        assert settings.base_url is not None  # nosec B101  # account_problems() refused a missing one: narrows the type
        self._auth = build_auth(settings)
        # Evenly spaced, no burst: Infobip counts requests per second, so a burst that a bucket
        # allows can still land 11 calls in one of Infobip's windows.
        self.budget: Budget = budget or TokenBucket(settings.rate_limit, burst=1.0)
        self._on_retry = on_retry
        # Once a stop is asked for, no new pull is sent (retries included).
        self.stop = stop
        options = client_options(settings, self._auth)
        self._http = httpx.AsyncClient(transport=transport, **options)
        # Pull answers are read by threads of their own, each into its journal file as the
        # bytes arrive, so that what the event loop is doing meanwhile (parsing, spooling,
        # flushing) cannot leave an answer in the socket's buffers, where a kill takes it.
        # A transport given (an in-memory one in tests) serves the pulls on the loop.
        self._readers: Readers | None = None
        if transport is None:
            self._readers = Readers(httpx.Client(**options), settings.pulls_in_flight)

    @property
    def stopping(self) -> bool:
        """True once the stop this client was given has been asked for."""
        return self.stop is not None and self.stop.requested

    async def __aenter__(self) -> InfobipClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pools (a pull answer still being read is read to its end)."""
        await self._http.aclose()
        if self._readers is not None:
            self._readers.close()

    def _thread_auth(self) -> httpx.Auth:
        """The auth of a request sent from a reader thread: the client's own when it works
        in both worlds (a fixed header), else one whose flow runs on this event loop (OAuth2:
        one token, fetched and cached there for every call)."""
        auth = self._auth
        kind = type(auth)
        plain = (
            kind.sync_auth_flow is httpx.Auth.sync_auth_flow
            and kind.async_auth_flow is httpx.Auth.async_auth_flow
        )
        if plain:
            return auth
        wait = self.settings.connect_timeout + self.settings.read_timeout
        return LoopAuth(auth, asyncio.get_running_loop(), wait)

    # -- configurations ---------------------------------------------------------------

    async def list_configurations(self, app: str) -> list[Configuration]:
        """All configurations of an application."""
        body = await self._call("GET", _configs(app))
        return self._model(ConfigurationList, body, f"GET {_configs(app)}").configurations

    async def get_configuration(self, app: str, key: str) -> Configuration:
        """One configuration."""
        path = f"{_configs(app)}/{_seg(key)}"
        return self._model(Configuration, await self._call("GET", path), f"GET {path}")

    async def create_configuration(self, app: str) -> Configuration:
        """Create the application's configuration; ConflictError when one exists already."""
        path = _configs(app)

        async def existing() -> Configuration | None:
            found = await self.list_configurations(app)
            return found[0] if found else None

        body = await self._create(path, None, existing)
        if isinstance(body, Configuration):
            return body
        return self._model(Configuration, body, f"POST {path}")

    async def delete_configuration(self, app: str, key: str) -> None:
        """Delete a configuration (and with it, its actions)."""
        await self._call("DELETE", f"{_configs(app)}/{_seg(key)}")

    # -- actions ----------------------------------------------------------------------

    async def list_actions(self, app: str, config_key: str) -> list[Action]:
        """All actions of a configuration."""
        path = _actions(app, config_key)
        return self._model(ActionList, await self._call("GET", path), f"GET {path}").actions

    async def create_action(self, app: str, config_key: str, request: ActionRequest) -> Action:
        """Create an action; a timed-out attempt is checked by listing before any retry."""
        path = _actions(app, config_key)

        async def existing() -> Action | None:
            for action in await self.list_actions(app, config_key):
                if request.matches(action):
                    return action
            return None

        body = await self._create(path, request.body(), existing)
        if isinstance(body, Action):
            return body
        return self._model(Action, body, f"POST {path}")

    async def delete_action(self, app: str, config_key: str, action_key: str) -> None:
        """Delete an action."""
        await self._call("DELETE", f"{_actions(app, config_key)}/{_seg(action_key)}")

    # -- pull -------------------------------------------------------------------------

    async def pull(
        self, limit: int | None = None, *, on_chunk: ChunkHook | None = None
    ) -> PullResponse:
        """One destructive pull. Raises MalformedResponseError (with the bytes) on a bad body.

        ``on_chunk`` is called with each piece of a 2xx answer's body as it arrives, before
        the next is read, in a reader thread of this client's (the pull source journals them:
        a kill mid-body then loses only what is still in the socket, however busy the event
        loop is)."""
        limit = self.settings.pull_limit if limit is None else limit
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        operation = f"GET {PULL_PATH}"
        body = await self._call(
            "GET", PULL_PATH, params={"limit": limit}, keep_partial=True, on_chunk=on_chunk
        )
        return await offload.run(len(body), parse_pull, body, operation)

    # -- transport --------------------------------------------------------------------

    async def _create(
        self,
        path: str,
        payload: dict[str, Any] | None,
        existing: Callable[[], Awaitable[T | None]],
    ) -> bytes | T:
        attempts = self.settings.max_retries + 1
        ambiguous = False
        for attempt in range(attempts):
            try:
                return await self._call("POST", path, json_body=payload, ambiguous_raises=True)
            except ConflictError:
                # After an unanswered attempt, a 409 most likely means that attempt was applied.
                if not ambiguous:
                    raise
                found = await existing()
                if found is None:
                    raise
                log.info("create had been applied; not creating again", path=path)
                return found
            except _Ambiguous as exc:
                ambiguous = True
                log.warning(
                    "create may have been applied; listing before any retry",
                    path=path,
                    error=str(exc.cause),
                )
                found = await self._await_applied(existing, watch=exc.in_flight)
                if found is not None:
                    log.info("create had been applied; not creating again", path=path)
                    return found
                if attempt + 1 >= attempts:
                    if isinstance(exc.cause, InfobipError):
                        raise exc.cause from None
                    raise TransportError(f"POST {path}: {exc.cause}") from None
                await self._sleep_backoff(attempt, exc.retry_after, "ambiguous-create")
        raise AssertionError("unreachable")

    async def _await_applied(
        self, existing: Callable[[], Awaitable[T | None]], *, watch: bool
    ) -> T | None:
        """What an ambiguous create left behind, if anything.

        A request that got no answer may still be applied by the server after the client gave
        up (it is held in a queue, or the server is slow). Creating again right away would then
        make two, so the listing is repeated for one more read timeout before a retry."""
        found = await existing()
        if found is not None or not watch:
            return found
        window = self.settings.read_timeout
        step = min(2.0, max(0.05, window / 5))
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            await asyncio.sleep(min(step, max(0.0, deadline - time.monotonic())))
            found = await existing()
            if found is not None:
                return found
        return None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: dict[str, Any] | None = None,
        ambiguous_raises: bool = False,
        keep_partial: bool = False,
        on_chunk: ChunkHook | None = None,
    ) -> bytes:
        operation = f"{method} {path}"
        attempts = self.settings.max_retries + 1
        retried_delete = False
        for attempt in range(attempts):
            last = attempt + 1 >= attempts
            waited = await self.budget.acquire()
            if self._on_wait is not None and waited > 0:
                self._on_wait(waited)
            if keep_partial and self.stopping:
                # A new pull now would hand out messages a stopping process may not keep.
                raise TransportError(f"{operation}: not sent, the poller is stopping")
            try:
                if keep_partial and self._readers is not None:
                    status, headers, body = await self._readers.run(
                        functools.partial(
                            self._read_in_thread,
                            method,
                            path,
                            params,
                            operation,
                            on_chunk,
                            self._thread_auth(),
                        )
                    )
                else:
                    status, headers, body = await self._exchange(
                        method, path, params, json_body, operation, keep_partial, on_chunk
                    )
            except httpx.TimeoutException as exc:
                reason = "connect-timeout" if isinstance(exc, httpx.ConnectTimeout) else "timeout"
                error: Exception = transport_error(operation, exc, BASE_URL_SETTING)
                if ambiguous_raises and reason == "timeout":
                    raise _Ambiguous(error, in_flight=True) from None
            except httpx.TransportError as exc:
                connect = isinstance(exc, httpx.ConnectError)
                reason = "connect" if connect else "connection-lost"
                failure = transport_error(operation, exc, BASE_URL_SETTING)
                if failure.unresolvable:
                    raise failure from None  # a name DNS does not know: retries cannot help
                error = failure
                if ambiguous_raises and not connect:
                    raise _Ambiguous(error, in_flight=True) from None
            except (TransportError, ServerError, ThrottledError) as exc:
                # Raised by the OAuth2 token request: the call itself was not sent yet.
                if isinstance(exc, TransportError) and exc.unresolvable:
                    raise
                reason = "token"
                error = exc
            else:
                if 200 <= status < 300:
                    return body
                retry_after = parse_retry_after(
                    headers.get("retry-after"), self.settings.retry_after_max
                )
                api = api_error(status, body, operation=operation, retry_after=retry_after)
                if status == 404 and retried_delete:
                    # The first DELETE was applied before its answer was lost.
                    return b""
                if status == 429:
                    reason = "429"
                    if self._on_throttled is not None:
                        self._on_throttled(self.budget.kind)
                    self.budget.pause(retry_after if retry_after is not None else 1.0)
                elif status >= 500:
                    reason = "5xx"
                    if ambiguous_raises:
                        raise _Ambiguous(api, retry_after) from None
                    retried_delete = method == "DELETE"
                else:
                    raise api
                error = api
                if not last:
                    log.warning(
                        "infobip call failed, retrying",
                        operation=operation,
                        error=str(api),
                        attempt=attempt + 1,
                        retry_after=retry_after,
                    )
                    await self._sleep_backoff(attempt, retry_after, reason)
                    continue
                raise api
            if last:
                raise error
            sent = reason not in ("connect", "connect-timeout", "token")
            log.warning(
                "infobip call failed, retrying",
                operation=operation,
                error=str(error),
                attempt=attempt + 1,
                # A pull whose answer was lost after sending: what it held was handed out.
                note="a pull answer lost in transit cannot be fetched again"
                if keep_partial and sent
                else None,
            )
            # A DELETE that never reached the server cannot explain a later 404.
            retried_delete = retried_delete or (method == "DELETE" and sent)
            await self._sleep_backoff(attempt, None, reason)
        raise AssertionError("unreachable")

    async def _exchange(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        json_body: dict[str, Any] | None,
        operation: str,
        keep_partial: bool,
        on_chunk: ChunkHook | None,
    ) -> tuple[int, httpx.Headers, bytes]:
        started = time.monotonic()
        async with self._http.stream(method, path, params=params, json=json_body) as response:
            body = Body(self.settings.max_body_bytes, operation, response, keep_partial, on_chunk)
            try:
                async for chunk in response.aiter_bytes():
                    body.feed(chunk)
            except httpx.HTTPError as exc:
                kept = body.failed(exc)
                if kept is None:
                    raise
                raise kept from None
            return body.done(started)

    def _read_in_thread(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        operation: str,
        on_chunk: ChunkHook | None,
        auth: httpx.Auth,
    ) -> tuple[int, httpx.Headers, bytes]:
        """``_exchange`` for a pull, in a reader thread: a blocking read, each piece handed
        to ``on_chunk`` (the journal file) as it arrives."""
        assert self._readers is not None  # nosec B101  # only called through them
        started = time.monotonic()
        with self._readers.http.stream(method, path, params=params, auth=auth) as response:
            body = Body(self.settings.max_body_bytes, operation, response, True, on_chunk)
            try:
                for chunk in response.iter_bytes():
                    body.feed(chunk)
            except httpx.HTTPError as exc:
                kept = body.failed(exc)
                if kept is None:
                    raise
                raise kept from None
            return body.done(started)

    async def _sleep_backoff(self, attempt: int, retry_after: float | None, reason: str) -> None:
        if self._on_retry is not None:
            self._on_retry(reason)
        if retry_after is not None:
            delay = retry_after
        else:
            delay = backoff.delay(attempt, self.settings.backoff_base, self.settings.backoff_max)
        # A stop cuts the wait short: nothing is in flight, and the grace period is short.
        until = time.monotonic() + delay
        while (left := until - time.monotonic()) > 0:
            if self.stopping:
                raise TransportError("not retried: the poller is stopping")
            await asyncio.sleep(min(left, 0.25))

    @staticmethod
    def _model(model: type[M], body: bytes, operation: str) -> M:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise MalformedResponseError(
                f"{where}: {first['msg']}", body, operation=operation
            ) from None


def client_options(settings: InfobipSettings, auth: httpx.Auth) -> dict[str, Any]:
    """What both HTTP clients of an account are built with, the event loop's and the pull
    readers': base URL, auth, timeouts, headers, no redirects. TLS verification and proxies
    are httpx's defaults for both alike (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR;
    HTTPS_PROXY, ALL_PROXY and NO_PROXY from the environment)."""
    assert settings.base_url is not None  # nosec B101  # account_problems() refused a missing one
    return {
        "base_url": settings.base_url,
        "auth": auth,
        "timeout": httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            pool=settings.read_timeout,
        ),
        "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
        "follow_redirects": False,
    }


def parse_pull(body: bytes, operation: str = f"GET {PULL_PATH}") -> PullResponse:
    """Read a pull body; keep every result item whole, its text as sent.

    Malformed -> MalformedResponseError with the bytes (``scan_pull`` reads what is whole)."""
    scan = scan_pull(body)
    if scan.error is not None:
        raise MalformedResponseError(scan.error, body, operation=operation, scan=scan)
    for name, value in scan.bad_counters.items():
        # The messages are what matter; a bad counter must not lose them.
        log.warning("pull response has a bad counter", field=name, value=value)
    return PullResponse(
        body=body,
        items=[data for data, _value in scan.items],
        routes=[value for _data, value in scan.items],
        message_count=len(scan.items) if scan.message_count is None else scan.message_count,
        pending_message_count=scan.pending,
    )


def _configs(app: str) -> str:
    return f"/push/1/applications/{_seg(app)}/configurations"


def _actions(app: str, config_key: str) -> str:
    return f"{_configs(app)}/{_seg(config_key)}/actions"


def _seg(value: str) -> str:
    if not value:
        raise ValueError("an empty path segment")
    return quote(value, safe="")


__all__ = [
    "ApiError",
    "ConflictError",
    "InfobipClient",
    "NotFoundError",
    "ThrottledError",
    "parse_pull",
    "parse_retry_after",
]
