"""Typed errors of the Infobip client. No message ever carries a credential."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import httpx

from poller.infobip.body import PullScan
from poller.redact import Own


class InfobipError(Exception):
    """Base of every error the Infobip client raises."""


class ApiError(InfobipError):
    """Infobip answered with an error status; carries status, messageId and text."""

    def __init__(
        self,
        status: int,
        message_id: str | None,
        text: str | None,
        *,
        operation: str = "",
        retry_after: float | None = None,
        validation_errors: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.message_id = message_id
        self.text = text
        self.operation = operation
        self.retry_after = retry_after
        self.validation_errors = validation_errors or {}
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line: `HTTP 401 UNAUTHORIZED: Invalid login details (GET /push/1/inbox/reports)`."""
        parts = [f"HTTP {self.status}"]
        if self.message_id:
            parts.append(f" {self.message_id}")
        if self.text:
            parts.append(f": {self.text}")
        for field, problems in self.validation_errors.items():
            parts.append(f"; {field}: {problems}")
        if self.operation:
            parts.append(f" ({self.operation})")
        return "".join(parts)


class BadRequestError(ApiError):
    """400: the request was refused as invalid (a bad limit, a malformed action)."""


# The API scopes each use of the poller needs (Infobip API keys are limited by scope).
PULL_SCOPE = "inbound-message:read"
MANAGE_SCOPE = "mobile-app-messaging:manage"


class AuthError(ApiError):
    """401 or 403: the credentials are wrong or lack the scope."""

    @property
    def hint(self) -> Own:
        """What to do about it, for an operator (the project's words: never masked)."""
        if self.status == 403:
            return Own(
                f"the credentials were accepted but lack a scope for this call: pulling needs"
                f" {PULL_SCOPE}; bootstrap and `poller infobip` configuration/action commands"
                f" need {MANAGE_SCOPE} (a pull-only key runs with POLLER_INFOBIP__BOOTSTRAP=false)"
            )
        return Own("the credentials were refused: a wrong or revoked key, or the wrong auth scheme")


class NotFoundError(ApiError):
    """404: the application, configuration or action does not exist."""


class ConflictError(ApiError):
    """409: e.g. a configuration already exists for the application."""


class ThrottledError(ApiError):
    """429: over Infobip's request rate."""


class ServerError(ApiError):
    """5xx."""


class TransportError(InfobipError):
    """The request did not get an answer (connect, timeout, dropped connection).

    ``unresolvable``: the host name is unknown to DNS, which no retry mends."""

    def __init__(self, message: str, *, unresolvable: bool = False) -> None:
        super().__init__(message)
        self.unresolvable = unresolvable


# getaddrinfo's answers for a name that does not exist (not a DNS server out of reach).
_NO_SUCH_HOST = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


def transport_error(operation: str, exc: httpx.HTTPError, setting: str) -> TransportError:
    """The TransportError of an httpx failure: the host that could not be reached, why, and
    the setting that names it (``setting``, its environment variable)."""
    try:
        url = exc.request.url
        where = url.host + (f":{url.port}" if url.port else "")
    except RuntimeError:  # no request attached
        where = "the server"
    cause = _root_os_error(exc)
    if isinstance(cause, socket.gaierror):
        if cause.errno in _NO_SUCH_HOST:
            return TransportError(
                f"{operation}: {where} cannot be resolved (no such host); check {setting}",
                unresolvable=True,
            )
        return TransportError(f"{operation}: {where} cannot be resolved now ({cause.strerror})")
    if isinstance(exc, httpx.ConnectTimeout):
        return TransportError(f"{operation}: connect-timeout to {where}; check {setting}")
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"{operation}: timeout waiting for {where}")
    if isinstance(exc, httpx.ConnectError):
        reason = os.strerror(cause.errno).lower() if cause and cause.errno else _first_line(exc)
        return TransportError(f"{operation}: cannot connect to {where}: {reason}; check {setting}")
    return TransportError(f"{operation}: {_first_line(exc)} ({where})")


def _root_os_error(exc: BaseException) -> OSError | None:
    """The innermost OSError an httpx error was raised from (the socket's own)."""
    found: OSError | None = None
    seen: BaseException | None = exc
    for _ in range(10):  # chains are short; a loop of causes must not hang
        if seen is None:
            break
        if isinstance(seen, OSError):
            found = seen
        seen = seen.__cause__ or seen.__context__
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class MalformedResponseError(InfobipError):
    """The answer could not be understood; `body` keeps what was received, for quarantine,
    and `scan` what reading it found when it was read (so it is not read twice)."""

    def __init__(
        self, reason: str, body: bytes, *, operation: str = "", scan: PullScan | None = None
    ) -> None:
        self.reason = reason
        self.body = body
        self.operation = operation
        self.scan = scan
        suffix = f" ({operation})" if operation else ""
        super().__init__(f"malformed response: {reason}{suffix}")


class TruncatedResponseError(MalformedResponseError):
    """The connection ended before the whole body arrived; `body` is the part received."""


class ResponseTooLargeError(MalformedResponseError):
    """The body is larger than the accepted maximum; `body` is the first part.

    `journaled`: bytes of the body that went to the caller's chunk hook (a pull's journal
    file) past the limit as well; 0 when reading stopped at the limit."""

    def __init__(
        self, reason: str, body: bytes, *, operation: str = "", journaled: int = 0
    ) -> None:
        super().__init__(reason, body, operation=operation)
        self.journaled = journaled


_CLASSES: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    429: ThrottledError,
}


def api_error(
    status: int, body: bytes, *, operation: str, retry_after: float | None = None
) -> ApiError:
    """Build the typed error for an error response, reading both of Infobip's error bodies."""
    message_id: str | None = None
    text: str | None = None
    validation: dict[str, Any] | None = None
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        request_error = data.get("requestError")
        if isinstance(request_error, dict):
            service = request_error.get("serviceException") or request_error.get("policyException")
            if isinstance(service, dict):
                message_id = _text(service.get("messageId"))
                text = _text(service.get("text"))
                if isinstance(service.get("validationErrors"), dict):
                    validation = service["validationErrors"]
        elif "errorCode" in data or "description" in data:
            # The newer ApiError shape: errorCode, description, violations[{property,violation}].
            message_id = _text(data.get("errorCode"))
            text = _text(data.get("description"))
            validation = _violations(data.get("violations"))
        elif isinstance(data.get("error"), str):
            # OAuth2 token endpoint (RFC 6749 section 5.2): error, error_description.
            message_id = data["error"]
            text = _text(data.get("error_description"))
    if text is None and body and data is None:
        text = body[:200].decode("utf-8", "replace").strip() or None
    cls = _CLASSES.get(status, ServerError if status >= 500 else ApiError)
    return cls(
        status,
        message_id,
        text,
        operation=operation,
        retry_after=retry_after,
        validation_errors=validation,
    )


def _violations(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, list):
        return None
    found: dict[str, list[str]] = {}
    for item in value:
        if isinstance(item, dict) and item.get("violation") is not None:
            name = str(item.get("property") or "request")
            found.setdefault(name, []).append(str(item["violation"]))
    return dict(found) or None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
