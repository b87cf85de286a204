"""Fixtures of the acceptance tier: `poller run` processes, each killed after its test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.support import Processes


@pytest_asyncio.fixture
async def processes() -> AsyncIterator[Processes]:
    """Start `poller run` processes with `await processes.start(settings, log)`; every one
    still running after the test is killed."""
    started = Processes()
    yield started
    for poller in started:
        await poller.kill()
