"""Fault injection: which request misbehaves, and how its response is spoiled.

Faults of the Infobip API (the pull, configurations, actions, token) fire on the requests the
simulator serves; forward faults (FORWARD) fire on the POSTs it sends to a forwardUrl, and
their path is a prefix of the forwardUrl's path. Each kind belongs to one of the two targets,
so a fault of one never fires on the other.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any

from poller.devtools.simulator.httpserver import Response
from poller.devtools.simulator.replies import service_error, too_many_requests

# Answered instead of the operation: a pull does not touch the inbox.
REFUSING = frozenset({"500", "503", "429"})
# The operation runs (a pull takes its messages), then its response is spoiled.
SPOILING = frozenset({"truncated", "invalid_json", "wrong_types", "drop", "oversized"})
# latency: wait, then serve (a pull takes nothing until then); slow_answer: serve (a pull takes
# its messages), then wait before writing the answer, as a slow network or proxy would.
# stall: serve, send part of the body, wait, send the rest (the answer is whole if read).
# forward_drop: send the POST, then close the connection without reading the answer (the
# receiver may have stored the messages; the attempt failed, so they are sent again).
# forward_delay: wait before sending. forward_duplicate: after a 2xx, send the batch once more.
FORWARD = frozenset({"forward_drop", "forward_delay", "forward_duplicate"})
KINDS = REFUSING | SPOILING | FORWARD | {"latency", "slow_answer", "stall"}
API_TARGET = "api"
FORWARD_TARGET = "forward"

PARAMS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "latency": {"delay": (int, float)},
    "slow_answer": {"delay": (int, float)},
    "500": {},
    "503": {"retry_after": int},
    "429": {"retry_after": int, "retry_after_date": bool},
    "truncated": {"at": int},
    "invalid_json": {},
    "wrong_types": {},
    "drop": {},
    "oversized": {"size": int},
    "stall": {"at": int, "delay": (int, float)},
    # delay: close this many seconds after the request was written, perhaps while the receiver
    # works on it; without it, close once the answer starts to arrive (or at the timeout).
    "forward_drop": {"delay": (int, float)},
    "forward_delay": {"delay": (int, float)},
    "forward_duplicate": {},
}
DEFAULT_DELAY = 1.0
DEFAULT_OVERSIZED = 8 << 20
MAX_OVERSIZED = 512 << 20


@dataclass
class Fault:
    """One installed fault: fires count times, or with probability rate on every request."""

    kind: str
    count: int | None = 1
    rate: float | None = None
    path: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fired: int = 0

    @property
    def target(self) -> str:
        """What the fault fires on: "api" (requests served) or "forward" (POSTs sent)."""
        return FORWARD_TARGET if self.kind in FORWARD else API_TARGET

    def to_json(self) -> dict[str, Any]:
        """The fault as listed by the control endpoints."""
        return {
            "kind": self.kind,
            "target": self.target,
            "count": self.count,
            "rate": self.rate,
            "path": self.path,
            "fired": self.fired,
            **self.params,
        }


def make_fault(
    kind: str,
    *,
    count: int | None = 1,
    rate: float | None = None,
    path: str | None = None,
    **params: Any,
) -> Fault:
    """Validate and build a fault; ValueError names what is wrong."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    allowed = PARAMS[kind]
    for name, value in params.items():
        if name not in allowed:
            raise ValueError(f"fault {kind!r} takes no parameter {name!r}")
        expected = allowed[name]
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            raise ValueError(f"fault parameter {name!r} has the wrong type")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"fault parameter {name!r} must not be negative")
    if kind == "oversized" and params.get("size", 0) > MAX_OVERSIZED:
        raise ValueError(f"oversized size is capped at {MAX_OVERSIZED} bytes")
    if rate is not None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate is a probability between 0 and 1")
        # A rate fault stays until cleared; a count alongside it would be ambiguous.
        if count not in (None, 1):
            raise ValueError("give count or rate, not both")
        count = None
    elif count is None or count < 1:
        raise ValueError("count must be a positive integer (or give a rate)")
    if path is not None and not path.startswith("/"):
        raise ValueError("path is a path prefix and starts with '/'")
    return Fault(kind, count, rate, path, dict(params))


