"""Result items into spool rows: a message when it can be routed, quarantine when not.

Shared by every source: whatever hands messages over, an item is kept as Infobip sent it,
and an item that is not a routable message is quarantined on its own, never dropped.
"""

from __future__ import annotations

import codecs
import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from poller import metrics, redact
from poller.infobip.body import Unreadable, scan_pull
from poller.spool import NewMessage, NewQuarantine

log = structlog.get_logger(__name__)

# One encoder for every item: json.dumps would rebuild it per call.
_ENCODE_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ENCODE_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def encode_item(item: Any) -> str:
    """JSON text of a decoded item on one line, readable UTF-8 when it can be, escaped ASCII
    otherwise (JSON may carry a lone surrogate, which UTF-8 cannot store)."""
    text = _ENCODE_UTF8(item)
    try:
        text.encode()
    except UnicodeEncodeError:
        return _ENCODE_ASCII(item)
    return text


def quarantine(raw: bytes, reason: str, app: str | None, at: str) -> NewQuarantine:
    """A quarantine row: the bytes as received, but never a secret of ours (a wrong base URL
    pointing at a server that echoes the request back would put the API key there)."""
    return NewQuarantine(raw=redact.data(raw), reason=redact.text(reason), app=app, pulled_at=at)


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rows_from_items(
    items: Sequence[tuple[bytes, Any]], pulled_at: str, *, dedupe: bool = False
) -> tuple[list[NewMessage], list[NewQuarantine]]:
    """Spool rows for ``(bytes as sent, decoded value)`` items, in their order; the value
    needs only the routing fields (messageId, applicationCode, receivedAt). ``dedupe``: the
    sink skips a message whose id reached its stream lately (a delivery Infobip repeats)."""
    messages: list[NewMessage] = []
    quarantined: list[NewQuarantine] = []
    for data, item in items:
        problem = _problem(item)
        if problem is None:
            received = item.get("receivedAt")
            messages.append(
                NewMessage(
                    app=item["applicationCode"],
                    message_id=item["messageId"],
                    received_at=received if _is_text(received) else "",
                    pulled_at=pulled_at,
                    payload=data,
                    dedupe=dedupe,
                )
            )
        else:
            app = item.get("applicationCode") if isinstance(item, dict) else None
            quarantined.append(
                quarantine(data, problem, app if _is_text(app) and app else None, pulled_at)
            )
    return messages, quarantined


def items_of(body: bytes) -> tuple[list[tuple[bytes, Any]], str | None]:
    """The items of a body of any shape a source takes (a pull answer's envelope, one message
    object, an array of them), each as (bytes as sent, routing fields or ``Unreadable``) for
    ``rows_from_items`` to judge alone; or why the body as a whole is none of them. A UTF-8
    byte order mark before it is skipped. What `poller dead retry` reads a letter with: a
    quarantined item is one message object, a quarantined body an envelope or an array."""
    body = body.removeprefix(codecs.BOM_UTF8)
    head = body.lstrip()[:1]
    if head == b"[":
        scan = scan_pull(b'{"results":' + body + b"}")
    elif head == b"{":
        scan = scan_pull(body)
        if scan.error == "`results` is not a list" and not scan.items:
            scan = scan_pull(b'{"results":[' + body + b"]}")
    else:
        return [], "not JSON: expected an object or an array"
    if scan.error is not None:
        return [], scan.error
    return scan.items, None


def _is_text(value: Any) -> bool:
    """A str that UTF-8 can store (JSON allows lone surrogates; SQLite and Redis do not)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _problem(item: Any) -> str | None:
    if isinstance(item, Unreadable):
        return item.reason
    if not isinstance(item, dict):
        return f"result item is a {type(item).__name__}, not an object"
    for name in ("messageId", "applicationCode"):
        value = item.get(name)
        if not isinstance(value, str) or not value:
            return f"result item has no {name}"
        if not _is_text(value):
            return f"result item's {name} is not valid Unicode text"
    return None


def count_rows(
    messages: Sequence[NewMessage],
    quarantined: Sequence[NewQuarantine],
    how: Literal["pulled", "forwarded"],
) -> None:
    """Metrics and log lines for rows a source spooled: messages by application, and each
    quarantined item with its reason."""
    counter = metrics.MESSAGES_PULLED if how == "pulled" else metrics.FORWARD_MESSAGES
    for app, count in Counter(m.app for m in messages).items():
        counter.labels(app=app).inc(count)
    for item in quarantined:
        metrics.MESSAGES_QUARANTINED.labels(app=item.app).inc()
        log.error(f"{how} item quarantined", reason=item.reason, app=item.app)
