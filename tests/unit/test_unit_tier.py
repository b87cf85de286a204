"""The unit tier's guard (tests/unit/conftest.py) refuses what it says, and nothing else."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.conftest import UnitTierError


async def test_network_sockets_and_processes_are_refused(
    no_network_no_processes: list[str],
) -> None:
    # Tried: a TCP connect, a UDP send, binds on IPv4 and IPv6, each way of starting a
    # process; and asyncio's own connection helper, which a client library would use.
    tried = no_network_no_processes
    with socket.socket() as tcp, pytest.raises(UnitTierError, match="tests/integration"):
        tcp.connect(("127.0.0.1", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(UnitTierError):
        udp.sendto(b"x", ("127.0.0.1", 9))
    with socket.socket(socket.AF_INET6) as tcp6, pytest.raises(UnitTierError):
        tcp6.bind(("::1", 0))
    with pytest.raises(UnitTierError):
        await asyncio.open_connection("127.0.0.1", 9)
    with pytest.raises(UnitTierError, match="started a process"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(UnitTierError):
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    with pytest.raises(UnitTierError):
        os.system("true")
    with pytest.raises(UnitTierError):
        multiprocessing.get_context("spawn").Process(target=print).start()
    assert len(tried) == 8
    tried.clear()


def test_a_refusal_the_code_swallowed_still_fails_the_test(
    no_network_no_processes: list[str],
) -> None:
    # Tried: code that treats any error as "unreachable" (as a health probe does); the guard
    # keeps the attempt, and the fixture fails the test at teardown when it is not empty.
    def reachable() -> bool:
        with socket.socket() as probe:
            try:
                probe.connect(("127.0.0.1", 9))
            except Exception:
                return False
            return True

    assert not reachable()
    assert len(no_network_no_processes) == 1
    assert "connect" in no_network_no_processes[0]
    no_network_no_processes.clear()


async def test_unix_sockets_and_the_event_loop_still_work(tmp_path: Path) -> None:
    # Tried: what unit tests rely on: a socketpair (asyncio's loop wakes itself with one),
    # a Unix datagram socket (the systemd notify protocol), and a loop running callbacks.
    left, right = socket.socketpair()
    with left, right:
        left.send(b"ping")
        assert right.recv(4) == b"ping"
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"READY=1", path)
        assert server.recv(16) == b"READY=1"
    assert await asyncio.wait_for(asyncio.sleep(0, "done"), 1) == "done"
