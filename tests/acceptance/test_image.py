"""The container image as `.ci/image` built it from the Dockerfile: its configuration, its file
system, and the poller inside it run as the image's user in a chroot of that file system (no
container runtime: this runs where containers cannot be started).

`.ci/image` writes result.json; CI_IMAGE_RESULT names it. Without it, or when the script could not
build (no podman, no Debian mirror), every test here skips with the reason.
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import poller
from poller.devtools.embedded import EmbeddedRedis, free_port
from poller.devtools.simulator import Simulator
from poller.settings import env_name
from tests.fixtures_sim import SimulatorFactory
from tests.support import ids_at, make_settings, settings_env

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
RESULT_VARIABLE = "CI_IMAGE_RESULT"
SPOOL_DIR = "/var/lib/infobip-push-poller"
UID = 10001
Completed = subprocess.CompletedProcess[str]
SECOND = 1_000_000_000  # image durations are in nanoseconds
# What builds native code; none of it belongs in the runtime image.
COMPILERS = ["gcc", "cc", "c++", "g++", "clang", "make", "ld", "as", "cpp"]
# gcc-12-base (the C runtime's metadata) is not a compiler and is allowed.
BUILD_PACKAGES = re.compile(
    r"build-essential|(gcc|g\+\+|cpp|clang)(-[0-9.]+)?|make|libc6-dev|python3.*-dev"
)


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """result.json of the last `.ci/image` run."""
    path = os.environ.get(RESULT_VARIABLE)
    if not path:
        pytest.skip(
            f"no image was built: run `bash .ci/image` (as root), then set {RESULT_VARIABLE} "
            "to the result.json it names"
        )
    result: dict[str, Any] = json.loads(Path(path).read_text())
    if result["status"] != "built":
        pytest.skip(f"the image was not built: {result['reason']}")
    return result


@pytest.fixture(scope="module")
def inspect(built: dict[str, Any]) -> dict[str, Any]:
    """`podman image inspect` of the image."""
    found: list[dict[str, Any]] = json.loads(Path(built["inspect"]).read_text())
    return found[0]


@pytest.fixture(scope="module")
def config(inspect: dict[str, Any]) -> dict[str, Any]:
    """The image's run configuration (user, entrypoint, environment, ...)."""
    return dict(inspect["Config"])


@pytest.fixture(scope="module")
def rootfs(built: dict[str, Any]) -> Path:
    """The image's file system, exported."""
    return Path(built["rootfs"])


class Image:
    """Commands run as the image would run them: as its user, in its working directory, with
    exactly its environment plus what a test adds, in a chroot of its file system with a /proc
    of its own (a private mount namespace: the mount goes with the process)."""

    def __init__(self, rootfs: Path, config: dict[str, Any]) -> None:
        self.rootfs = rootfs
        self.config = config
        self.spool = rootfs / SPOOL_DIR.lstrip("/")

    def command(self, argv: list[str], extra: dict[str, str] | None = None) -> list[str]:
        """The host command that runs argv inside the image."""
        env = dict(item.split("=", 1) for item in self.config["Env"])
        env.update(extra or {})
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c",
            'root=$0 spec=$1; shift; mount -t proc proc "$root/proc"'
            ' && exec chroot --userspec="$spec" "$root" "$@"',
            str(self.rootfs), self.config["User"],
            "/usr/bin/env", "-i", "-C", self.config["WorkingDir"],
            *(f"{key}={value}" for key, value in env.items()),
            *argv,
        ]  # fmt: skip

    def poller(self, *args: str, extra: dict[str, str] | None = None) -> Completed:
        """The entrypoint with args, run to completion."""
        argv = [*self.config["Entrypoint"], *args]
        return subprocess.run(
            self.command(argv, extra), capture_output=True, text=True, timeout=90, check=False
        )

    def clear_spool(self) -> None:
        for entry in self.spool.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


@pytest.fixture
def image(rootfs: Path, config: dict[str, Any]) -> Iterator[Image]:
    """The built image, its spool directory empty before and after the test."""
    if os.geteuid() != 0:
        pytest.skip("chroot and mounting /proc need root")
    found = Image(rootfs, config)
    found.clear_spool()
    yield found
    found.clear_spool()


