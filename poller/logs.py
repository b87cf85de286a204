"""structlog set-up: JSON lines off a terminal, console rendering on one, secrets redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from poller import redact


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
