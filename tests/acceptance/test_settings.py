"""Settings as `poller config show` prints them: secrets masked, one clear line per bad value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

POLLER = str(Path(sys.executable).with_name("poller"))


def run_poller(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    return subprocess.run(
        [POLLER, *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


SECRETS = {
    "POLLER_INFOBIP__API_KEY": "api-key-0f9e8d7c",
    "POLLER_INFOBIP__PASSWORD": "password-0f9e8d7c",
    "POLLER_INFOBIP__IBSSO_TOKEN": "ibsso-0f9e8d7c",
    "POLLER_INFOBIP__CLIENT_SECRET": "client-secret-0f9e8d7c",
    "POLLER_REDIS__PASSWORD": "redis-pw-0f9e8d7c",
}


def test_config_show_masks_secrets(clean_env: Path) -> None:
    env = {**SECRETS, "POLLER_INFOBIP__APPLICATIONS": "shop-ios,shop-android"}
    table = run_poller("config", "show", env=env, cwd=clean_env)
    as_json = run_poller("config", "show", "--json", env=env, cwd=clean_env)
    assert table.returncode == as_json.returncode == 0, table.stderr + as_json.stderr
    for secret in SECRETS.values():
        assert secret not in table.stdout + table.stderr + as_json.stdout + as_json.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert rows["infobip.api_key"] == [
        "infobip.api_key",
        "**********",
        "POLLER_INFOBIP__API_KEY",
        "env",
    ]
    assert rows["redis.password"][1] == "**********"
    shown = json.loads(as_json.stdout)
    assert shown["infobip"]["client_secret"] == "**********"
    assert shown["infobip"]["applications"] == ["shop-ios", "shop-android"]


def test_cli_bad_setting_is_one_line_per_problem(clean_env: Path) -> None:
    result = run_poller("config", "show", env={"POLLER_INFOBIP__PULL_LIMIT": "5000"}, cwd=clean_env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "poller: bad setting: infobip.pull_limit (POLLER_INFOBIP__PULL_LIMIT): "
        "Input should be less than or equal to 1000"
    ]