def pulling_env(
    sim: Simulator, redis_url: str, key_template: str, tmp_path: Path
) -> dict[str, str]:
    """POLLER_* variables for the simulator's app-a and a Redis server; the spool stays where
    the image puts it."""
    settings = make_settings(sim, redis_url, tmp_path, key_template, apps=["app-a"])
    return {
        name: value
        for name, value in settings_env(settings).items()
        if name.startswith("POLLER_") and name != env_name(("spool", "path"))
    }


# --- configuration ------------------------------------------------------------------------------


def test_runs_as_the_fixed_non_root_user(config: dict[str, Any], rootfs: Path) -> None:
    assert config["User"] == f"{UID}:{UID}"
    passwd = (rootfs / "etc/passwd").read_text().splitlines()
    assert f"poller:x:{UID}:{UID}::{SPOOL_DIR}:/usr/sbin/nologin" in passwd


def test_entrypoint_is_poller_and_the_default_command_is_run(config: dict[str, Any]) -> None:
    assert config["Entrypoint"] == ["poller"]
    assert config["Cmd"] == ["run"]


def test_healthcheck_is_kept_and_runs_poller_check(inspect: dict[str, Any]) -> None:
    # An OCI-format build drops HEALTHCHECK silently; this is the image as built for Docker.
    assert inspect["Healthcheck"] == {
        "Test": ["CMD", "poller", "check"],
        "Interval": 30 * SECOND,
        "Timeout": 5 * SECOND,
        "StartPeriod": 60 * SECOND,
        "Retries": 3,
    }


def test_stop_signal_ports_and_spool_volume(config: dict[str, Any]) -> None:
    assert config["StopSignal"] == "SIGTERM"
    assert set(config["ExposedPorts"]) == {"9464/tcp", "8088/tcp"}
    assert list(config["Volumes"]) == [SPOOL_DIR]
    assert config["WorkingDir"] == SPOOL_DIR
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["POLLER_SPOOL__PATH"] == f"{SPOOL_DIR}/spool.db"
    assert env["POLLER_HEALTH__HOST"] == "0.0.0.0"


# --- file system --------------------------------------------------------------------------------


def test_spool_directory_belongs_to_the_user_alone(rootfs: Path) -> None:
    info = (rootfs / SPOOL_DIR.lstrip("/")).stat()
    assert (info.st_uid, info.st_gid) == (UID, UID)
    assert info.st_mode & 0o7777 == 0o700


def test_no_compiler_and_no_build_leftovers(rootfs: Path) -> None:
    found = [
        f"{directory}/{name}"
        for directory in ["usr/bin", "usr/local/bin", "bin", "opt/venv/bin"]
        for name in COMPILERS
        if (rootfs / directory / name).exists()
    ]
    assert found == []
    status = (rootfs / "var/lib/dpkg/status").read_text()
    installed = {
        block.split("\n", 1)[0].removeprefix("Package: ")
        for block in status.split("\n\n")
        if "Status: install ok installed" in block
    }
    assert [name for name in installed if BUILD_PACKAGES.fullmatch(name)] == []
    # The builder stage's sources, wheels and build backend stay in the builder stage.
    for path in ["src", "wheels", "opt/build"]:
        assert not (rootfs / path).exists(), path
    # The shipped venv cannot install anything: no pip or setuptools in it.
    site = next((rootfs / "opt/venv/lib").glob("python3*/site-packages"))
    assert sorted(p.name for p in site.glob("pip*")) == []
    assert sorted(p.name for p in site.glob("setuptools*")) == []
    assert not (rootfs / "opt/venv/bin/pip").exists()


def test_build_time_pip_settings_are_not_in_the_image(rootfs: Path) -> None:
    # The build got pip's index, proxy and CA bundle as read-only volumes at /etc/xdg/pip:
    # an empty mount point may stay, the files may not.
    mount_point = rootfs / "etc/xdg/pip"
    assert not mount_point.exists() or list(mount_point.iterdir()) == []
    assert not (rootfs / "etc/pip.conf").exists()
    assert not (rootfs / "root/.config/pip").exists()


def test_ships_this_checkouts_code_without_the_development_tools(rootfs: Path) -> None:
    installed = next((rootfs / "opt/venv/lib").glob("python3*/site-packages/poller"))
    source = ROOT / "poller"
    # The simulator, the demo and the throwaway Redis are not the daemon's: not in the image.
    assert not (installed / "devtools").exists()
    differ = [
        str(path.relative_to(source))
        for path in source.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and "devtools" not in path.relative_to(source).parts
        and not (
            (installed / path.relative_to(source)).is_file()
            and filecmp.cmp(path, installed / path.relative_to(source), shallow=False)
        )
    ]
    assert differ == [], "the image is older than the checkout: run `bash .ci/image` again"


