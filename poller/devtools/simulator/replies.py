"""Response builders shared by the simulator's Infobip and control routes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from poller.devtools.simulator.httpserver import Response
from poller.devtools.simulator.messages import InboxMessage


def json_bytes(payload: Any) -> bytes:
    """Compact JSON; non-ASCII text as UTF-8, as Infobip sends it."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (half an emoji) has no UTF-8 form; JSON's \u escape carries it.
        return json.dumps(payload, separators=(",", ":")).encode()


def results_body(messages: Sequence[InboxMessage], pending: int) -> bytes:
    """The pull answer's envelope (also the body of a forward): messages kept as bytes go in
    as they are."""
    if not any(isinstance(message, bytes) for message in messages):
        return json_bytes(
            {
                "results": list(messages),
                "messageCount": len(messages),
                "pendingMessageCount": pending,
            }
        )
    results = b",".join(m if isinstance(m, bytes) else json_bytes(m) for m in messages)
    counts = f'"messageCount":{len(messages)},"pendingMessageCount":{pending}'.encode()
    return b'{"results":[' + results + b"]," + counts + b"}"


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; non-ASCII text is sent as UTF-8, as Infobip does."""
    return Response(status, json_bytes(payload), headers=dict(headers or {}))


def service_error(
    status: int, message_id: str, text: str, headers: dict[str, str] | None = None
) -> Response:
    """Infobip's error body: requestError.serviceException{messageId,text}."""
    payload = {"requestError": {"serviceException": {"messageId": message_id, "text": text}}}
    return json_response(status, payload, headers)


def no_content() -> Response:
    """204 without a body."""
    return Response(204)


def unauthorized() -> Response:
    """401 for missing, wrong or expired credentials."""
    return service_error(401, "UNAUTHORIZED", "Invalid login details")


def forbidden() -> Response:
    """403 for credentials that authenticate but lack the scope."""
    return service_error(403, "FORBIDDEN", "Forbidden")


def too_many_requests(headers: dict[str, str] | None = None) -> Response:
    """429 as the documented throttle answers it."""
    return service_error(429, "TOO_MANY_REQUESTS", "Too many requests", headers)


def bad_request(text: str = "Bad request") -> Response:
    """400 with Infobip's generic BAD_REQUEST id."""
    return service_error(400, "BAD_REQUEST", text)


def control_error(status: int, text: str) -> Response:
    """Errors of the /_sim/ control endpoints (not an Infobip shape on purpose)."""
    return json_response(status, {"error": text})
