"""The unit tier's rule, enforced: a unit test opens no network socket and starts no process.

Every unit test runs with connect/bind of IPv4/IPv6 sockets and every way of starting a
process refused. A refusal raises `UnitTierError` where it happens and, in case the code under
test caught it (a probe that treats any error as "down"), fails the test at teardown too.
Unix sockets stay allowed: asyncio's loop wakes itself through a socketpair, and the systemd
notify protocol is a Unix datagram. A test that needs a server or a process belongs in
tests/integration/ or tests/acceptance/.
"""

from __future__ import annotations

import _posixsubprocess
import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

NETWORK = (socket.AF_INET, socket.AF_INET6)
ELSEWHERE = "move it to tests/integration/ (servers) or tests/acceptance/ (poller processes)"


class UnitTierError(RuntimeError):
    """A unit test tried to reach the network or start a process."""


@pytest.fixture(autouse=True)
def no_network_no_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse network sockets and new processes for the length of one unit test; what was
    tried, in order (the test fails at teardown unless it is empty)."""
    tried: list[str] = []

    def refuse(what: str) -> UnitTierError:
        tried.append(what)
        return UnitTierError(f"a unit test {what}: {ELSEWHERE}")

    def guard_socket(name: str) -> None:
        original = getattr(socket.socket, name)

        def guarded(self: socket.socket, *args: Any) -> Any:
            if self.family in NETWORK:
                raise refuse(f"called socket.{name}({', '.join(map(repr, args))})")
            return original(self, *args)

        monkeypatch.setattr(socket.socket, name, guarded)

    def guard_call(owner: object, name: str) -> None:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            shown = args[:2] if args else ()
            raise refuse(f"started a process ({getattr(owner, '__name__', owner)}.{name}{shown})")

        monkeypatch.setattr(owner, name, guarded)

    for name in ("connect", "connect_ex", "bind", "sendto"):
        guard_socket(name)

    def popen(self: subprocess.Popen[Any], args: Any, *more: Any, **kwargs: Any) -> None:
        raise refuse(f"started a process (subprocess.Popen({args!r}))")

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    spawners: list[tuple[object, str]] = [
        (asyncio, "create_subprocess_exec"),
        (asyncio, "create_subprocess_shell"),
        (_posixsubprocess, "fork_exec"),  # multiprocessing and anything below Popen
        (os, "system"),
        (os, "fork"),
        (os, "forkpty"),
        (os, "posix_spawn"),
        (os, "posix_spawnp"),
    ]
    for owner, name in spawners:
        if hasattr(owner, name):
            guard_call(owner, name)
    yield tried
    if tried:
        pytest.fail(f"a unit test reached outside its process: {'; '.join(tried)}. {ELSEWHERE}")
