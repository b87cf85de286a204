"""The spool on a full file system and on a read-only one, with `poller run` as a process.

Each test mounts a small file system of its own for the spool (root only: `mount` needs it;
skipped otherwise, with the reason): a tmpfs to fill with a filler file, or an ext4 image on a
loop device that the kernel turns read-only on an error (`errors=remount-ro`), as it does on
a failing disk. Linux refuses to remount read-only a file system that a process holds a file
open for writing on (the spool), so the kernel's own error path is the way a spool directory
becomes read-only under a running daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from poller.devtools.embedded import free_port
from poller.devtools.simulator import ForwarderSettings, Simulator
from poller.settings import Settings
from tests.fixtures_sim import SimulatorFactory
from tests.support import PollerProcess, Processes, ids_at, make_settings, poller_command
from tests.support import settings_env as env_of

PULLED = ["disk-alpha", "disk-beta"]
FORWARDED = "disk-forward"
TOKEN = "disk-forward-token-0123456789abcdef"  # a loopback test token
FORWARD_PATH = "/infobip/forward"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _mount(args: list[str]) -> str | None:
    """Run mount/umount; the error text when it failed."""
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()


def _need_root(tool: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a test file system needs root")
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs of its own (room for the spool, its 4 MiB WAL, and the journal)."""
    _need_root("mount")
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    error = _mount(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)])
    if error is not None:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    try:
        yield mount_point
    finally:
        _mount(["umount", "-l", str(mount_point)])


@pytest.fixture
def ext4_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB ext4 image on a loop device, mounted with errors=remount-ro."""
    _need_root("mkfs.ext4")
    image, mount_point = tmp_path / "disk.img", tmp_path / "fs"
    mount_point.mkdir()
    with image.open("wb") as out:
        out.truncate(32 * 2**20)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    error = _mount(["mount", "-o", "loop,errors=remount-ro", str(image), str(mount_point)])
    if error is not None:
        pytest.skip(f"cannot mount a loop device here: {error}")
    try:
        yield mount_point
    finally:
        _mount(["umount", "-l", str(mount_point)])


def fill(path: Path) -> int:
    """Write a filler file until the file system is full; its size."""
    written = 0
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                written += os.write(fd, chunk if written < 2**30 else b"")
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]  # the last pages, to the last byte
    finally:
        os.close(fd)


def disk_settings(sim: Simulator, redis_url: str, spool_dir: Path, key_template: str) -> Settings:
    """Two pulled applications and one forwarded, the spool on the test's file system."""
    port = free_port()
    return make_settings(
        sim,
        redis_url,
        spool_dir,
        key_template,
        apps=PULLED,
        infobip={"pull_limit": 100},
        redis={"socket_timeout": 1.0},
        health={"enabled": True, "port": free_port()},
        forward={
            "applications": [FORWARDED],
            "token": TOKEN,
            "token_in": "path",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}{FORWARD_PATH}",
        },
    )


