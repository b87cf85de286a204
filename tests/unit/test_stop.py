"""The one stop object every stage is handed."""

from __future__ import annotations

import asyncio
import time

from poller.stop import Stop


async def test_a_stop_is_asked_for_once_and_its_deadline_counts_from_then() -> None:
    stop = Stop(5.0)
    seen: list[str] = []
    stop.on_request(lambda: seen.append("called"))
    assert (stop.requested, stop.remaining()) == (False, 5.0)
    assert stop.request("SIGTERM")
    first = stop.deadline
    assert not stop.request("SIGINT")  # a second signal changes nothing
    assert (stop.deadline, stop.reason, seen) == (first, "SIGTERM", ["called"])
    assert 4.0 < stop.remaining() <= 5.0
    stop.on_request(lambda: seen.append("late"))  # registered after: called at once
    assert seen == ["called", "late"]


async def test_a_sleep_ends_when_the_stop_is_asked_for() -> None:
    stop = Stop(5.0)
    assert not await stop.sleep(0.01)
    asyncio.get_running_loop().call_later(0.05, stop.request)
    started = time.monotonic()
    assert await stop.sleep(30)
    assert time.monotonic() - started < 5
