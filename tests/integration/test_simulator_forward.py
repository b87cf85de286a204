"""The simulator's HTTP forward method, over real loopback HTTP: a scripted receiver gets the
POSTs; routing, batching, retries, giving up, forward faults, the ledger, control and CLI."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio

from poller.devtools.simulator import ForwarderSettings, Simulator
from poller.devtools.simulator import cli as simulate_cli
from poller.devtools.simulator.httpserver import HttpServer, Request, Response
from tests.fixtures_sim import OpenApi, SimulatorFactory

pytestmark = pytest.mark.timeout(30)

AUTH = {"Authorization": "App sim-api-key"}
PULL = "/push/1/inbox/reports"
# Quick retries, so a test with a few failures takes a fraction of a second.
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 2.0}


@dataclass
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    content_type: str | None
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)

    @property
    def ids(self) -> list[str]:
        return [m["messageId"] for m in self.body["results"]]


class Receiver:
    """A forwardUrl on loopback: records each request, then answers as its script says.

    Steps: an HTTP status ("200", "500", ...), "close" (headers, then the connection is cut),
    "hang" (no answer until the server stops), "slow:<seconds>" (wait, then 200). When the
    script runs out, every request gets the default step.
    """

    def __init__(self, script: list[str] | None = None, default: str = "200") -> None:
        self.script = deque(script or [])
        self.default = default
        self.requests: list[Received] = []
        self.active = 0
        self.peak = 0
        self.server = HttpServer(self._handle)

    def url(self, path: str = "/mo") -> str:
        return self.server.url + path

    @property
    def batches(self) -> list[list[str]]:
        return [request.ids for request in self.requests]

    def ids(self) -> list[str]:
        return [mid for request in self.requests for mid in request.ids]

    async def _handle(self, request: Request) -> Response:
        step = self.script.popleft() if self.script else self.default
        self.requests.append(
            Received(
                request.method,
                request.path,
                request.headers.get("content-type"),
                json.loads(request.body),
            )
        )
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if step == "hang":
                await asyncio.sleep(3600)
            if step.startswith("slow:"):
                await asyncio.sleep(float(step.removeprefix("slow:")))
                step = "200"
            if step == "close":
                return Response(200, b"{}", drop_after_headers=True)
            return Response(int(step), b"" if step == "204" else b"{}")
        finally:
            self.active -= 1


ReceiverFactory = Callable[..., Awaitable[Receiver]]


@pytest_asyncio.fixture
async def receivers() -> AsyncIterator[ReceiverFactory]:
    """Start receivers with a script; all are stopped after the test."""
    started: list[Receiver] = []

    async def make(script: list[str] | None = None, default: str = "200") -> Receiver:
        receiver = Receiver(script, default)
        await receiver.server.start()
        started.append(receiver)
        return receiver

    try:
        yield make
    finally:
        for receiver in started:
            await receiver.server.stop()


async def forwarding(
    simulator_factory: SimulatorFactory, **settings: Any
) -> tuple[Simulator, ForwarderSettings]:
    forward = ForwarderSettings(**{**FAST, **settings})
    return await simulator_factory(throttle_rps=0, forward=forward), forward


async def settled(sim: Simulator, seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        await sim.ledger.wait_forwarded()


async def eventually(condition: Callable[[], bool], seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


# --- delivery -----------------------------------------------------------------------------


async def test_forward_delivers_batches_in_order(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory, openapi: OpenApi
) -> None:
    receiver = await receivers()
    sim, _ = await forwarding(simulator_factory, batch_size=3, in_flight=1)
    sim.configure_forward("app-alpha", receiver.url("/hooks/mo/secret-token"), "cb-1")
    ids = sim.inject("app-alpha", 10)
    await settled(sim)
    assert receiver.batches == [ids[0:3], ids[3:6], ids[6:9], ids[9:]]
    for request in receiver.requests:
        assert (request.method, request.path) == ("POST", "/hooks/mo/secret-token")
        assert request.content_type == "application/json"
        # The documented pull envelope: what a forward body looks like is not published.
        openapi.validate("receive-push-messages", 200, request.body)
        assert request.body["messageCount"] == len(request.ids)
        assert request.body["pendingMessageCount"] == 0
        assert {m["callbackData"] for m in request.body["results"]} == {"cb-1"}
        assert {m["applicationCode"] for m in request.body["results"]} == {"app-alpha"}
    ledger = sim.ledger
    assert ledger.forward_delivered_ids() == set(ids)
    assert ledger.forward_pending_ids() == ledger.forward_given_up_ids() == set()
    assert ledger.forward_sends() == dict.fromkeys(ids, 1)
    attempts = ledger.forward_attempts
    assert [(a.n, a.attempt, a.status, a.error) for a in attempts] == [
        (n, 1, 200, None) for n in range(1, 5)
    ]
    for attempt in attempts:
        assert attempt.acked_at is not None
        assert attempt.acked_monotonic is not None
        assert attempt.sent_at <= attempt.acked_at
        for message_id in attempt.message_ids:
            created = ledger.created_at(message_id)
            assert created is not None
            assert created[0] <= attempt.sent_monotonic <= attempt.acked_monotonic
            record = ledger.forward_records[message_id]
            assert (record.delivered, record.attempts, record.sends) == (True, 1, 1)
    # Nothing went to the pull inbox.
    assert sim.inbox_depth == 0
    assert sim.ledger.handed_out == 0


async def test_several_posts_in_flight_per_url(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(default="slow:0.3")
    sim, _ = await forwarding(simulator_factory, batch_size=1, in_flight=4)
    sim.configure_forward("app-alpha", receiver.url())
    started = time.monotonic()
    ids = sim.inject("app-alpha", 8)
    await settled(sim)
    elapsed = time.monotonic() - started
    # Eight one-message POSTs to a receiver that takes 0.3 s each: two rounds of four.
    assert receiver.peak == 4
    assert 0.6 <= elapsed < 1.5
    assert all(len(batch) == 1 for batch in receiver.batches)
    assert sorted(receiver.ids()) == sorted(ids)
    # First attempts leave in queue order, whatever order their answers come back in.
    assert [a.message_ids[0] for a in sim.ledger.forward_attempts] == ids


async def test_waiting_messages_share_a_post(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(["slow:0.3"])
    sim, _ = await forwarding(simulator_factory, batch_size=100, in_flight=1)
    sim.configure_forward("app-alpha", receiver.url())
    first = sim.inject("app-alpha", 1)
    await eventually(lambda: len(receiver.requests) == 1)
    # While the first POST is out, the next messages wait and then leave together.
    more = sim.inject("app-alpha", 5) + sim.inject("app-alpha", 5)
    await settled(sim)
    assert receiver.batches == [first, more]


async def test_bulk_backlog_is_forwarded(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory, openapi: OpenApi
) -> None:
    receiver = await receivers()
    sim, _ = await forwarding(simulator_factory, batch_size=100, in_flight=1)
    sim.configure_forward("app-beta", receiver.url())
    assert sim.inject_bulk("app-beta", 250) == 250
    await settled(sim)
    assert [len(batch) for batch in receiver.batches] == [100, 100, 50]
    for request in receiver.requests:
        openapi.validate("receive-push-messages", 200, request.body)
    assert sim.ledger.forward_delivered_ids() == set(receiver.ids())
    assert len(set(receiver.ids())) == 250
    assert sim.state()["forwarded"] == 250


# --- retries and giving up ----------------------------------------------------------------


async def test_retries_after_500_cut_and_timeout_until_2xx(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(["500", "close", "hang", "503", "204"])
    sim, _ = await forwarding(simulator_factory, in_flight=1, timeout=0.3)
    sim.configure_forward("app-alpha", receiver.url())
    ids = sim.inject("app-alpha", 4)
    await settled(sim)
    assert receiver.batches == [ids] * 5
    attempts = sim.ledger.forward_attempts
    assert [(a.attempt, a.status) for a in attempts] == [
        (1, 500),
        (2, None),
        (3, None),
        (4, 503),
        (5, 204),
    ]
    assert attempts[1].error is not None
    assert "RemoteProtocolError" in attempts[1].error
    assert attempts[2].error == "timeout"
    assert [a.delivered for a in attempts] == [False] * 4 + [True]
    assert all(a.acked_at is None for a in attempts[:4])
    assert sim.ledger.forward_sends() == dict.fromkeys(ids, 5)
    assert sim.ledger.forward_delivered_ids() == set(ids)
    # Backoff between tries: each one left after the previous one ended.
    for earlier, later in itertools.pairwise(attempts):
        assert earlier.finished_at is not None
        assert later.sent_at >= earlier.finished_at


async def test_gives_up_after_max_attempts_and_goes_on(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(default="500")
    sim, _ = await forwarding(simulator_factory, in_flight=1, max_attempts=3)
    sim.configure_forward("app-alpha", receiver.url())
    lost = sim.inject("app-alpha", 2)
    await settled(sim)
    assert receiver.batches == [lost] * 3
    assert sim.ledger.forward_given_up_ids() == set(lost)
    assert sim.ledger.forward_delivered_ids() == set()
    assert sim.ledger.forward_pending_ids() == set()
    assert {r.given_up for r in sim.ledger.forward_records.values()} == {True}
    forward = sim.state()["forward"]
    assert (forward["givenUp"], forward["delivered"], forward["attempts"]) == (2, 0, 3)
    receiver.default = "200"
    later = sim.inject("app-alpha", 1)
    await settled(sim)
    assert receiver.batches[-1] == later
    assert sim.ledger.forward_delivered_ids() == set(later)


async def test_backoff_grows_to_its_cap(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(default="500")
    sim, _ = await forwarding(
        simulator_factory, in_flight=1, max_attempts=6, backoff_base=0.02, backoff_max=0.1
    )
    sim.configure_forward("app-alpha", receiver.url())
    sim.inject("app-alpha", 1)
    await settled(sim)
    attempts = sim.ledger.forward_attempts
    gaps = [
        later.sent_monotonic - earlier.sent_monotonic
        for earlier, later in itertools.pairwise(attempts)
    ]
    # Jitter keeps each wait between half and all of base * 2^(n-1), capped.
    for n, gap in enumerate(gaps, start=1):
        assert gap >= min(0.1, 0.02 * 2 ** (n - 1)) / 2
    assert max(gaps) < 0.5


async def test_stop_keeps_undelivered_messages_queued(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(["hang"])
    sim, _ = await forwarding(simulator_factory, in_flight=1, timeout=10)
    sim.configure_forward("app-alpha", receiver.url())
    ids = sim.inject("app-alpha", 3)
    await eventually(lambda: len(receiver.requests) == 1)
    await sim.stop()
    [attempt] = sim.ledger.forward_attempts
    assert (attempt.status, attempt.error) == (None, "stopped")
    assert sim.forward_depth == 3
    assert sim.ledger.forward_pending_ids() == set(ids)
    await sim.start()
    await settled(sim)
    assert receiver.batches == [ids, ids]
    assert [a.attempt for a in sim.ledger.forward_attempts] == [1, 2]


# --- forward faults -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "script"),
    [
        ({}, []),  # closed once the answer starts to arrive: the receiver has answered
        ({"delay": 0.05}, ["slow:0.3"]),  # closed while the receiver still works on it
    ],
)
async def test_forward_drop_sends_again(
    simulator_factory: SimulatorFactory,
    receivers: ReceiverFactory,
    params: dict[str, Any],
    script: list[str],
) -> None:
    receiver = await receivers(script)
    sim, _ = await forwarding(simulator_factory, in_flight=1)
    sim.configure_forward("app-alpha", receiver.url("/in?x=1"))
    sim.add_fault("forward_drop", **params)
    ids = sim.inject("app-alpha", 5)
    await settled(sim)
    # The receiver got the batch, the simulator never read the answer: a duplicate delivery.
    assert receiver.batches == [ids, ids]
    assert receiver.requests[0].path == "/in"
    assert receiver.requests[0].content_type == "application/json"
    first, second = sim.ledger.forward_attempts
    assert (first.fault, first.status, first.error, first.delivered) == (
        "forward_drop",
        None,
        "dropped",
        False,
    )
    assert (second.fault, second.status, second.attempt) == (None, 200, 2)
    assert sim.ledger.forward_sends() == dict.fromkeys(ids, 2)
    assert sim.ledger.forward_delivered_ids() == set(ids)


async def test_forward_duplicate_sends_a_delivered_batch_again(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers()
    sim, _ = await forwarding(simulator_factory, in_flight=1)
    sim.configure_forward("app-alpha", receiver.url())
    sim.add_fault("forward_duplicate")
    ids = sim.inject("app-alpha", 3)
    await settled(sim)
    assert receiver.batches == [ids, ids]
    first, again = sim.ledger.forward_attempts
    assert (first.duplicate, first.status, first.attempt) == (False, 200, 1)
    assert (again.duplicate, again.status, again.attempt) == (True, 200, 1)
    assert sim.ledger.forward_sends() == dict.fromkeys(ids, 2)
    assert {r.attempts for r in sim.ledger.forward_records.values()} == {1}


async def test_forward_delay_holds_the_send(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers()
    sim, _ = await forwarding(simulator_factory, in_flight=1)
    sim.configure_forward("app-alpha", receiver.url())
    sim.add_fault("forward_delay", delay=0.3)
    [message_id] = sim.inject("app-alpha", 1)
    await settled(sim)
    [attempt] = sim.ledger.forward_attempts
    created = sim.ledger.created_at(message_id)
    assert created is not None
    assert attempt.sent_monotonic - created[0] >= 0.3
    assert receiver.requests[0].at - created[0] >= 0.3
    assert attempt.fault == "forward_delay"


async def test_forward_and_api_faults_keep_to_their_own_target(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers()
    sim, _ = await forwarding(simulator_factory, in_flight=1)
    sim.account.configure_pull("app-gamma")
    sim.configure_forward("app-alpha", receiver.url("/hooks/a"))
    sim.configure_forward("app-beta", receiver.url("/hooks/b"))
    sim.add_fault("500", rate=1.0)  # every Infobip API request, no forward POST
    sim.add_fault("forward_drop", rate=1.0, path="/hooks/b/")  # matches neither URL
    sim.add_fault("forward_duplicate", count=1, path="/hooks/b")
    alpha = sim.inject("app-alpha", 2)
    beta = sim.inject("app-beta", 2)
    sim.inject("app-gamma", 2)
    await settled(sim)
    async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH) as client:
        assert (await client.get(PULL)).status_code == 500
    sends = sim.ledger.forward_sends()
    assert [sends[m] for m in alpha] == [1, 1]
    assert [sends[m] for m in beta] == [2, 2]
    assert sim.inbox_depth == 2
    kinds = {f["kind"]: f["target"] for f in sim.state()["faults"]}
    assert kinds == {"500": "api", "forward_drop": "forward"}


# --- routing ------------------------------------------------------------------------------


async def test_actions_api_switches_routing(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory, openapi: OpenApi
) -> None:
    receiver = await receivers()
    sim, _ = await forwarding(simulator_factory)
    base = "/push/1/applications/app-alpha/configurations"
    async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH) as client:
        key = (await client.post(base)).json()["key"]
        pull = await client.post(f"{base}/{key}/actions", json={"type": "PULL"})
        openapi.validate("create-new-action", 200, pull.json())
        pulled = sim.inject("app-alpha", 2)
        forward = await client.post(
            f"{base}/{key}/actions",
            json={"type": "HTTP_FORWARD", "forwardUrl": receiver.url(), "callbackData": "fw"},
        )
        openapi.validate("create-new-action", 200, forward.json())
        # Both actions now: the forward wins.
        forwarded = sim.inject("app-alpha", 3)
        await settled(sim)
        assert sim.state()["applications"]["app-alpha"]["route"] == "HTTP_FORWARD"
        deleted = await client.delete(f"{base}/{key}/actions/{forward.json()['key']}")
        assert deleted.status_code == 204
        pulled += sim.inject("app-alpha", 1)
        body = (await client.get(PULL)).json()
    assert [m["messageId"] for m in body["results"]] == pulled
    assert receiver.ids() == forwarded
    assert {m["callbackData"] for m in receiver.requests[0].body["results"]} == {"fw"}
    assert all("callbackData" not in m for m in body["results"])
    assert sim.ledger.forward_delivered_ids() == set(forwarded)
    assert set(sim.ledger.ids()) == set(pulled)


async def test_generator_and_control_messages_follow_the_routing(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers()
    sim, _ = await forwarding(simulator_factory)
    sim.account.configure_pull("app-alpha")
    sim.configure_forward("app-beta", receiver.url())
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        made = await client.post("/_sim/messages", json={"applicationCode": "app-beta", "count": 4})
        by_control = made.json()["messageIds"]
        assert len(by_control) == 4
        sim.set_rate(300)
        await asyncio.sleep(0.4)
        sim.set_rate(0)
        await settled(sim)
        body = (await client.get(PULL, params={"limit": 1000}, headers=AUTH)).json()
    pulled = [m["messageId"] for m in body["results"]]
    forwarded = receiver.ids()
    assert {m["applicationCode"] for m in body["results"]} == {"app-alpha"}
    assert {m["applicationCode"] for r in receiver.requests for m in r.body["results"]} == {
        "app-beta"
    }
    assert set(by_control) <= set(forwarded)
    generated = sim.state()["generated"]
    assert len(pulled) + len(forwarded) - len(by_control) == generated
    assert len(pulled) > 0
    assert len(forwarded) > len(by_control)
    assert sim.ledger.forward_delivered_ids() == set(forwarded)
    # Every generated or injected message has a creation time; raw ones do not.
    assert all(sim.ledger.created_at(m) is not None for m in pulled + forwarded)
    [raw] = sim.inject_raw([{"messageId": "raw-1"}])
    assert sim.ledger.created_at(raw) is None


# --- control and CLI ----------------------------------------------------------------------


async def test_forward_control_endpoints_and_ledger(
    simulator_factory: SimulatorFactory, receivers: ReceiverFactory
) -> None:
    receiver = await receivers()
    sim, _ = await forwarding(simulator_factory, in_flight=1)
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        set_up = await client.post(
            "/_sim/forward",
            json={
                "applicationCode": "app-gamma",
                "forwardUrl": receiver.url(),
                "callbackData": "c",
            },
        )
        assert set_up.status_code == 200
        action = set_up.json()["action"]
        assert (action["type"], action["forwardUrl"], action["callbackData"]) == (
            "HTTP_FORWARD",
            receiver.url(),
            "c",
        )
        # A second call replaces the forward action instead of adding one.
        again = await client.post(
            "/_sim/forward", json={"applicationCode": "app-gamma", "forwardUrl": receiver.url()}
        )
        configurations = sim.state()["applications"]["app-gamma"]["configurations"]
        assert [a["key"] for c in configurations for a in c["actions"]] == [
            again.json()["action"]["key"]
        ]
        fault = await client.post("/_sim/faults", json={"kind": "forward_duplicate"})
        assert fault.json()["faults"][0]["target"] == "forward"
        made = await client.post(
            "/_sim/messages", json={"applicationCode": "app-gamma", "count": 2}
        )
        ids = made.json()["messageIds"]
        await settled(sim)
        ledger = (await client.get("/_sim/ledger")).json()
        forward = ledger["forward"]
        assert [(a["messageIds"], a["duplicate"], a["status"]) for a in forward["attempts"]] == [
            (ids, False, 200),
            (ids, True, 200),
        ]
        assert set(forward["attempts"][0]) == {
            "n",
            "url",
            "messageIds",
            "attempt",
            "duplicate",
            "fault",
            "status",
            "error",
            "delivered",
            "sentAt",
            "sentMonotonic",
            "finishedAt",
            "ackedAt",
            "ackedMonotonic",
        }
        assert forward["deliveredIds"] == sorted(ids)
        assert (forward["pendingIds"], forward["givenUpIds"], forward["routed"]) == ([], [], 2)
        assert "created" not in ledger
        created = (await client.get("/_sim/ledger", params={"created": "1"})).json()["created"]
        assert set(created) == set(ids)
        for monotonic, wall in created.values():
            assert monotonic <= time.monotonic()
            assert abs(wall - time.time()) < 10
        state = (await client.get("/_sim/state")).json()
        assert state["forward"]["settings"]["batchSize"] == 100
        assert (state["forward"]["delivered"], state["forward"]["pending"]) == (2, 0)
        assert state["forward"]["queued"] == {}
        assert state["forwarded"] == 2

        removed = await client.post(
            "/_sim/forward", json={"applicationCode": "app-gamma", "forwardUrl": None}
        )
        assert removed.json() == {"applicationCode": "app-gamma", "removed": 1}
        assert sim.state()["applications"]["app-gamma"]["route"] is None
        for bad, status in (
            ({"forwardUrl": receiver.url()}, 400),
            ({"applicationCode": "nope", "forwardUrl": receiver.url()}, 404),
            ({"applicationCode": "app-gamma"}, 400),
            ({"applicationCode": "app-gamma", "forwardUrl": "ftp://x"}, 400),
            ({"applicationCode": "app-gamma", "forwardUrl": 5}, 400),
            ({"applicationCode": "app-gamma", "forwardUrl": "http://x", "callbackData": 1}, 400),
        ):
            assert (await client.post("/_sim/forward", json=bad)).status_code == status, bad


async def test_simulate_command_forwards(
    receivers: ReceiverFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver = await receivers()
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--port",
            "0",
            "--applications",
            "app-x,app-y",
            "--auto-configure",
            "--forward",
            f"app-x={receiver.url()}",
            "--forward-batch",
            "2",
            "--forward-in-flight",
            "1",
            "--forward-max-attempts",
            "0",
        ]
    )
    assert (args.forward_batch, args.forward_in_flight, args.forward_timeout) == (2, 1, 5.0)
    task = asyncio.create_task(simulate_cli.run(args))
    async with asyncio.timeout(5):
        while "export" not in (out := capsys.readouterr().out):
            await asyncio.sleep(0.02)
    base_url = re.search(r"POLLER_INFOBIP__BASE_URL=(\S+)", out)[1]  # type: ignore[index]
    assert f"app-x: messages forwarded to {receiver.url()}" in out
    async with httpx.AsyncClient(base_url=base_url) as client:
        for app in ("app-x", "app-y"):
            await client.post("/_sim/messages", json={"applicationCode": app, "count": 3})
        await eventually(lambda: len(receiver.ids()) == 3)
        state = (await client.get("/_sim/state")).json()
        assert state["forward"]["settings"]["maxAttempts"] is None
        assert state["inboxDepth"] == 3
    assert [len(batch) for batch in receiver.batches] == [2, 1]
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0
