"""Every log line is bounded whatever a sender put in it, and a cut never shows a secret."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import structlog

from poller import logs, redact
from poller.logs import MAX_STRING, MAX_TRACEBACK

# A line of several fields at their bound, with the line's own keys.
LINE_BOUND = 4 * MAX_STRING + 1_000


@pytest.fixture
def registry() -> Iterator[None]:
    """Secrets registered by the test are forgotten after it."""
    saved, saved_fixed = redact._forms, redact._fixed
    redact._forms, redact._fixed = set(saved), set(saved_fixed)
    try:
        yield
    finally:
        redact._forms, redact._fixed = saved, saved_fixed
        redact._generation += 1  # the search built with the test's secrets is built again


@pytest.fixture
def secret(registry: None) -> str:
    value = f"SeCrEt-{uuid.uuid4().hex}"
    redact.register(value)
    return value


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """JSON log lines written to a buffer; the logging set-up is restored after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_long_field_is_cut_with_a_marker_saying_how_much(out: io.StringIO) -> None:
    structlog.get_logger("t").warning("x" * 5_000, text="y" * 1_000_000, short="kept")
    (line,) = lines(out)
    assert line["event"] == "x" * MAX_STRING + " [… 3000 characters cut]"
    assert line["text"] == "y" * MAX_STRING + " [… 998000 characters cut]"
    assert line["short"] == "kept"
    assert len(out.getvalue()) < LINE_BOUND


def test_nested_strings_lists_bytes_and_huge_integers_are_bounded(out: io.StringIO) -> None:
    nested: Any = "deep"
    for _ in range(100):
        nested = [nested]
    structlog.get_logger("t").warning(
        "shapes",
        items=["z" * 10_000] * 1_000,
        headers={"k" * 10_000: "v" * 10_000},
        raw=b"\xff" + b"b" * 100_000,
        nested=nested,
        number=10**5000,
    )
    (line,) = lines(out)
    assert len(line["items"]) == logs.MAX_ITEMS + 1
    assert line["items"][-1] == "[… 900 more items]"
    assert all(len(item) < MAX_STRING + 40 for item in line["items"])
    ((key, value),) = line["headers"].items()
    assert len(key) < MAX_STRING + 40
    assert len(value) < MAX_STRING + 40
    assert line["raw"].startswith("\\xffbbb")
    assert line["raw"].endswith(" [… 98001 bytes cut]")
    assert "nested deeper than" in json.dumps(line["nested"])
    assert line["number"] == "<an integer of 16610 bits>"
    assert len(out.getvalue()) < logs.MAX_ITEMS * (MAX_STRING + 100) + LINE_BOUND


