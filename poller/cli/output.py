"""Plain-text tables and JSON output for the CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from poller import redact

# C0 and C1 control characters (and DEL): what a terminal would act on instead of showing.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_JSON_CONTROLS = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}


def printable(text: str) -> str:
    """``text`` with control characters escaped: a mobile user's message (or an application
    code) must not move the operator's cursor, clear the screen or retitle the terminal."""
    return text.translate(_CONTROLS)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO | None = None) -> None:
    """Print rows under headers, columns aligned; `(none)` when there are no rows. Control
    characters in cells are escaped, secrets masked."""
    out = out or sys.stdout
    text_rows = [
        ["" if cell is None else printable(redact.text(str(cell))) for cell in row] for row in rows
    ]
    if not text_rows:
        out.write("(none)\n")
        return
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers))
    out.write(line.rstrip() + "\n")
    for row in text_rows:
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")


def emit_json(value: Any, out: TextIO | None = None) -> None:
    """Print one JSON document (escaped ASCII where text has no UTF-8 form), secrets masked."""
    value = redact.strings(value)
    text = json.dumps(value, ensure_ascii=False, indent=2, default=str)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(value, indent=2, default=str)
    # json escapes only C0 controls: C1 ones (an 8-bit CSI) and DEL are escaped here.
    (out or sys.stdout).write(redact.text(text).translate(_JSON_CONTROLS) + "\n")


def say(message: str, out: TextIO | None = None) -> None:
    """One line on stdout (or ``out``), secrets masked."""
    (out or sys.stdout).write(redact.text(message) + "\n")


def error(message: str) -> None:
    """One line on stderr, secrets masked."""
    sys.stderr.write(f"poller: error: {redact.text(message)}\n")


def warn(message: str) -> None:
    """One line on stderr, secrets masked."""
    sys.stderr.write(f"poller: warning: {redact.text(message)}\n")