class FaultSet:
    """The installed faults; the first one matching a request fires."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._faults: list[Fault] = []
        self.fired = 0

    def add(self, fault: Fault) -> None:
        """Install a fault after those already installed."""
        self._faults.append(fault)

    def clear(self) -> int:
        """Remove every fault; returns how many there were."""
        removed = len(self._faults)
        self._faults.clear()
        return removed

    def pick(self, path: str, target: str = API_TARGET) -> Fault | None:
        """The fault this request suffers, if any (a one-shot fault is used up); target is
        "api" for a request served, "forward" for a POST to a forwardUrl (path: its path)."""
        for fault in self._faults:
            if fault.target != target:
                continue
            if fault.path is not None and not path.startswith(fault.path):
                continue
            if fault.rate is not None:
                if self._rng.random() >= fault.rate:
                    continue
            elif fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
            fault.fired += 1
            self.fired += 1
            return fault
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        """The installed faults as JSON."""
        return [fault.to_json() for fault in self._faults]


def delay_of(fault: Fault) -> float:
    """Seconds a latency or delay fault waits."""
    return float(fault.params.get("delay", DEFAULT_DELAY))


def refusal(fault: Fault) -> Response:
    """The answer of a refusing fault (500, 503, 429)."""
    if fault.kind == "500":
        return service_error(500, "GENERAL_ERROR", "Something went wrong. Please contact support.")
    if fault.kind == "503":
        headers = {}
        if "retry_after" in fault.params:
            headers["Retry-After"] = str(fault.params["retry_after"])
        return service_error(503, "SERVICE_UNAVAILABLE", "Service unavailable", headers)
    seconds = int(fault.params.get("retry_after", 1))
    if fault.params.get("retry_after_date"):
        retry_after = formatdate(time.time() + seconds, usegmt=True)
    else:
        retry_after = str(seconds)
    return too_many_requests({"Retry-After": retry_after})


def spoil(response: Response, fault: Fault) -> Response:
    """Apply a spoiling fault to the response the operation produced."""
    body = response.body
    if fault.kind == "truncated":
        at = int(fault.params.get("at", len(body) // 2))
        return replace(response, truncate_to=min(at, max(len(body) - 1, 0)))
    if fault.kind == "drop":
        return replace(response, drop_after_headers=True)
    if fault.kind == "stall":
        # Part of the body, then a long wait (a slow network, or a kill landing mid-body).
        at = min(int(fault.params.get("at", len(body) // 2)), len(body))
        return replace(response, pause_at=at, pause=delay_of(fault))
    if fault.kind == "invalid_json":
        # Half a document and then junk, as a cut-and-spliced proxy buffer would look.
        garbled = body[: len(body) // 2] + b"\x00<html><body>502 Bad Gateway</body></html>"
        return replace(response, status=200, body=garbled)
    if fault.kind == "wrong_types":
        try:
            value = json.loads(body) if body else []
        except ValueError:
            value = []
        mistyped = json.dumps(_mistype(value), ensure_ascii=False).encode()
        return replace(response, status=200, body=mistyped)
    if fault.kind == "oversized":
        size = int(fault.params.get("size", DEFAULT_OVERSIZED))
        # Whitespace after the opening brace keeps the document valid and its value unchanged.
        core = body if body.startswith(b"{") else b"{}"
        padding = b" " * max(0, size - len(core))
        return replace(response, status=200, body=core[:1] + padding + core[1:])
    return response


def _mistype(value: Any) -> Any:
    # Lists become objects, numbers become strings, strings become numbers: every field
    # keeps its name and gets the wrong type, so only a strict client notices.
    if isinstance(value, dict):
        return {key: _mistype(item) for key, item in value.items()}
    if isinstance(value, list):
        return {str(index): item for index, item in enumerate(value)}
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return len(value)
    return value
