"""What every unit test shares."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


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
