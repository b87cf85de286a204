"""`poller` as a user runs it: --config after the command, the log flags, and `config
example`, each through a real process.

Tried: `poller run --config FILE` with a file that does not exist (the settings read it, and
refuse it naming --config); `poller config show --json` with the shipped example after the
command (the defaults) and with --log-level / --log-format over the environment; `poller
config example` in an environment whose settings are invalid (it needs none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from poller import docs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / docs.EXAMPLE_FILE


def poller(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`poller ARGS` in tmp_path (no .env), with only ``env`` as POLLER_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_after_the_command_is_read(tmp_path: Path) -> None:
    done = poller(tmp_path, "run", "--config", str(tmp_path / "missing.toml"))
    assert done.returncode == 2
    assert "--config: no such file" in done.stderr
    assert not (tmp_path / "poller-spool.db").exists()


def test_the_example_after_the_command_gives_the_defaults(tmp_path: Path) -> None:
    defaults = poller(tmp_path, "config", "show", "--json")
    loaded = poller(tmp_path, "config", "show", "--json", "--config", str(EXAMPLE))
    assert defaults.returncode == loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout) == json.loads(defaults.stdout)


def test_log_flags_override_the_environment(tmp_path: Path) -> None:
    env = {"POLLER_LOG__LEVEL": "ERROR", "POLLER_LOG__FORMAT": "console"}
    done = poller(tmp_path, "config", "show", "--json", "--log-level", "debug", **env)
    assert json.loads(done.stdout)["log"] == {"level": "DEBUG", "format": "console"}
    done = poller(tmp_path, "--log-format", "json", "config", "show", "--json", **env)
    assert json.loads(done.stdout)["log"] == {"level": "ERROR", "format": "json"}


def test_config_example_needs_no_valid_settings(tmp_path: Path) -> None:
    broken = {"POLLER_INFOBIP__PULL_LIMIT": "0"}
    assert poller(tmp_path, "config", "show", **broken).returncode == 2
    done = poller(tmp_path, "config", "example", **broken)
    assert done.returncode == 0, done.stderr
    assert done.stdout == EXAMPLE.read_text(encoding="utf-8")
