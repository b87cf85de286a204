"""The Infobip client: every configuration, action and pull operation, over httpx."""

from __future__ import annotations

import asyncio
import email.utils
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
    ResponseTooLargeError,
    ServerError,
    ThrottledError,
    TransportError,
    TruncatedResponseError,
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
from poller.infobip.settings import InfobipSettings
from poller.stop import Stop

log = structlog.get_logger(__name__)

USER_AGENT = f"infobip-push-poller/{__version__}"
# How far past the body limit a pull answer is still read into its journal file (disk, not
# memory); what lies beyond is never read, and lost.
OVERSIZE_FACTOR = 8
PULL_PATH = "/push/1/inbox/reports"
# Named by an error that could not reach the account's host.
BASE_URL_SETTING = env_name(("infobip", "base_url"))
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Hooks for metrics: called with a reason ("timeout", "5xx", "429", ...) on each retry.
RetryHook = Callable[[str], None]
# Called with each piece of a pull answer's body as it arrives.
ChunkHook = Callable[[bytes], None]


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
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            auth=self._auth,
            transport=transport,
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=settings.read_timeout,
            ),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,
        )

    @property
    def stopping(self) -> bool:
        """True once the stop this client was given has been asked for."""
        return self.stop is not None and self.stop.requested

    async def __aenter__(self) -> InfobipClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

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
        the next is read (the pull source journals them: a kill mid-body then loses only
        what is still in the socket)."""
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
        limit = self.settings.max_body_bytes
        started = time.monotonic()
        async with self._http.stream(method, path, params=params, json=json_body) as response:
            chunks: list[bytes] = []
            size = 0
            head: bytes | None = None  # set once the body passed the limit
            if on_chunk is not None and not 200 <= response.status_code < 300:
                on_chunk = None
            try:
                async for chunk in response.aiter_bytes():
                    if on_chunk is not None:
                        on_chunk(chunk)
                    size += len(chunk)
                    if size > limit:
                        if head is None:
                            head = (b"".join(chunks) + chunk)[:limit]
                            chunks = []
                        # A pull answer is handed out once: with a hook that keeps the bytes
                        # (on disk), read on past the limit, up to its multiple, holding none
                        # of it in memory, so its whole items can be kept.
                        if on_chunk is None:
                            raise ResponseTooLargeError(
                                f"body larger than {limit} bytes", head, operation=operation
                            )
                        if size > limit * OVERSIZE_FACTOR:
                            raise ResponseTooLargeError(
                                f"body larger than {limit * OVERSIZE_FACTOR} bytes, not read on",
                                head,
                                operation=operation,
                                journaled=size,
                            )
                        continue
                    chunks.append(chunk)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout) as exc:
                if head is not None:  # cut short while read on to the hook: it has the bytes
                    raise ResponseTooLargeError(
                        f"body larger than {limit} bytes, then cut after {size} bytes"
                        f" ({_transport_reason(exc)})",
                        head,
                        operation=operation,
                        journaled=size,
                    ) from None
                partial = b"".join(chunks)
                # A pull answer cut after its status line was handed out all the same, even
                # with no body byte received: report it (for quarantine), never retry it away.
                if keep_partial and 200 <= response.status_code < 300:
                    raise TruncatedResponseError(
                        f"connection ended after {len(partial)} bytes ({_transport_reason(exc)})",
                        partial,
                        operation=operation,
                    ) from None
                raise
            except httpx.HTTPError as exc:
                # E.g. a body whose Content-Encoding does not decode. For a pull it held
                # messages handed out once: keep what arrived for quarantine.
                if head is not None:
                    raise ResponseTooLargeError(
                        f"body larger than {limit} bytes, then unreadable after {size} bytes"
                        f" ({_transport_reason(exc)})",
                        head,
                        operation=operation,
                        journaled=size,
                    ) from None
                if keep_partial and 200 <= response.status_code < 300:
                    raise MalformedResponseError(
                        f"body could not be read ({_transport_reason(exc)})",
                        b"".join(chunks),
                        operation=operation,
                    ) from None
                raise
            if head is not None:
                raise ResponseTooLargeError(
                    f"body of {size} bytes, larger than {limit}",
                    head,
                    operation=operation,
                    journaled=size,
                )
            log.debug(
                "infobip call",
                operation=operation,
                status=response.status_code,
                seconds=round(time.monotonic() - started, 4),
                bytes=size,
            )
            return response.status_code, response.headers, b"".join(chunks)

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


def _transport_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


__all__ = [
    "ApiError",
    "ConflictError",
    "InfobipClient",
    "NotFoundError",
    "ThrottledError",
    "parse_pull",
    "parse_retry_after",
]
