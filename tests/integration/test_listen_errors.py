"""A health or forward port that cannot be listened on ends `poller run` with one line naming
the setting and the address (exit 2), not an OSError."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from poller.cli import main

BASE = {
    "POLLER_SINK__KIND": "memory",
    "POLLER_INFOBIP__BASE_URL": "https://abc12.api.infobip.com",
    "POLLER_INFOBIP__API_KEY": "k-1234567890",
    "POLLER_LOG__FORMAT": "json",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No POLLER_* variable from outside; the spool in a fresh directory."""
    for name in [n for n in os.environ if n.upper().startswith("POLLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_health_port_in_use(
    taken_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: `poller run` with POLLER_HEALTH__PORT held by another listener; it used to end
    with `poller: error: OSError: [Errno 98] ... address already in use` and exit 1."""
    monkeypatch.setenv("POLLER_INFOBIP__APPLICATIONS", "shop")
    monkeypatch.setenv("POLLER_HEALTH__PORT", str(taken_port))
    assert main(["run"]) == 2
    assert last_line(capsys) == (
        f"poller: bad setting: health.port (POLLER_HEALTH__PORT): cannot listen on"
        f" 127.0.0.1:{taken_port}: address already in use; choose another port or stop what"
        " listens there"
    )


def test_forward_port_in_use(
    taken_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: `poller run` for a forward application with POLLER_FORWARD__PORT held by another
    listener; it used to log `forward source cannot start` with the bare OSError, exit 1."""
    monkeypatch.setenv("POLLER_FORWARD__APPLICATIONS", "shop")
    monkeypatch.setenv("POLLER_FORWARD__TOKEN", "t" * 24)
    monkeypatch.setenv("POLLER_HEALTH__ENABLED", "false")
    monkeypatch.setenv("POLLER_FORWARD__PORT", str(taken_port))
    assert main(["run"]) == 2
    assert last_line(capsys) == (
        f"poller: bad setting: forward.port (POLLER_FORWARD__PORT): cannot listen on"
        f" 127.0.0.1:{taken_port}: address already in use; choose another port or stop what"
        " listens there"
    )


def test_health_host_not_of_this_machine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: POLLER_HEALTH__HOST set to an address no interface has (TEST-NET-1)."""
    monkeypatch.setenv("POLLER_INFOBIP__APPLICATIONS", "shop")
    monkeypatch.setenv("POLLER_HEALTH__HOST", "192.0.2.1")
    monkeypatch.setenv("POLLER_HEALTH__PORT", "0")
    assert main(["run"]) == 2
    assert last_line(capsys) == (
        "poller: bad setting: health.host (POLLER_HEALTH__HOST): cannot listen on 192.0.2.1:0:"
        " not an address of this machine; use one of its addresses (0.0.0.0 for all)"
    )
