"""Shared fixtures: a real Redis/Valkey server and the real Infobip simulator, on loopback;
an environment without POLLER_* settings."""

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.fixtures_sim", "tests.fixtures_redis"]

# Property tests run the same examples on every machine (CI failures reproduce), keep no
# example database in the work tree, and stay fast on a loaded 2-core machine.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No POLLER_* variable from outside, and a working directory without a .env."""
    for name in [n for n in os.environ if n.startswith("POLLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def logs_as_they_were() -> Iterator[None]:
    """A test that runs a command in-process (``poller.cli.main``) or sets up the logs points
    them at a stream of its own (the stderr pytest captured for it); the tests after it, in
    any tier, find the logs as they were before."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
