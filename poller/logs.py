"""structlog set-up: JSON lines off a terminal, console rendering on one, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

_SECRET_KEY = re.compile(r"(api_?key|password|secret|token|authorization|credential)", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
# A credential in a URL's query string: redis://host/0?password=..., ...&api_key=...
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:password|passwd|pass|pwd|secret|token|api_?key|client_secret)=)[^&#\s]*",
    re.IGNORECASE,
)
_known_secrets: set[str] = set()

REDACTED = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is masked wherever it shows up in a log line."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def redact_text(text: str) -> str:
    """Mask registered secrets and URL passwords in free text."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_bytes(data: bytes) -> bytes:
    """Mask registered secrets in raw bytes (an answer that echoes our request, say)."""
    for secret in _known_secrets:
        encoded = secret.encode()
        if encoded in data:
            data = data.replace(encoded, REDACTED.encode())
    return data


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # Structured tracebacks (dict_tracebacks) are lists of dicts holding exception texts.
        return [_redact_value(key, item) for item in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: secrets never reach a log line."""
    for key in list(event_dict):
        if key == "exc_info":
            continue
        if event_dict[key] is None:
            # Optional context (an error that did not happen) makes lines longer, not clearer.
            del event_dict[key]
            continue
        event_dict[key] = _redact_value(key, event_dict[key])
    if isinstance(event_dict.get("exception"), str):
        event_dict["exception"] = redact_text(event_dict["exception"])
    return event_dict


def configure(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto", stream: Any = None
) -> None:
    """Set up structlog and the stdlib root logger (for libraries) once per process."""
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and hasattr(out, "isatty") and out.isatty())
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if console:
        # The traceback becomes text before redaction; a renderer that formats it itself
        # would print an exception's message (and any secret in it) unredacted.
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        tail: list[Any] = [structlog.processors.format_exc_info, redact_processor, renderer]
    else:
        # No frame locals: they hold request forms, headers and settings in plain text.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        tail = [
            tracebacks,
            redact_processor,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING) if numeric < logging.WARNING else numeric)
    # httpx logs every request at INFO, with the URL; our own lines say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # APScheduler warns at every tick that finds the previous drain still running;
    # the daemon logs each drain itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
