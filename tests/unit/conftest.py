"""What every unit test shares."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from poller import logs


@pytest.fixture(autouse=True)
def logs_back_on_stderr() -> Iterator[None]:
    """A test that runs a command in-process (``poller.cli.main``) points the logs at the
    stderr pytest captured for it; the tests after it must not write to that closed stream."""
    yield
    logs.configure(stream=sys.__stderr__)
