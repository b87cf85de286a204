"""sd_notify against a real datagram socket bound by the test, as systemd binds one."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from poller import systemd


class Peer:
    """The supervisor's end: a bound AF_UNIX datagram socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")


@pytest.fixture(params=["path", "abstract"])
def peer(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Peer]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        env_value = address
    else:
        name = f"poller-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    monkeypatch.setenv("NOTIFY_SOCKET", env_value)
    try:
        yield Peer(sock, env_value)
    finally:
        sock.close()


def test_ready_with_status(peer: Peer) -> None:
    assert systemd.ready("polling 2 applications\nevery 5 s")
    assert peer.receive() == ["READY=1", "STATUS=polling 2 applications every 5 s"]


def test_each_helper_sends_its_line(peer: Peer) -> None:
    assert systemd.status("draining 120 rows")
    assert peer.receive() == ["STATUS=draining 120 rows"]
    assert systemd.watchdog()
    assert peer.receive() == ["WATCHDOG=1"]
    assert systemd.stopping()
    assert peer.receive() == ["STOPPING=1"]
    assert systemd.extend_timeout(2.5)
    assert peer.receive() == ["EXTEND_TIMEOUT_USEC=2500000"]
    assert systemd.notify("A=1", "B=2")
    assert peer.receive() == ["A=1", "B=2"]


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready() is False
    assert systemd.watchdog() is False


def test_socket_nobody_listens_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.ready() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("60000000", None, 30.0),
        ("60000000", "self", 30.0),
        ("60000000", "other", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("1000000", "not-a-pid", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        elif value == "self":
            monkeypatch.setenv(name, str(os.getpid()))
        elif value == "other":
            monkeypatch.setenv(name, str(os.getpid() + 1))
        else:
            monkeypatch.setenv(name, value)
    assert systemd.watchdog_interval() == expected


def test_a_supervisor_that_stops_reading_never_blocks_the_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tried: thousands of notifications to a socket nobody reads. Each send must return at once
    # (False when the buffer is full) instead of freezing the event loop that calls it.
    path = tmp_path / "full.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        started = time.monotonic()
        results = [systemd.status("x" * 200) for _ in range(5000)]
        assert time.monotonic() - started < 5
    assert results[0] is True
    assert results[-1] is False
