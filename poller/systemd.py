"""sd_notify(3) without libsystemd: readiness, status, stop and watchdog messages."""

from __future__ import annotations

import os
import socket

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _address(value: str) -> str | None:
    if value.startswith("@"):
        # Linux abstract namespace: a leading NUL instead of the `@` systemd writes.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not used for services


def notify(*lines: str) -> bool:
    """Send `KEY=value` lines to $NOTIFY_SOCKET; False when unset or the send failed."""
    target = os.environ.get(NOTIFY_SOCKET, "")
    address = _address(target) if target else None
    if address is None or not lines:
        return False
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never wait: the caller is the event loop, and a supervisor that stopped reading
            # its socket must not freeze the daemon (EAGAIN is just a lost notification).
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message)
    except OSError:
        # A lost notification must not take the daemon down; the supervisor notices by itself.
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def ready(status: str | None = None) -> bool:
    """Tell systemd that start-up finished (Type=notify), with an optional status line."""
    lines = ["READY=1"]
    if status:
        lines.append(f"STATUS={_one_line(status)}")
    return notify(*lines)


def stopping(status: str | None = None) -> bool:
    """Tell systemd that shutdown began."""
    lines = ["STOPPING=1"]
    if status:
        lines.append(f"STATUS={_one_line(status)}")
    return notify(*lines)


def status(text: str) -> bool:
    """Set the free-form status `systemctl status` shows."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """Ping the watchdog (WatchdogSec=)."""
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for more time to start or stop than TimeoutStartSec/TimeoutStopSec allow."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when not asked for."""
    usec_text = os.environ.get(WATCHDOG_USEC, "")
    pid_text = os.environ.get(WATCHDOG_PID, "")
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            return None
        if pid != os.getpid():
            return None  # meant for another process (a parent that exec'd us differently)
    return usec / 1_000_000 / 2
