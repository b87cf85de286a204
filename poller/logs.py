"""structlog set-up: JSON lines off a terminal, console rendering on one, secrets redacted,
every line bounded in length whatever a sender put in it."""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from poller import redact

# A sender chooses much of what is logged (a message's text, a header in a library's error):
# each string is cut to this many characters before it is masked, so that a line costs the
# same to mask and to write however much was sent.
MAX_STRING = 2_000
# A rendered traceback or stack is longer than a field, and its end (the error) matters.
MAX_TRACEBACK = 20_000
MAX_ITEMS = 100  # of a list, tuple or dict
MAX_NESTING = 16
MAX_INT_BITS = 256  # json and repr refuse integers of more than 4,300 digits


def bound_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: strings cut to ``MAX_STRING`` characters (a rendered traceback to
    ``MAX_TRACEBACK``), containers to ``MAX_ITEMS`` items, ``MAX_NESTING`` levels deep.
    Runs before ``redact_processor``: ``redact.cut`` masks what a cut leaves of a secret."""
    if event_dict.get("level") == "critical":
        # The last resort of a batch the spool never took carries its messages whole: the
        # line is all that is left of them (poller.sources.pull).
        return event_dict
    for key in list(event_dict):
        value = event_dict[key]
        if key == "exc_info":
            continue
        if key in ("exception", "stack") and isinstance(value, str):
            event_dict[key] = redact.cut(value, MAX_TRACEBACK)
        else:
            event_dict[key] = _bound(value, 0)
    return event_dict


def _bound(value: Any, depth: int) -> Any:
    if isinstance(value, str | bytes):
        return redact.cut(value, MAX_STRING)
    if isinstance(value, bool | float) or value is None:
        return value
    if isinstance(value, int):
        return (
            value
            if value.bit_length() <= MAX_INT_BITS
            else f"<an integer of {value.bit_length()} bits>"
        )
    if isinstance(value, BaseException):
        return redact.cut(redact.exception_text(value), MAX_STRING)
    if not isinstance(value, dict | list | tuple):
        return value
    if depth >= MAX_NESTING:
        return f"[… nested deeper than {MAX_NESTING} levels]"
    more = len(value) - MAX_ITEMS
    if isinstance(value, dict):
        items = itertools.islice(value.items(), MAX_ITEMS)
        out = {
            _bound(k, depth + 1) if isinstance(k, str) else k: _bound(v, depth + 1)
            for k, v in items
        }
        if more > 0:
            out["[…]"] = f"{more} more items"
        return out
    bounded = [_bound(item, depth + 1) for item in value[:MAX_ITEMS]]
    if more > 0:
        bounded.append(f"[… {more} more items]")
    return bounded


def redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: secrets never reach a log line (``poller.redact``)."""
    for key in list(event_dict):
        if key == "exc_info":
            continue
        if event_dict[key] is None:
            # Optional context (an error that did not happen) makes lines longer, not clearer.
            del event_dict[key]
            continue
        # A rendered traceback ("exception") is text like any other value.
        event_dict[key] = redact.field(key, event_dict[key])
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
        tail: list[Any] = [
            structlog.processors.format_exc_info,
            bound_processor,
            redact_processor,
            renderer,
        ]
    else:
        # No frame locals: they hold request forms, headers and settings in plain text.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        tail = [
            tracebacks,
            bound_processor,
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
