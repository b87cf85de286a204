"""The pull source's cadence: hot while messages flow, backing off to the interval when idle."""

from __future__ import annotations

from pathlib import Path

import pytest

from poller.flusher import Flusher
from poller.infobip import InfobipClient
from poller.infobip.settings import InfobipSettings
from poller.sink.memory import MemorySink
from poller.sources.pull import DrainResult, PullSource
from poller.sources.settings import ScheduleSettings
from poller.spool import Spool
from poller.stop import Stop


@pytest.fixture
async def source(tmp_path: Path) -> PullSource:
    stop = Stop(5)
    spool = Spool.open(tmp_path / "s.db", max_rows=100, max_bytes=10**6)
    client = InfobipClient(InfobipSettings(base_url="http://127.0.0.1:9", api_key="k"))
    schedule = ScheduleSettings(interval=5.0, hot_interval=0.2, hot_period=30.0)
    pull = PullSource(
        client, spool, None, Flusher(spool, MemorySink(), stop), stop,
        pull_limit=10, max_pulls=1, in_flight=1, schedule=schedule,
    )  # fmt: skip
    yield pull
    await client.aclose()
    spool.close()


def test_hot_while_messages_flow_then_back_off_step_by_step(source: PullSource) -> None:
    t = 1000.0
    assert source.cadence(DrainResult(pulled=40), now=t) == 0.2
    # Empty answers within the hot period: still hot.
    assert source.cadence(DrainResult(), now=t + 10) == 0.2
    assert source.cadence(DrainResult(), now=t + 29) == 0.2
    # Past it: doubling up to the interval, never past it.
    steps = [source.cadence(DrainResult(), now=t + 31 + i) for i in range(8)]
    assert steps == [0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0]
    # A message again: hot at once.
    assert source.cadence(DrainResult(quarantined=1), now=t + 60) == 0.2


def test_idle_requests_stay_within_one_per_interval(source: PullSource) -> None:
    # Tried: an hour of empty answers after the hot period.
    t = 0.0
    source.cadence(DrainResult(pulled=1), now=t)
    t = 31.0
    drains = 0
    while t < 31.0 + 3600:
        delay = source.cadence(DrainResult(), now=t)
        assert delay is not None
        t += delay
        drains += 1
    assert drains <= 3600 / 5.0 + 5  # the back-off's few steps, then one per interval


def test_failed_or_paused_drains_keep_the_schedule(source: PullSource) -> None:
    assert source.cadence(DrainResult(pull_error="HTTP 500")) is None
    assert source.cadence(DrainResult(backpressure=True)) is None
    assert source.schedule is not None
    source.schedule = source.schedule.model_copy(update={"cron": "* * * * *"})
    assert source.cadence(DrainResult(pulled=5)) is None
