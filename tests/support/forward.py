"""Messages as Infobip forwards them, for the receiver's tests, and the receiver's test token."""

from __future__ import annotations

from typing import Any

TOKEN = "forward-token-0123456789abcdef"
APP = "app-fwd"


def message(n: int, app: str = APP) -> dict[str, Any]:
    """Forwarded message n: unicode, a price kept as sent, an unknown field."""
    return {
        "messageId": f"fwd-{n:05d}",
        "applicationCode": app,
        "receivedAt": "2026-11-30T10:00:00.000+0000",
        "text": f"forwarded {n} ünïcödé 🚆",
        "price": 1.50,  # kept as sent, not re-encoded as 1.5
        "futureField": {"nested": [n]},
    }
