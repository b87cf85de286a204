"""Log set-up: JSON lines off a terminal, and no secret ever reaching a line."""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import structlog

from poller import logs, redact
from poller.logs import redact_processor
from poller.redact import REDACTED


@pytest.fixture
def secret() -> str:
    """A registered secret value unique to the test."""
    value = f"s3cr3t-{uuid.uuid4().hex[:12]}"
    redact.register(value)
    return value


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def process(**event: Any) -> dict[str, Any]:
    return dict(redact_processor(None, "info", dict(event)))


def test_secret_keys_are_masked() -> None:
    out = process(
        event="e",
        api_key="abc123456",
        password="pw-1234",
        token="t-99999",
        client_secret="cs-1111",
        headers={"Authorization": "App abcdef1234", "Accept": "application/json"},
        pending=5,
    )
    assert out["api_key"] == out["password"] == out["token"] == out["client_secret"] == REDACTED
    assert out["headers"] == {"Authorization": REDACTED, "Accept": "application/json"}
    assert out["pending"] == 5


def test_registered_secrets_are_masked_in_free_text_and_exceptions(secret: str) -> None:
    out = process(
        event=f"calling with {secret} now",
        error=RuntimeError(f"server echoed {secret}"),
        items=[f"a {secret}", {"nested": secret}],
    )
    assert out["event"] == f"calling with {REDACTED} now"
    assert out["error"] == f"RuntimeError: server echoed {REDACTED}"
    assert out["items"] == [f"a {REDACTED}", {"nested": REDACTED}]
    assert secret not in json.dumps(out)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:hunter22@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://default:pa55w0rd@h.example:6380", "rediss://default:***@h.example:6380"),
        ("connect to unix://u:pw@/tmp/r.sock failed", "connect to unix://u:***@/tmp/r.sock failed"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("https://user@host/x", "https://user@host/x"),
        # An unencoded @ in the password: the last @ before the host ends the user info.
        ("redis://u:p@ss@w0rd@h:6379/0 failed", "redis://u:***@h:6379/0 failed"),
        (
            "rediss://h/0?ssl_password=s5l&db=1&ssl_keyfile_password=k3y&ssl_certfile=/c.pem",
            "rediss://h/0?ssl_password=***&db=1&ssl_keyfile_password=***&ssl_certfile=/c.pem",
        ),
        ("unix:///tmp/r.sock?db=0&password=s3cret", "unix:///tmp/r.sock?db=0&password=***"),
        (
            "grant_type=client_credentials&client_id=c&client_secret=x%2Fy",
            "grant_type=client_credentials&client_id=c&client_secret=***",
        ),
        ("GET /x?token=abc HTTP/1.1", "GET /x?token=*** HTTP/1.1"),
    ],
)
def test_passwords_in_urls_are_masked(text: str, expected: str) -> None:
    assert redact.text(text) == expected
    assert process(event="e", url=text)["url"] == expected


def test_a_registered_secret_is_masked_in_every_form_it_travels_in() -> None:
    # Tried: the forms a server echoing our request could quote it in.
    value = f'k/{uuid.uuid4().hex[:8]}+=&"é x'
    redact.register(value)
    redact.register_basic("user", value)
    for form in (
        value,
        quote(value, safe=""),
        quote_plus(value),
        json.dumps(value)[1:-1],
        json.dumps(value)[1:-1].replace("/", "\\/"),
        base64.b64encode(f"user:{value}".encode()).decode(),
    ):
        assert redact.text(f"<{form}>") == f"<{REDACTED}>", form
        assert redact.data(f"<{form}>".encode()) == f"<{REDACTED}>".encode(), form


def test_json_output_masks_strings_and_keeps_shapes(secret: str) -> None:
    shown = redact.strings({"a": [f"x {secret}", 3, None], "b": {"url": "redis://:pw99@h"}})
    assert shown == {"a": [f"x {REDACTED}", 3, None], "b": {"url": "redis://:***@h"}}


def test_short_values_are_not_registered() -> None:
    # Masking "a" or "ab" everywhere would wreck every line; such a secret is not one anyway.
    redact.register("ab")
    redact.register(None)
    assert redact.text("about a cab") == "about a cab"


def test_empty_context_is_dropped() -> None:
    assert "error" not in process(event="e", error=None)


def test_json_lines_off_a_terminal(restore_logging: None, secret: str) -> None:
    out = io.StringIO()
    logs.configure("INFO", "auto", stream=out)
    log = structlog.get_logger("test")
    log.info("pulled", app="app-alpha", count=3, api_key=secret)
    log.debug("not shown")
    try:
        raise ValueError(f"bad answer containing {secret} for redis://:pw9876@r:6379")
    except ValueError:
        log.exception("pull failed")
    logging.getLogger("some.library").warning("library says %s", secret)
    first, failed, library = lines_of(out)
    assert first["event"] == "pulled"
    assert (first["app"], first["count"], first["level"]) == ("app-alpha", 3, "info")
    assert first["api_key"] == REDACTED
    assert first["timestamp"].endswith("Z")
    assert failed["level"] == "error"
    (exception,) = failed["exception"]
    assert exception["exc_type"] == "ValueError"
    assert exception["exc_value"] == f"bad answer containing {REDACTED} for redis://:***@r:6379"
    # Frame locals would carry request forms and headers in plain text.
    assert all("locals" not in frame for frame in exception["frames"])
    assert library["event"] == f"library says {REDACTED}"
    assert secret not in out.getvalue()
    assert "pw9876" not in out.getvalue()


def test_console_on_a_terminal_masks_tracebacks(restore_logging: None, secret: str) -> None:
    out = TTY()
    logs.configure("DEBUG", "auto", stream=out)
    log = structlog.get_logger("test")
    log.debug("debug shown", token=secret)
    try:
        raise ConnectionError(f"refused for {secret}")
    except ConnectionError:
        log.exception("redis down")
    text = out.getvalue()
    assert "debug shown" in text
    assert "Traceback (most recent call last)" in text
    assert f"ConnectionError: refused for {REDACTED}" in text
    assert secret not in text
    assert not text.lstrip().startswith("{")


def test_explicit_json_on_a_terminal(restore_logging: None) -> None:
    out = TTY()
    logs.configure("WARNING", "json", stream=out)
    structlog.get_logger("test").info("hidden")
    structlog.get_logger("test").warning("shown", n=1)
    (line,) = lines_of(out)
    assert (line["event"], line["level"], line["n"]) == ("shown", "warning", 1)


def test_noisy_libraries_are_quiet_at_info(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    logging.getLogger("httpx").info("HTTP Request: GET http://x/?token=1")
    logging.getLogger("apscheduler.scheduler").info("Added job")
    assert out.getvalue() == ""
