"""`poller` with bad TLS settings for Redis: a missing CA file exits 2 naming it, a wrong CA stops
the start at once, and the key password is never printed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from poller.devtools.simulator import Simulator
from tests.fixtures_redis import TLSFiles, TLSRedis, redis_has_tls
from tests.support import make_settings, run_poller
from tests.support.tls import encrypted_key, tls_settings

pytestmark = pytest.mark.skipif(not redis_has_tls(), reason="redis-server built without TLS")
APPS = ["app-alpha", "app-beta"]


def test_poller_exits_2_on_a_missing_ca_file_and_never_prints_the_key_password(
    configured_simulator: Simulator, tls_files: TLSFiles, tmp_path: Path, key_template: str
) -> None:
    configured_simulator.inject("app-alpha", 3)
    rediss = "rediss://127.0.0.1:6380/0"
    settings = make_settings(configured_simulator, rediss, tmp_path, key_template, apps=APPS)
    # Set after validation, as an environment variable naming a file that is gone would be.
    settings.redis.tls_ca_file = tmp_path / "gone.pem"
    done = run_poller(settings, "once", "--no-bootstrap")
    assert done.returncode == 2, done.stderr
    assert f"POLLER_REDIS__TLS_CA_FILE: cannot read {tmp_path / 'gone.pem'}" in done.stderr
    assert configured_simulator.inbox_depth == 3  # the start stopped before any pull

    secret = "key-password-never-shown"
    redis = tls_settings(tls_files, client_cert=True, tls_key_password=secret)
    redis["tls_key_file"] = encrypted_key(tls_files, tmp_path, secret)
    good = make_settings(configured_simulator, rediss, tmp_path, key_template, redis=redis)
    shown = run_poller(good, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert "redis.tls_key_password" in shown.stdout
    assert secret not in shown.stdout + shown.stderr


async def test_the_wrong_ca_stops_the_start_at_once_and_pulls_nothing(
    configured_simulator: Simulator,
    tls_redis: TLSRedis,
    tls_files: TLSFiles,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: a CA that did not sign the server's certificate. The start is refused (exit 1,
    # a line that names the setting) within a second or so, not after retries, and no
    # message leaves the Infobip inbox.
    configured_simulator.inject("app-alpha", 5)
    settings = make_settings(
        configured_simulator,
        tls_redis.url,
        tmp_path,
        key_template,
        apps=APPS,
        redis={"tls_ca_file": tls_files.other_ca},
    )
    started = time.monotonic()
    done = run_poller(settings, "once", "--no-bootstrap", timeout=30)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("event") == "the sink cannot honour the settings"]
    assert refused, done.stderr
    assert "certificate verify failed" in refused[0]["error"]
    assert "POLLER_REDIS__TLS_CA_FILE must hold the CA" in refused[0]["error"]
    assert elapsed < 15
    assert configured_simulator.inbox_depth == 5
