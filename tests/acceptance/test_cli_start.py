"""What a person sees first: every command's --help, and a start refused before it writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import poller_command

API_KEY = "key-that-must-not-be-printed-4711"


def test_run_help_names_the_settings_it_needs() -> None:
    result = subprocess.run(
        [*poller_command("run", "--help")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "The daemon." in result.stdout
    for variable in (
        "POLLER_INFOBIP__BASE_URL",
        "POLLER_INFOBIP__API_KEY",
        "POLLER_INFOBIP__APPLICATIONS",
        "POLLER_REDIS__URL",
        "POLLER_SPOOL__PATH",
    ):
        assert variable in result.stdout


def refused_start(command: str, env: dict[str, str], cwd: Path) -> tuple[int, list[str]]:
    """Run `poller COMMAND` with only these settings in an empty directory."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if "PYTHONPATH" in os.environ:
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    result = subprocess.run(
        [sys.executable, "-m", "poller", command],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).splitlines()


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        ("run", {}, ["BASE_URL", "API_KEY", "REDIS__URL", "APPLICATIONS"]),
        ("run", {"POLLER_INFOBIP__API_KEY": API_KEY}, ["BASE_URL", "REDIS__URL", "APPLICATIONS"]),
        (
            "run",
            {"POLLER_INFOBIP__API_KEY": API_KEY, "POLLER_INFOBIP__BASE_URL": "https://x.api.infobip.com"},
            ["REDIS__URL", "APPLICATIONS"],
        ),
        (
            "run",
            {
                "POLLER_INFOBIP__API_KEY": API_KEY,
                "POLLER_INFOBIP__BASE_URL": "https://x.api.infobip.com",
                "POLLER_INFOBIP__APPLICATIONS": "app-a",
                "POLLER_SCHEDULE__GRACE_PERIOD": "10",
            },
            ["REDIS__URL", "GRACE_PERIOD"],
        ),
        ("once", {"POLLER_INFOBIP__API_KEY": API_KEY}, ["BASE_URL", "REDIS__URL", "APPLICATIONS"]),
    ],
)  # fmt: skip
def test_a_refused_start_writes_nothing_and_names_each_missing_setting(
    command: str, env: dict[str, str], named: list[str], tmp_path: Path
) -> None:
    # Tried: `poller run` in an empty directory with no settings, with only an API key (it
    # used to create poller-spool.db, its lock and journal there first, or start against the
    # global base URL with no application), with no application, and with a grace period too
    # short; `poller once` with only a key; each without POLLER_REDIS__URL (it used to mean
    # 127.0.0.1 quietly). Each must exit 2 before touching the disk.
    code, lines = refused_start(command, env, tmp_path)
    assert code == 2
    assert sorted(os.listdir(tmp_path)) == []
    assert len(lines) == len(named), lines
    for line, name in zip(lines, named, strict=True):
        assert line.startswith("poller: bad setting: ")
        assert any(f"POLLER_{group}{name}" in line for group in ("INFOBIP__", "SCHEDULE__", ""))
    assert not any(API_KEY in line for line in lines)


def test_no_application_is_accepted_with_bootstrap_off(tmp_path: Path) -> None:
    # With bootstrap off the account's inbox is pulled as its actions route it: the settings
    # pass, the start goes on (here to the Redis connection, refused on a closed port, which
    # the daemon survives; `once` then keeps the spool and exits 1, not 2).
    env = {
        "POLLER_INFOBIP__API_KEY": API_KEY,
        "POLLER_INFOBIP__BASE_URL": "http://127.0.0.1:9",
        "POLLER_INFOBIP__BOOTSTRAP": "false",
        "POLLER_INFOBIP__MAX_RETRIES": "0",
        "POLLER_REDIS__URL": "redis://127.0.0.1:9/0",
        "POLLER_REDIS__SOCKET_TIMEOUT": "0.5",
        "POLLER_LOG__FORMAT": "json",
    }
    code, lines = refused_start("once", env, tmp_path)
    assert code == 1, lines
    assert not any("bad setting" in line for line in lines)
    assert (tmp_path / "poller-spool.db").exists()


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # Tried: `poller config show | head -3`, whose reader leaves after three lines; it used to
    # print `poller: error: BrokenPipeError: [Errno 32] Broken pipe`.
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env["POLLER_INFOBIP__API_KEY"] = API_KEY
    with subprocess.Popen(
        poller_command("config", "show"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()  # before the command writes: every write meets a pipe with no reader
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=30) == 1
    assert stderr == ""