# --- the poller, run inside the image -----------------------------------------------------------


def test_version(image: Image) -> None:
    done = image.poller("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"poller {poller.__version__}"


def test_the_development_tools_say_they_are_not_in_the_image(image: Image) -> None:
    # Tried: `poller demo` and `poller simulate` in the image, which ships the daemon only.
    for command in ("demo", "simulate"):
        done = image.poller(command)
        assert done.returncode == 1, done.stderr
        assert "development tool this installation does not have" in done.stderr
        assert "Traceback" not in done.stderr


def test_config_show_uses_the_image_defaults_and_masks_the_key(image: Image) -> None:
    key = "image-test-api-key-d41d8cd9"
    done = image.poller("config", "show", "--json", extra={env_name(("infobip", "api_key")): key})
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["spool"]["path"] == f"{SPOOL_DIR}/spool.db"
    assert shown["health"]["host"] == "0.0.0.0"
    assert shown["log"]["format"] == "json"
    assert key not in done.stdout + done.stderr


async def test_once_moves_the_inbox_into_redis_and_spools_on_the_volume(
    image: Image,
    simulator_factory: SimulatorFactory,
    redis_server: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: `poller once` inside the image as uid 10001, against the simulator and a Redis
    # server on this machine's loopback, with 40 messages waiting.
    sim = await simulator_factory(applications=["app-a"], auto_configure=True)
    sim.inject("app-a", 40)
    extra = pulling_env(sim, redis_server.url, key_template, tmp_path)
    done = await asyncio.to_thread(image.poller, "once", extra=extra)
    assert done.returncode == 0, done.stdout + done.stderr

    counts = await ids_at(redis_server.url, key_template)
    assert set(counts) == set(sim.ledger.ids())
    assert len(counts) == 40
    assert set(counts.values()) == {1}
    written = list(image.spool.iterdir())
    assert "spool.db" in {path.name for path in written}
    assert {(path.stat().st_uid, path.stat().st_gid) for path in written} == {(UID, UID)}


async def test_default_command_passes_its_healthcheck_and_stops_on_its_stop_signal(
    image: Image,
    inspect: dict[str, Any],
    simulator_factory: SimulatorFactory,
    redis_server: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: the image's default command (`poller run`) inside the image, its HEALTHCHECK
    # command beside it until it passes, then the STOPSIGNAL; messages injected while it runs.
    sim = await simulator_factory(applications=["app-a"], auto_configure=True)
    port = str(free_port())
    extra = {
        **pulling_env(sim, redis_server.url, key_template, tmp_path),
        env_name(("health", "enabled")): "true",
        env_name(("health", "port")): port,  # the image's 9464 may be taken on this machine
    }
    argv = [*image.config["Entrypoint"], *image.config["Cmd"]]
    daemon = subprocess.Popen(
        image.command(argv, extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        probe = inspect["Healthcheck"]["Test"]
        assert probe[0] == "CMD"
        deadline = time.monotonic() + 60
        while True:
            checked = await asyncio.to_thread(
                subprocess.run, image.command(probe[1:], extra), capture_output=True, text=True
            )
            if checked.returncode == 0 or time.monotonic() > deadline or daemon.poll() is not None:
                break
            await asyncio.sleep(0.5)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        sim.inject("app-a", 25)
        deadline = time.monotonic() + 30
        while len(await ids_at(redis_server.url, key_template)) < 25:
            assert time.monotonic() < deadline, "the messages did not reach Redis in 30 s"
            await asyncio.sleep(0.5)
    finally:
        daemon.send_signal(getattr(signal, image.config["StopSignal"]))
        out, _ = await asyncio.to_thread(daemon.communicate, timeout=40)
    assert daemon.returncode == 0, out
    counts = await ids_at(redis_server.url, key_template)
    assert len(counts) == 25
    assert set(counts.values()) == {1}


def test_the_poller_adds_under_100_mb_to_its_base(built: dict[str, Any]) -> None:
    # The virtual environment is the one layer of weight the Dockerfile adds (about 62 MB).
    assert 0 < built["size"] - built["base_size"] < 100_000_000