def test_logging_a_huge_field_costs_what_a_small_one_does(out: io.StringIO) -> None:
    log = structlog.get_logger("t")

    def cost(size: int) -> float:
        value = ("token&password=" * (size // 15 + 1))[:size]
        best = float("inf")
        for _ in range(5):
            started = time.thread_time()
            log.warning("e", value=value)
            best = min(best, time.thread_time() - started)
        return best

    # Masked after the cut: 1 MB costs what 10 KB does (it was a hundred times as much).
    assert cost(1_000_000) / cost(10_000) < 5


def test_library_records_and_their_exceptions_are_bounded(out: io.StringIO, secret: str) -> None:
    # What aiohttp logs for a bad request carries the request's bytes in the exception.
    library = logging.getLogger("aiohttp.server")
    library.warning("bad header %s", "h" * 100_000)
    try:
        raise ValueError("header value " + "token" * 30_000 + secret)
    except ValueError:
        library.exception("Error handling request")
    first, second = lines(out)
    assert first["event"].endswith(" [… 98011 characters cut]")
    assert len(first["event"]) < MAX_STRING + 40
    (exception,) = second["exception"]
    assert exception["exc_type"] == "ValueError"
    assert len(exception["exc_value"]) < MAX_STRING + 40
    assert secret[:4] not in out.getvalue()


def test_a_line_cut_inside_a_registered_secret_shows_none_of_it(
    out: io.StringIO, secret: str
) -> None:
    log = structlog.get_logger("t")
    for inside in range(1, len(secret)):
        log.warning("e", text="x" * (MAX_STRING - inside) + secret + " and more")
    text = out.getvalue()
    assert secret[: redact.MIN_LENGTH] not in text
    assert text.count(f"x{redact.REDACTED} [… ") == len(secret) - redact.MIN_LENGTH


def test_a_rendered_traceback_keeps_more_than_a_field(secret: str) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure("INFO", "console", stream=stream)
    try:
        try:
            raise ValueError("v" * 100_000)
        except ValueError:
            structlog.get_logger("t").exception("failed")
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
    text = stream.getvalue()
    assert "Traceback (most recent call last)" in text
    assert "ValueError: vvv" in text
    assert "characters cut]" in text
    assert MAX_TRACEBACK < len(text) < MAX_TRACEBACK + 2_000


def test_a_critical_line_is_never_cut(out: io.StringIO) -> None:
    # The last resort of a batch the spool never took: its messages are in no other place.
    payload = b'{"messageId":"m-1","text":"' + b"p" * 10_000 + b'"}'
    structlog.get_logger("t").critical("batch follows", payloads=[payload] * 150)
    (line,) = lines(out)
    assert len(line["payloads"]) == 150
    assert all(p == repr(payload) for p in line["payloads"])


def edges(secret: str) -> list[str]:
    """The secret's forms, each as it may be cut: every prefix of 4 characters or more."""
    forms = [secret, quote(secret, safe=""), json.dumps(secret)[1:-1]]
    return [form[:size] for form in forms for size in range(redact.MIN_LENGTH, len(form) + 1)]


@pytest.mark.parametrize("form", ["raw", "quoted", "json"])
def test_a_cut_that_splits_a_registered_secret_masks_its_start(registry: None, form: str) -> None:
    value = f'SeCrEt/{uuid.uuid4().hex[:12]}+é"x'
    redact.register(value)
    shown = {
        "raw": value,
        "quoted": quote(value, safe=""),
        "json": json.dumps(value)[1:-1],
    }[form]
    limit = 50
    for before in range(limit + 1):
        text = "a" * before + shown + " tail"
        line = redact.text(redact.cut(text, limit))
        kept = line.partition(" [… ")[0]
        assert len(kept) <= limit
        for start in edges(value):
            assert start not in line, (before, line)
        if before + len(shown) > limit >= before + redact.MIN_LENGTH:
            # Four or more characters of it were kept: they are masked, not shown.
            assert kept == "a" * before + redact.REDACTED, (before, line)


def test_a_cut_masks_the_longest_start_of_a_secret_at_the_edge(registry: None) -> None:
    redact.register("abcdefgh")
    redact.register("cdefXYZW")
    # "abcdef" begins the first secret, "cdef" the second: the longer one is masked whole.
    assert redact.cut("xx abcdefZZZZ", 9) == "xx *** [… 4 characters cut]"
    # Three characters are not a secret's start (MIN_LENGTH): shown.
    assert redact.cut("xx abcZZZZ", 6) == "xx abc [… 4 characters cut]"


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("see redis://user:pa@ss@host:6379/0", 22, "see redis://user:***"),
        ("see redis://user:passwd@host:6379/0", 22, "see redis://user:***"),
        ("see redis://host:6379/0 ok", 19, "see redis://host:***"),
        ("see redis://host:6379/0 ok", 24, "see redis://host:6379/0 "),
        ("see x?token=abcdef&b=1", 15, "see x?token=***"),
    ],
)
def test_a_cut_inside_a_url_shows_no_part_of_its_password(
    text: str, limit: int, expected: str
) -> None:
    assert redact.text(redact.cut(text, limit)).partition(" [… ")[0] == expected


def test_a_short_value_is_not_touched(secret: str) -> None:
    assert redact.cut(secret, len(secret)) == secret
    assert redact.cut(b"abc", 3) == b"abc"
