"""The project's own words (a 401 hint) are never masked, even when a secret is a common word
found in them; the same secret in foreign text (a server's answer) still is."""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import pytest
import structlog

from poller import logs, redact
from poller.cli.common import run_with_settings
from poller.infobip import AuthError
from poller.settings import Settings

KEY = "wrong"  # an API key that is a word of the hint
HINT = "the credentials were refused: a wrong or revoked key, or the wrong auth scheme"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No POLLER_* variable from outside; the key "wrong", registered for this test only."""
    for name in [n for n in os.environ if n.upper().startswith("POLLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLLER_INFOBIP__API_KEY", KEY)
    monkeypatch.setenv("POLLER_INFOBIP__BASE_URL", "https://abc12.api.infobip.com")
    # The key is forgotten after the test (a common word would be masked in later ones);
    # a new generation makes the search be built again, after the test and back.
    monkeypatch.setattr(redact, "_forms", set(redact._forms))
    monkeypatch.setattr(redact, "_fixed", set(redact._fixed))
    monkeypatch.setattr(redact, "_generation", redact._generation + 1)
    redact.register(KEY)


def refused() -> AuthError:
    """A 401 whose server text echoes the key, as a misbehaving proxy might."""
    return AuthError(401, "UNAUTHORIZED", f"key {KEY} unknown", operation="GET /push/1/x")


def test_the_cli_line_keeps_the_hint_and_masks_the_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Tried: a command ending in a 401 with the key "wrong"; the hint used to read "a *** or
    revoked key, or the *** auth scheme"."""

    def command(_args: argparse.Namespace, _settings: Settings) -> int:
        raise refused()

    args = argparse.Namespace(config=None, command="bootstrap")
    assert run_with_settings(command, args) == 1
    assert capsys.readouterr().err == (
        f"poller: error: HTTP 401 UNAUTHORIZED: key *** unknown (GET /push/1/x): {HINT}\n"
    )


def test_the_log_line_keeps_the_hint_and_masks_the_answer() -> None:
    """Tried: the daemon's line for refused credentials, error and hint as fields."""
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    exc = refused()
    structlog.get_logger("t").error(
        "infobip refused the credentials", error=str(exc), hint=exc.hint
    )
    line = json.loads(out.getvalue())
    assert line["hint"] == HINT
    assert line["error"] == "HTTP 401 UNAUTHORIZED: key *** unknown (GET /push/1/x)"


def test_own_text_fills_in_masked_values() -> None:
    """Tried: a template of the project's with a foreign value holding the key."""
    line = redact.own("{error}: a wrong key", error=f"echo {KEY}")
    assert redact.text(line) == "echo ***: a wrong key"
    assert redact.text(str(line)) == "echo ***: a *** key"  # a plain copy is foreign again