async def until(what: Callable[[], bool], timeout: float, message: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(message())
        await asyncio.sleep(0.1)


async def spool_rows(settings: Settings) -> float | None:
    return await metric(settings, "poller_spool_rows")


async def metric(settings: Settings, name: str) -> float | None:
    """One unlabelled sample of the daemon's /metrics, None while it cannot be read."""
    url = f"http://127.0.0.1:{settings.health.port}/metrics"
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            text = (await client.get(url)).text
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return None


async def forward_status(settings: Settings) -> int:
    """What the receiver answers to one new forwarded message, POSTed by hand."""
    body = {
        "results": [
            {
                "messageId": f"by-hand-{time.monotonic_ns()}",
                "applicationCode": FORWARDED,
                "receivedAt": "2026-01-01T00:00:00.000+0000",
                "content": {"body": "by hand"},
            }
        ]
    }
    url = f"http://127.0.0.1:{settings.forward.port}{FORWARD_PATH}/{TOKEN}"
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        return (await client.post(url, json=body)).status_code


async def start_traffic(
    simulator_factory: SimulatorFactory,
    redis_url: str,
    spool_dir: Path,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> tuple[Simulator, Settings, PollerProcess]:
    """The simulator (pull inbox + forwarding), `poller run` ready, 100 msg/s flowing."""
    sim = await simulator_factory(
        applications=[*PULLED, FORWARDED],
        auto_configure=False,
        rate=0.0,
        forward=ForwarderSettings(max_attempts=None),
    )
    settings = disk_settings(sim, redis_url, spool_dir, key_template)
    poller = await processes.start(settings, tmp_path / "poller.log")
    await poller.wait_ready(200, timeout=30)
    sim.set_rate(100.0)
    await until(
        lambda: sim.ledger.handed_out > 200 and sim.ledger.forward_counts()["delivered"] > 50,
        30,
        lambda: f"no traffic: {sim.ledger.forward_counts()}\n{poller.logs()}",
    )
    return sim, settings, poller


async def quiet(sim: Simulator, settings: Settings, poller: PollerProcess) -> None:
    """Stop generating and wait until everything made so far is in Redis."""
    sim.set_rate(0.0)
    deadline = time.monotonic() + 60
    while not (
        sim.inbox_depth == 0
        and sim.ledger.settled()
        and sim.ledger.forward_settled()
        and sim.forward_depth == 0
        and await spool_rows(settings) == 0
    ):
        assert time.monotonic() < deadline, f"not drained\n{poller.logs()}"
        await asyncio.sleep(0.2)


async def drain_and_check(
    sim: Simulator,
    settings: Settings,
    poller: PollerProcess,
    redis_url: str,
    key_template: str,
    by_hand: int,
) -> None:
    """Stop the traffic, let everything reach Redis, SIGTERM; every message once."""
    await quiet(sim, settings, poller)
    poller.signal(signal.SIGTERM)
    assert await poller.wait(30) == 0, poller.logs()
    counts = await ids_at(redis_url, key_template)
    pulled = set(sim.ledger.ids())
    forwarded = set(sim.ledger.forward_records)
    assert pulled
    assert forwarded
    expected = pulled | forwarded
    assert {mid for mid in counts if not mid.startswith("by-hand-")} == expected
    assert sum(1 for mid in counts if mid.startswith("by-hand-")) == by_hand
    assert set(counts.values()) == {1}, "a message was written twice"


async def test_full_disk_stops_pulls_refuses_forwards_and_recovers(
    small_fs: Path,
    simulator_factory: SimulatorFactory,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried: the spool's file system filled to the last byte by another file between two
    # pulls, then Infobip producing 100 msg/s (pulled and forwarded) while it stays full,
    # then the file removed.
    sim, settings, poller = await start_traffic(
        simulator_factory, redis_url, small_fs, key_template, tmp_path, processes
    )
    await quiet(sim, settings, poller)
    filler = small_fs / "filler"
    fill(filler)

    body = await poller.wait_ready(503, timeout=10)
    spool_check = body["checks"]["spool"]  # type: ignore[index]
    assert spool_check["ok"] is False
    assert "free" in spool_check["detail"], spool_check
    assert str(small_fs) in spool_check["detail"]
    # No pull without room: what Infobip hands out is forgotten there. Messages wait at
    # Infobip instead, and the receiver refuses what it cannot store (Infobip retries).
    handed = sim.ledger.handed_out
    sim.set_rate(100.0)
    await asyncio.sleep(4.0)
    assert sim.ledger.handed_out == handed, "pulled while the spool had no room"
    assert sim.inbox_depth > 0
    assert await forward_status(settings) == 503
    assert sim.ledger.forward_counts()["pending"] > 0
    assert "spool refused a pulled batch" not in poller.logs()
    assert await metric(settings, "poller_spool_disk_paused") == 1.0

    filler.unlink()
    await poller.wait_ready(200, timeout=30)
    assert await forward_status(settings) == 200
    await until(lambda: sim.ledger.handed_out > handed, 10, poller.logs)
    # The gauge follows the check made before each pull: the one just sent cleared it.
    assert await metric(settings, "poller_spool_disk_paused") == 0.0
    await drain_and_check(sim, settings, poller, redis_url, key_template, by_hand=1)


async def test_read_only_spool_directory_stops_the_start_with_a_clear_error(
    small_fs: Path,
    simulator: Simulator,
    redis_url: str,
    key_template: str,
) -> None:
    # Tried: `poller run` with its spool in a directory on a read-only file system, once with
    # no spool there yet and once with one made earlier.
    settings = make_settings(
        simulator, redis_url, small_fs, key_template, apps=PULLED, health={"enabled": False}
    )
    for make_spool_first in (False, True):
        if make_spool_first:
            assert _mount(["mount", "-o", "remount,rw", str(small_fs)]) is None
            assert subprocess.run(
                poller_command("once", "--no-bootstrap"),
                env=env_of(settings),
                capture_output=True,
                timeout=60,
                check=False,
            ).returncode in (0, 1)
            assert settings.spool.path.exists()
        assert _mount(["mount", "-o", "remount,ro", str(small_fs)]) is None
        done = subprocess.run(
            poller_command("run"),
            env=env_of(settings),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        text = done.stdout + done.stderr
        assert done.returncode == 1, text
        assert "cannot open the spool" in text
        assert "Read-only file system" in text or "read-only" in text
        assert str(small_fs) in text
        assert "Traceback" not in text


async def test_spool_turning_read_only_stops_pulls_and_loses_nothing(
    ext4_fs: Path,
    simulator_factory: SimulatorFactory,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried: the kernel makes the spool's ext4 file system read-only under the running daemon
    # (an injected file-system error, errors=remount-ro) while 100 msg/s arrive; then the
    # operator's way back: stop the daemon, unmount, fsck, mount, start it again.
    sim, settings, poller = await start_traffic(
        simulator_factory, redis_url, ext4_fs, key_template, tmp_path, processes
    )
    device = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(ext4_fs)], capture_output=True, text=True, check=True
    ).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip(f"this kernel has no {trigger}")
    await quiet(sim, settings, poller)
    trigger.write_text("test: spool file system error\n")

    body = await poller.wait_ready(503, timeout=10)
    spool_check = body["checks"]["spool"]  # type: ignore[index]
    assert "read-only" in spool_check["detail"].lower(), spool_check
    handed = sim.ledger.handed_out
    sim.set_rate(100.0)
    await asyncio.sleep(4.0)
    assert sim.ledger.handed_out == handed, "pulled while the spool could not take it"
    assert sim.inbox_depth > 0
    assert await forward_status(settings) == 503

    # Nothing was pulled that the spool could not take, so nothing is held: a clean stop.
    poller.signal(signal.SIGTERM)
    assert await poller.wait(30) == 0, poller.logs()
    image = tmp_path / "disk.img"
    assert _mount(["umount", str(ext4_fs)]) is None
    subprocess.run(["e2fsck", "-f", "-y", str(image)], capture_output=True, check=False)
    assert _mount(["mount", "-o", "loop,errors=remount-ro", str(image), str(ext4_fs)]) is None

    restarted = await processes.start(settings, tmp_path / "poller-2.log")
    await restarted.wait_ready(200, timeout=30)
    await until(lambda: sim.ledger.handed_out > handed, 10, restarted.logs)
    await drain_and_check(sim, settings, restarted, redis_url, key_template, by_hand=0)
