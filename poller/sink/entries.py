"""Stream entries as every sink writes them and every reader gets them back.

A message entry has the fields ``MO_FIELDS`` (schema ``infobip.push.mo.v1``), a dead letter
``DEAD_FIELDS`` (``infobip.push.mo.dead.v1``); each value is a string. ``parse_entry`` turns
whatever a stream holds into a ``Message`` and never raises: an entry someone else wrote,
with a payload no JSON reader takes (huge integers, deep nesting, bad bytes, missing
fields), comes back with ``error`` set, so every reader goes on past it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from poller.schemas import DEAD as DEAD_SCHEMA
from poller.schemas import MO as MO_SCHEMA

MO_FIELDS = ("id", "app", "received_at", "pulled_at", "payload", "schema")
DEAD_FIELDS = ("reason", "raw", "app", "pulled_at", "schema")

Fields = dict[str, str]


@dataclass(frozen=True)
class Message:
    """One stream entry (schema ``infobip.push.mo.v1``, or a dead letter)."""

    entry_id: str
    message_id: str
    app: str
    received_at: str
    pulled_at: str
    schema: str
    payload: dict[str, Any]
    fields: Fields
    error: str | None = None  # set when the entry could not be parsed; payload is then {}

    @property
    def dead(self) -> bool:
        """True for a dead letter."""
        return self.schema == DEAD_SCHEMA


def text_of(value: Any) -> str:
    """A field name or value as text (bytes that are not UTF-8 come out replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def parse_entry(entry_id: Any, raw: Any) -> Message:
    """Turn a raw stream entry into a Message; a malformed one gets ``error`` set. Never
    raises, whatever the entry holds."""
    error: str | None = None
    try:
        fields = {text_of(k): text_of(v) for k, v in dict(raw or {}).items()}
    except (TypeError, ValueError) as exc:
        fields, error = {}, f"entry is not a field map: {type(exc).__name__}"
    payload: dict[str, Any] = {}
    if error is None and fields.get("schema") != DEAD_SCHEMA:
        try:
            decoded = json.loads(fields.get("payload", ""))
        except json.JSONDecodeError as exc:
            error = f"payload is not JSON: {exc}"
        # Valid JSON can still be refused: more than 4,300 digits in an integer (ValueError),
        # nesting deeper than the interpreter's stack (RecursionError).
        except (ValueError, RecursionError, MemoryError) as exc:
            error = f"payload cannot be read: {type(exc).__name__}: {str(exc)[:200]}"
        else:
            if isinstance(decoded, dict):
                payload = decoded
            else:
                error = "payload is not a JSON object"
    return Message(
        entry_id=text_of(entry_id),
        message_id=fields.get("id", ""),
        app=fields.get("app", ""),
        received_at=fields.get("received_at", ""),
        pulled_at=fields.get("pulled_at", ""),
        schema=fields.get("schema", ""),
        payload=payload,
        fields=fields,
        error=error,
    )


__all__ = [
    "DEAD_FIELDS",
    "DEAD_SCHEMA",
    "MO_FIELDS",
    "MO_SCHEMA",
    "Fields",
    "Message",
    "parse_entry",
    "text_of",
]
