"""Client throughput against the simulator; run on purpose, by path.

Prints messages per second for full 1000-message pulls over loopback and the cost of parsing
one pull body, so a change to the transport or the parser shows up as a number."""

from __future__ import annotations

import time

import pytest

from poller.infobip import InfobipClient, parse_pull
from poller.settings import InfobipSettings
from tests.fixtures_sim import SimulatorFactory

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(120)]

MESSAGES = 20_000


async def test_pull_throughput(simulator_factory: SimulatorFactory) -> None:
    sim = await simulator_factory(throttle_rps=0, auto_configure=True)
    sim.inject("app-alpha", MESSAGES)
    settings = InfobipSettings(base_url=sim.base_url, api_key="sim-api-key", rate_limit=1000)
    pulled = 0
    bodies: list[bytes] = []
    async with InfobipClient(settings) as client:
        started = time.perf_counter()
        while True:
            response = await client.pull(1000)
            pulled += len(response.results)
            bodies.append(response.body)
            if response.pending_message_count == 0:
                break
        elapsed = time.perf_counter() - started
    assert pulled == MESSAGES
    parse_started = time.perf_counter()
    for body in bodies:
        parse_pull(body)
    parse_each = (time.perf_counter() - parse_started) / len(bodies)
    size = sum(map(len, bodies)) / len(bodies)
    print(
        f"\n{pulled} messages in {elapsed:.2f} s: {pulled / elapsed:,.0f} msg/s; "
        f"parse of one {size / 1024:.0f} KiB body: {parse_each * 1000:.2f} ms"
    )
