"""The spool's directory at start: one that cannot be used is named with POLLER_SPOOL__PATH;
one that is missing is created, and the start line says so."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from poller.cli import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`poller once` on the memory sink, pulling from a loopback port nothing listens on."""
    for name in [n for n in os.environ if n.upper().startswith("POLLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "POLLER_SINK__KIND": "memory",
        "POLLER_INFOBIP__BASE_URL": f"http://127.0.0.1:{port}",
        "POLLER_INFOBIP__API_KEY": "k-1234567890",
        "POLLER_INFOBIP__BOOTSTRAP": "false",
        "POLLER_INFOBIP__MAX_RETRIES": "0",
        "POLLER_LOG__FORMAT": "json",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    err = capsys.readouterr().err
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def the_refusal(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    (line,) = [entry for entry in log_lines(capsys) if entry["event"] == "cannot open the spool"]
    return line


def test_a_spool_under_a_file_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: POLLER_SPOOL__PATH under a path that is a file; it used to say "cannot create
    its directory: [Errno 17] File exists" and name no setting."""
    (tmp_path / "data").write_text("")
    spool = tmp_path / "data" / "spool.db"
    monkeypatch.setenv("POLLER_SPOOL__PATH", str(spool))
    assert main(["once"]) == 1
    line = the_refusal(capsys)
    assert line["setting"] == "POLLER_SPOOL__PATH"
    assert line["error"] == f"spool {spool}: {tmp_path / 'data'} is not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any directory")
def test_a_directory_the_poller_cannot_write_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: POLLER_SPOOL__PATH in a directory without write permission."""
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o500)
    monkeypatch.setenv("POLLER_SPOOL__PATH", str(directory / "spool.db"))
    assert main(["once"]) == 1
    line = the_refusal(capsys)
    assert line["setting"] == "POLLER_SPOOL__PATH"
    assert str(directory / "spool.db") in str(line["error"])
    assert "Permission denied" in str(line["error"])


def test_a_missing_directory_is_created_and_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: a spool path whose directory (two levels) does not exist: it is created, and the
    start line says so; it used to be created without a word. A second start does not say it."""
    spool = tmp_path / "var" / "poller" / "spool.db"
    monkeypatch.setenv("POLLER_SPOOL__PATH", str(spool))
    main(["once"])  # the pull fails (nothing listens): the start is what is looked at
    (start,) = [entry for entry in log_lines(capsys) if entry["event"] == "poller starting"]
    assert start["spool_directory_created"] == str(spool.parent)
    assert spool.is_file()
    main(["once"])
    (start,) = [entry for entry in log_lines(capsys) if entry["event"] == "poller starting"]
    assert "spool_directory_created" not in start
