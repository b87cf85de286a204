"""The simulator over real loopback HTTP: documented shapes, semantics, auth, throttle, faults."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import time
import uuid
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import jsonschema
import pytest

from poller.devtools.simulator import Simulator
from poller.devtools.simulator import cli as simulate_cli
from poller.devtools.simulator.httpserver import HttpServer, Request, Response
from tests.fixtures_sim import OpenApi, SimulatorFactory

pytestmark = pytest.mark.timeout(30)

AUTH = {"Authorization": "App sim-api-key"}
PULL = "/push/1/inbox/reports"
RECEIVED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000")
REQUIRED = ("messageId", "from", "to", "applicationCode", "receivedAt", "text", "cleanText")


def connect(
    sim: Simulator, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    """A client for the simulator, authenticated with the API key unless told otherwise."""
    return httpx.AsyncClient(
        base_url=sim.base_url, headers=AUTH if headers is None else headers, **kwargs
    )


def configs(app: str) -> str:
    return f"/push/1/applications/{app}/configurations"


def service_exception(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["requestError"]["serviceException"]
    return body


async def settled(sim: Simulator) -> None:
    async with asyncio.timeout(5):
        await sim.ledger.wait_settled()


# --- the pull endpoint --------------------------------------------------------------------


async def test_pull_returns_documented_messages(
    configured_simulator: Simulator, openapi: OpenApi
) -> None:
    sim = configured_simulator
    injected = sim.inject("app-alpha", 40) + sim.inject("app-beta", 40)
    async with connect(sim) as client:
        response = await client.get(PULL, params={"limit": 1000})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    openapi.validate("receive-push-messages", 200, body)
    assert [m["messageId"] for m in body["results"]] == injected
    assert body["messageCount"] == 80
    assert body["pendingMessageCount"] == 0
    for message in body["results"]:
        assert all(isinstance(message[field], str) and message[field] for field in REQUIRED)
        assert RECEIVED_AT.fullmatch(message["receivedAt"])
        uuid.UUID(message["messageId"])
        uuid.UUID(message["from"])
        if "keyword" in message:
            assert message["text"] == f"{message['keyword']} {message['cleanText']}"
        else:
            assert message["text"] == message["cleanText"]
        for value in message.get("customPayload", {}).values():
            assert isinstance(value, dict)
    # Over 80 messages every optional field shows up at least once, and so does non-ASCII.
    for optional in ("subscriberId", "keyword", "customPayload", "pairedMessageId", "bulkId"):
        assert any(optional in m for m in body["results"]), optional
    assert any(not m["text"].isascii() for m in body["results"])


async def test_pull_is_destructive_and_pending_is_exact(configured_simulator: Simulator) -> None:
    sim = configured_simulator
    injected = sim.inject("app-alpha", 120)
    seen: list[str] = []
    async with connect(sim) as client:
        for expected_count, expected_pending in ((50, 70), (50, 20), (20, 0), (0, 0)):
            body = (await client.get(PULL, params={"limit": 50})).json()
            assert (body["messageCount"], body["pendingMessageCount"]) == (
                expected_count,
                expected_pending,
            )
            assert len(body["results"]) == expected_count
            seen += [m["messageId"] for m in body["results"]]
    assert seen == injected
    assert len(set(seen)) == len(seen)
    await settled(sim)
    assert [len(e.message_ids) for e in sim.ledger.entries] == [50, 50, 20]
    assert all(e.completed for e in sim.ledger.entries)
    assert sim.ledger.delivered_ids() == set(injected)
    assert sim.inbox_depth == 0


async def test_pull_default_limit_is_50(configured_simulator: Simulator) -> None:
    configured_simulator.inject("app-gamma", 60)
    async with connect(configured_simulator) as client:
        body = (await client.get(PULL)).json()
    assert (body["messageCount"], body["pendingMessageCount"]) == (50, 10)


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "abc", "1.5", "", "99999999999999999999"])
async def test_pull_rejects_bad_limit(
    configured_simulator: Simulator, openapi: OpenApi, limit: str
) -> None:
    configured_simulator.inject("app-alpha", 3)
    async with connect(configured_simulator) as client:
        response = await client.get(PULL, params={"limit": limit})
    assert response.status_code == 400
    openapi.validate("receive-push-messages", 400, response.json())
    assert service_exception(response)["messageId"] == "BAD_REQUEST"
    assert configured_simulator.inbox_depth == 3


@pytest.mark.parametrize("limit", [1, 1000])
async def test_pull_accepts_limit_bounds(configured_simulator: Simulator, limit: int) -> None:
    configured_simulator.inject("app-alpha", 1001)
    async with connect(configured_simulator) as client:
        body = (await client.get(PULL, params={"limit": limit})).json()
    assert body["messageCount"] == limit
    assert body["pendingMessageCount"] == 1001 - limit


async def test_only_pull_routed_applications_reach_the_inbox(simulator: Simulator) -> None:
    sim = simulator
    async with connect(sim) as client:
        key = (await client.post(configs("app-alpha"))).json()["key"]
        pull = await client.post(f"{configs('app-alpha')}/{key}/actions", json={"type": "PULL"})
        assert pull.status_code == 200
        key = (await client.post(configs("app-beta"))).json()["key"]
        # Port 9 (discard) refuses: the forwarder retries in the background until the stop.
        forward = {"type": "HTTP_FORWARD", "forwardUrl": "http://127.0.0.1:9/mo"}
        assert (await client.post(f"{configs('app-beta')}/{key}/actions", json=forward)).is_success
        alpha = sim.inject("app-alpha", 3)
        beta = sim.inject("app-beta", 4)
        assert sim.inject("app-gamma", 5) == []
        body = (await client.get(PULL)).json()
    assert [m["messageId"] for m in body["results"]] == alpha
    assert {m["applicationCode"] for m in body["results"]} == {"app-alpha"}
    # The forward application's messages went to its forwardUrl, not to the inbox.
    assert len(beta) == 4
    assert sim.ledger.forward_pending_ids() == set(beta)
    state = sim.state()
    assert state["notRouted"] == 5
    assert state["forwarded"] == 4
    assert state["injected"] == 12
    assert state["applications"]["app-alpha"]["routed"] is True
    assert state["applications"]["app-alpha"]["route"] == "PULL"
    assert state["applications"]["app-beta"]["route"] == "HTTP_FORWARD"
    assert state["applications"]["app-gamma"] == {
        "routed": False,
        "route": None,
        "configurations": [],
    }


async def test_messages_carry_callback_data_of_the_pull_action(simulator: Simulator) -> None:
    async with connect(simulator) as client:
        key = (await client.post(configs("app-alpha"))).json()["key"]
        action = {"type": "PULL", "callbackData": "tenant=42;ü"}
        await client.post(f"{configs('app-alpha')}/{key}/actions", json=action)
        simulator.inject("app-alpha", 2)
        body = (await client.get(PULL)).json()
    assert [m["callbackData"] for m in body["results"]] == ["tenant=42;ü"] * 2


async def test_unknown_fields_survive(configured_simulator: Simulator) -> None:
    extra = {"futureField": {"nested": ["x", 1, None]}, "платформа": "ios"}
    configured_simulator.inject("app-alpha", 2, extra=extra)
    async with connect(configured_simulator) as client:
        body = (await client.get(PULL)).json()
    for message in body["results"]:
        assert message["futureField"] == {"nested": ["x", 1, None]}
        assert message["платформа"] == "ios"


# --- configurations and actions -----------------------------------------------------------


async def test_configuration_and_action_lifecycle(
    simulator_factory: SimulatorFactory, openapi: OpenApi
) -> None:
    sim = await simulator_factory(throttle_rps=0)
    base = configs("app-alpha")
    async with connect(sim) as client:
        listed = await client.get(base)
        openapi.validate("list-all-configurations", 200, listed.json())
        assert listed.json() == {"configurations": []}

        created = await client.post(base)
        openapi.validate("create-a-new-configuration", 200, created.json())
        key = created.json()["key"]
        assert re.fullmatch(r"[0-9A-F]{32}", key)

        conflict = await client.post(base)
        assert conflict.status_code == 409
        openapi.validate_component("ApiException", conflict.json())
        assert service_exception(conflict)["messageId"] == "CONFLICT"

        single = await client.get(f"{base}/{key}")
        openapi.validate("get-a-single-configuration", 200, single.json())
        assert single.json() == {"key": key}
        assert (await client.get(base)).json() == {"configurations": [{"key": key}]}

        actions = await client.get(f"{base}/{key}/actions")
        openapi.validate("list-all-actions", 200, actions.json())
        assert actions.json() == {"actions": []}

        pull = await client.post(
            f"{base}/{key}/actions", json={"type": "PULL", "callbackData": "c"}
        )
        openapi.validate("create-new-action", 200, pull.json())
        forward = {"type": "HTTP_FORWARD", "forwardUrl": "https://example.test/in"}
        fwd = await client.post(f"{base}/{key}/actions", json=forward)
        openapi.validate("create-new-action", 200, fwd.json())
        assert fwd.json()["forwardUrl"] == "https://example.test/in"
        listed_actions = (await client.get(f"{base}/{key}/actions")).json()
        openapi.validate("list-all-actions", 200, listed_actions)
        assert listed_actions["actions"] == [pull.json(), fwd.json()]
        assert pull.json() == {"key": pull.json()["key"], "type": "PULL", "callbackData": "c"}

        deleted = await client.delete(f"{base}/{key}/actions/{pull.json()['key']}")
        assert deleted.status_code == 204
        assert deleted.content == b""
        again = await client.delete(f"{base}/{key}/actions/{pull.json()['key']}")
        assert again.status_code == 404
        openapi.validate("delete-action", 404, again.json())
        assert service_exception(again) == {"messageId": "5", "text": "Action does not exist"}

        gone = await client.delete(f"{base}/{key}")
        assert gone.status_code == 204
        assert gone.content == b""
        missing = await client.get(f"{base}/{key}")
        openapi.validate("get-a-single-configuration", 404, missing.json())
        assert service_exception(missing) == {
            "messageId": "6",
            "text": "Configuration does not exist",
        }
        for operation, method, path in (
            ("list-all-actions", "GET", f"{base}/{key}/actions"),
            ("delete-the-configuration", "DELETE", f"{base}/{key}"),
            ("create-new-action", "POST", f"{base}/{key}/actions"),
        ):
            response = await client.request(method, path, json={"type": "PULL"})
            assert response.status_code == 404
            openapi.validate(operation, 404, response.json())
            assert service_exception(response)["messageId"] == "6"
        # After a delete, a new configuration may be created.
        assert (await client.post(base)).status_code == 200


@pytest.mark.parametrize(
    ("operation", "method", "suffix"),
    [
        ("list-all-configurations", "GET", ""),
        ("create-a-new-configuration", "POST", ""),
        ("get-a-single-configuration", "GET", "/K"),
        ("delete-the-configuration", "DELETE", "/K"),
        ("list-all-actions", "GET", "/K/actions"),
        ("create-new-action", "POST", "/K/actions"),
        ("delete-action", "DELETE", "/K/actions/A"),
    ],
)
async def test_unknown_application_is_404(
    simulator: Simulator, openapi: OpenApi, operation: str, method: str, suffix: str
) -> None:
    async with connect(simulator) as client:
        response = await client.request(method, configs("no-such-app") + suffix)
    assert response.status_code == 404
    openapi.validate(operation, 404, response.json())
    assert service_exception(response) == {"messageId": "1", "text": "Application does not exist"}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        json.dumps({"type": "SMS"}).encode(),
        json.dumps({"type": "HTTP_FORWARD"}).encode(),
        json.dumps({"type": "HTTP_FORWARD", "forwardUrl": "ftp://x"}).encode(),
        json.dumps({"type": "PULL", "forwardUrl": "https://example.test"}).encode(),
        json.dumps({"type": "PULL", "callbackData": 5}).encode(),
    ],
)
async def test_invalid_action_request_is_400(
    simulator: Simulator, openapi: OpenApi, body: bytes
) -> None:
    async with connect(simulator) as client:
        key = (await client.post(configs("app-alpha"))).json()["key"]
        response = await client.post(
            f"{configs('app-alpha')}/{key}/actions",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 400
    openapi.validate("create-new-action", 400, response.json())
    assert service_exception(response) == {"messageId": "8", "text": "Invalid action request"}


async def test_second_pull_action_is_allowed(simulator: Simulator) -> None:
    # Infobip documents no limit; callbackData then comes from the first PULL action.
    async with connect(simulator) as client:
        key = (await client.post(configs("app-alpha"))).json()["key"]
        url = f"{configs('app-alpha')}/{key}/actions"
        first = await client.post(url, json={"type": "PULL", "callbackData": "first"})
        second = await client.post(url, json={"type": "PULL", "callbackData": "second"})
        assert first.status_code == second.status_code == 200
        assert first.json()["key"] != second.json()["key"]
        assert len((await client.get(url)).json()["actions"]) == 2
        simulator.inject("app-alpha", 1)
        body = (await client.get(PULL)).json()
    assert body["results"][0]["callbackData"] == "first"


async def test_unknown_path_and_method(simulator: Simulator) -> None:
    async with connect(simulator) as client:
        assert (await client.get("/push/9/nothing")).status_code == 404
        wrong = await client.delete(PULL)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET"


# --- auth ---------------------------------------------------------------------------------


async def bearer_token(
    client: httpx.AsyncClient, secret: str = "sim-client-secret"
) -> httpx.Response:
    return await client.post(
        "/auth/1/oauth2/token",
        data={
            "client_id": "sim-client",
            "client_secret": secret,
            "grant_type": "client_credentials",
        },
    )


@pytest.mark.parametrize(
    "authorization",
    [
        "App sim-api-key",
        "app sim-api-key",
        "Basic " + base64.b64encode(b"sim-user:sim-password").decode(),
        "IBSSO sim-ibsso-token",
    ],
)
async def test_auth_schemes_accepted(
    configured_simulator: Simulator, openapi: OpenApi, authorization: str
) -> None:
    async with connect(configured_simulator, {"Authorization": authorization}) as client:
        response = await client.get(PULL)
    assert response.status_code == 200
    openapi.validate("receive-push-messages", 200, response.json())


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "App wrong-key",
        "App",
        "Basic " + base64.b64encode(b"sim-user:wrong").decode(),
        "Basic !!!notbase64",
        "IBSSO wrong",
        "Bearer never-issued",
        "Token sim-api-key",
    ],
)
async def test_auth_rejected(
    configured_simulator: Simulator, openapi: OpenApi, authorization: str | None
) -> None:
    configured_simulator.inject("app-alpha", 2)
    headers = {} if authorization is None else {"Authorization": authorization}
    async with connect(configured_simulator, headers) as client:
        response = await client.get(PULL)
        config_list = await client.get(configs("app-alpha"))
    assert response.status_code == 401
    openapi.validate("receive-push-messages", 401, response.json())
    assert service_exception(response) == {
        "messageId": "UNAUTHORIZED",
        "text": "Invalid login details",
    }
    assert config_list.status_code == 401
    assert configured_simulator.inbox_depth == 2


async def test_forbidden_key_is_403(configured_simulator: Simulator, openapi: OpenApi) -> None:
    configured_simulator.inject("app-alpha", 2)
    async with connect(configured_simulator, {"Authorization": "App sim-forbidden-key"}) as client:
        response = await client.get(PULL)
    assert response.status_code == 403
    openapi.validate("receive-push-messages", 403, response.json())
    assert service_exception(response)["messageId"] == "FORBIDDEN"
    assert configured_simulator.inbox_depth == 2


async def test_oauth_token_flow_expiry_and_revocation(simulator_factory: SimulatorFactory) -> None:
    sim = await simulator_factory(auto_configure=True, token_ttl=0.5)
    async with connect(sim, headers={}) as client:
        issued = await bearer_token(client)
        assert issued.status_code == 200
        token = issued.json()
        assert token["token_type"] == "Bearer"
        assert isinstance(token["expires_in"], int)
        assert token["expires_in"] <= 0.5
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        assert (await client.get(PULL, headers=bearer)).status_code == 200
        await asyncio.sleep(0.6)
        assert (await client.get(PULL, headers=bearer)).status_code == 401

        fresh = {"Authorization": f"Bearer {(await bearer_token(client)).json()['access_token']}"}
        assert (await client.get(PULL, headers=fresh)).status_code == 200
        revoked = await client.post("/_sim/tokens/revoke")
        assert revoked.json() == {"revoked": 1}
        assert (await client.get(PULL, headers=fresh)).status_code == 401
    assert sim.state()["tokensIssued"] == 2


async def test_oauth_token_errors(simulator: Simulator) -> None:
    async with connect(simulator, headers={}) as client:
        wrong_secret = await bearer_token(client, secret="nope")
        wrong_grant = await client.post(
            "/auth/1/oauth2/token",
            data={"client_id": "sim-client", "client_secret": "sim-client-secret"},
        )
        basic = base64.b64encode(b"sim-client:sim-client-secret").decode()
        via_basic = await client.post(
            "/auth/1/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
        )
    assert wrong_secret.status_code == 401
    assert wrong_secret.json() == {"error": "invalid_client"}
    assert wrong_grant.status_code == 400
    assert wrong_grant.json() == {"error": "unsupported_grant_type"}
    assert via_basic.status_code == 200


# --- throttle -----------------------------------------------------------------------------


async def test_throttle_answers_429_past_ten_requests_a_second(
    configured_simulator: Simulator, openapi: OpenApi
) -> None:
    sim = configured_simulator
    sim.inject("app-alpha", 5)
    async with connect(sim) as client:
        started = time.monotonic()
        responses = await asyncio.gather(
            *(client.get(PULL, params={"limit": 1}) for _ in range(15))
        )
        refill = (time.monotonic() - started) * 10  # tokens that came back during the burst
        statuses = [r.status_code for r in responses]
        assert 10 <= statuses.count(200) <= 10 + refill + 1
        throttled = [r for r in responses if r.status_code == 429]
        for response in throttled:
            openapi.validate("receive-push-messages", 429, response.json())
            assert service_exception(response)["messageId"] == "TOO_MANY_REQUESTS"
            assert "retry-after" not in response.headers
        assert sim.state()["throttled"] == len(throttled)
        # A throttled pull takes nothing; the refilled bucket lets requests through again.
        await asyncio.sleep(0.5)
        assert (await client.get(PULL)).status_code == 200
    assert sim.ledger.handed_out == 5


async def test_throttle_can_be_disabled(simulator_factory: SimulatorFactory) -> None:
    sim = await simulator_factory(auto_configure=True, throttle_rps=0)
    async with connect(sim) as client:
        responses = await asyncio.gather(*(client.get(PULL) for _ in range(40)))
    assert {r.status_code for r in responses} == {200}


# --- pull delay and bulk backlogs ---------------------------------------------------------


async def test_pull_delay_takes_the_messages_then_answers_late(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(auto_configure=True, throttle_rps=0, pull_delay=0.4)
    ids = sim.inject("app-alpha", 3)
    async with connect(sim) as client:
        started = time.monotonic()
        pull = asyncio.create_task(client.get(PULL))
        await asyncio.sleep(0.2)
        # Taken when the request arrived, still on its way back.
        assert not pull.done()
        assert sim.inbox_depth == 0
        assert sim.ledger.handed_out == 3
        body = (await pull).json()
        assert time.monotonic() - started >= 0.4
        # Only the pull endpoint is slowed, not the others, nor the control endpoints.
        started = time.monotonic()
        assert (await client.get(configs("app-alpha"))).status_code == 200
        assert (await client.get("/_sim/state")).json()["pullDelay"] == 0.4
        assert time.monotonic() - started < 0.3
    assert [m["messageId"] for m in body["results"]] == ids


async def test_concurrent_pulls_overlap_their_delays(simulator_factory: SimulatorFactory) -> None:
    sim = await simulator_factory(auto_configure=True, throttle_rps=0, pull_delay=0.5)
    ids = sim.inject("app-alpha", 20)
    async with connect(sim) as client:
        started = time.monotonic()
        first, second = await asyncio.gather(
            client.get(PULL, params={"limit": 10}), client.get(PULL, params={"limit": 10})
        )
        elapsed = time.monotonic() - started
    # Each connection is served by its own task: two pulls take one delay, not two.
    assert 0.5 <= elapsed < 0.9
    got = [m["messageId"] for r in (first, second) for m in r.json()["results"]]
    assert sorted(got) == sorted(ids)


async def test_pull_delay_applies_to_refused_pulls_and_can_change(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(auto_configure=True, throttle_rps=1, pull_delay=0.3)
    async with connect(sim) as client:
        assert (await client.get(PULL)).status_code == 200
        started = time.monotonic()
        assert (await client.get(PULL)).status_code == 429  # a round trip all the same
        assert time.monotonic() - started >= 0.3
        control = await client.post("/_sim/pull-delay", json={"delay": 0})
        assert control.json() == {"delay": 0.0}
        for bad in (-1, "1", True, None):
            assert (await client.post("/_sim/pull-delay", json={"delay": bad})).status_code == 400
        await asyncio.sleep(1.0)
        started = time.monotonic()
        assert (await client.get(PULL)).status_code == 200
        assert time.monotonic() - started < 0.3
    with pytest.raises(ValueError, match="negative"):
        Simulator(pull_delay=-0.1)
    with pytest.raises(ValueError, match="negative"):
        sim.set_pull_delay(-1)


async def test_bulk_backlog_serves_documented_messages(
    configured_simulator: Simulator, openapi: OpenApi
) -> None:
    sim = configured_simulator
    assert sim.inject_bulk("app-alpha", 2500) == 2500
    plain = sim.inject("app-beta", 2)
    async with connect(sim) as client:
        bodies = [(await client.get(PULL, params={"limit": 1000})).json() for _ in range(4)]
    assert [(b["messageCount"], b["pendingMessageCount"]) for b in bodies] == [
        (1000, 1502),
        (1000, 502),
        (502, 0),
        (0, 0),
    ]
    messages = [m for body in bodies for m in body["results"]]
    for body in bodies:
        openapi.validate("receive-push-messages", 200, body)
    assert len({m["messageId"] for m in messages}) == 2502
    assert [m["messageId"] for m in messages[-2:]] == plain  # dicts and bytes in one answer
    for message in messages[:2500]:
        assert message["applicationCode"] == "app-alpha"
        assert all(isinstance(message[field], str) and message[field] for field in REQUIRED)
        assert RECEIVED_AT.fullmatch(message["receivedAt"])
        uuid.UUID(message["messageId"])
    assert len({m["text"] for m in messages}) > 5  # several shapes, not one
    await settled(sim)
    assert sim.ledger.delivered_ids() == {m["messageId"] for m in messages}
    state = sim.state()
    assert state["injected"] == 2502
    assert state["pullResponses"] == 3
    assert state["firstPullAt"] <= state["lastPullAt"] <= time.time()


async def test_backlog_control_endpoint(simulator: Simulator) -> None:
    sim = simulator
    sim.account.configure_pull("app-alpha", callback_data="cb")
    async with connect(sim, headers={}) as client:
        made = await client.post("/_sim/backlog", json={"applicationCode": "app-alpha", "count": 7})
        assert made.json() == {"injected": 7, "inboxDepth": 7, "forwardDepth": 0}
        unrouted = await client.post(
            "/_sim/backlog", json={"applicationCode": "app-beta", "count": 5}
        )
        assert unrouted.json() == {"injected": 0, "inboxDepth": 7, "forwardDepth": 0}
        missing = await client.post("/_sim/backlog", json={"applicationCode": "nope", "count": 1})
        assert missing.status_code == 404
        for bad in ({"count": 1}, {"applicationCode": "app-alpha", "count": -1}):
            assert (await client.post("/_sim/backlog", json=bad)).status_code == 400
        body = (await client.get(PULL, headers=AUTH)).json()
    assert [m["callbackData"] for m in body["results"]] == ["cb"] * 7
    assert sim.state()["notRouted"] == 5


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
async def test_a_million_message_backlog_fits(simulator_factory: SimulatorFactory) -> None:
    sim = await simulator_factory(auto_configure=True, throttle_rps=0)
    before = _rss_bytes()
    started = time.monotonic()
    for app in ("app-alpha", "app-beta", "app-gamma"):
        sim.inject_bulk(app, 1_000_000 // 3 + (app == "app-alpha"))
    assert time.monotonic() - started < 30
    assert sim.inbox_depth == 1_000_000
    assert _rss_bytes() - before < 1_200_000_000
    async with connect(sim) as client:
        started = time.monotonic()
        for expected in (999_000, 998_000, 997_000):
            body = (await client.get(PULL, params={"limit": 1000})).json()
            assert body["pendingMessageCount"] == expected
        assert time.monotonic() - started < 2


# --- faults -------------------------------------------------------------------------------


async def test_latency_fault_delays_then_answers(configured_simulator: Simulator) -> None:
    sim = configured_simulator
    ids = sim.inject("app-alpha", 3)
    sim.add_fault("latency", delay=0.3)
    async with connect(sim) as client:
        started = time.monotonic()
        body = (await client.get(PULL)).json()
        assert time.monotonic() - started >= 0.3
        started = time.monotonic()
        await client.get(PULL)
        assert time.monotonic() - started < 0.3  # one-shot
    assert [m["messageId"] for m in body["results"]] == ids


async def test_latency_past_client_timeout_keeps_messages(configured_simulator: Simulator) -> None:
    sim = configured_simulator
    ids = sim.inject("app-alpha", 3)
    sim.add_fault("latency", delay=0.5)
    async with connect(sim, timeout=0.1) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(PULL)
    await asyncio.sleep(0.6)
    # The client was gone when the delay ended, so the read never happened.
    assert sim.inbox_depth == 3
    assert sim.ledger.entries == []
    async with connect(sim) as client:
        body = (await client.get(PULL)).json()
    assert [m["messageId"] for m in body["results"]] == ids


@pytest.mark.parametrize(
    ("kind", "params", "retry_after"),
    [
        ("500", {}, None),
        ("503", {}, None),
        ("503", {"retry_after": 7}, "7"),
        ("429", {}, "1"),
        ("429", {"retry_after": 3}, "3"),
    ],
)
async def test_refusing_faults_leave_the_inbox_alone(
    configured_simulator: Simulator,
    openapi: OpenApi,
    kind: str,
    params: dict[str, Any],
    retry_after: str | None,
) -> None:
    sim = configured_simulator
    ids = sim.inject("app-alpha", 5)
    sim.add_fault(kind, **params)
    async with connect(sim) as client:
        refused = await client.get(PULL)
        assert refused.status_code == int(kind)
        assert refused.headers.get("retry-after") == retry_after
        if kind == "503":  # not documented: Infobip's error shape all the same
            openapi.validate_component("ApiException", refused.json())
        else:
            openapi.validate("receive-push-messages", int(kind), refused.json())
        assert sim.inbox_depth == 5
        assert sim.ledger.handed_out == 0
        body = (await client.get(PULL)).json()
    assert [m["messageId"] for m in body["results"]] == ids


async def test_429_fault_with_http_date(configured_simulator: Simulator) -> None:
    configured_simulator.add_fault("429", retry_after=5, retry_after_date=True)
    async with connect(configured_simulator) as client:
        response = await client.get(PULL)
    assert response.status_code == 429
    when = parsedate_to_datetime(response.headers["retry-after"]).timestamp()
    assert 3 <= when - time.time() <= 6


@pytest.mark.parametrize("kind", ["truncated", "drop"])
async def test_cut_responses_lose_the_taken_messages(
    configured_simulator: Simulator, kind: str
) -> None:
    sim = configured_simulator
    ids = sim.inject("app-alpha", 10)
    sim.add_fault(kind)
    async with connect(sim) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(PULL)
        after = (await client.get(PULL)).json()
    assert after["messageCount"] == 0
    assert sim.inbox_depth == 0
    await settled(sim)
    [entry] = sim.ledger.entries
    assert (entry.fault, entry.written, entry.completed) == (kind, False, False)
    assert entry.message_ids == ids
    assert sim.ledger.undelivered_ids() == set(ids)
    assert sim.ledger.delivered_ids() == set()


async def test_truncated_cuts_mid_body(configured_simulator: Simulator) -> None:
    sim = configured_simulator
    sim.inject("app-alpha", 10)
    sim.add_fault("truncated", at=25)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(sim.base_url.rsplit(":", 1)[1]))
    writer.write(
        f"GET {PULL} HTTP/1.1\r\nHost: x\r\nAuthorization: App sim-api-key\r\n\r\n".encode()
    )
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
    assert len(body) == 25 < length


@pytest.mark.parametrize("kind", ["invalid_json", "wrong_types"])
async def test_corrupt_bodies_are_recorded_as_not_completed(
    configured_simulator: Simulator, openapi: OpenApi, kind: str
) -> None:
    sim = configured_simulator
    ids = sim.inject("app-alpha", 4)
    sim.add_fault(kind)
    async with connect(sim) as client:
        response = await client.get(PULL)
    assert response.status_code == 200
    if kind == "invalid_json":
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
    else:
        body = response.json()
        assert isinstance(body["results"], dict)
        assert isinstance(body["messageCount"], str)
        with pytest.raises(jsonschema.ValidationError):
            openapi.validate("receive-push-messages", 200, body)
    await settled(sim)
    [entry] = sim.ledger.entries
    assert (entry.fault, entry.written, entry.completed) == (kind, True, False)
    assert sim.ledger.undelivered_ids() == set(ids)
    assert sim.inbox_depth == 0


async def test_oversized_body_is_valid_and_huge(
    configured_simulator: Simulator, openapi: OpenApi
) -> None:
    sim = configured_simulator
    ids = sim.inject("app-alpha", 3)
    sim.add_fault("oversized", size=3 << 20)
    async with connect(sim) as client:
        response = await client.get(PULL)
    assert len(response.content) >= 3 << 20
    openapi.validate("receive-push-messages", 200, response.json())
    assert [m["messageId"] for m in response.json()["results"]] == ids
    await settled(sim)
    assert sim.ledger.entries[0].fault == "oversized"
    assert sim.ledger.delivered_ids() == set(ids)


async def test_fault_count_rate_and_path(configured_simulator: Simulator) -> None:
    sim = configured_simulator
    async with connect(sim) as client:
        sim.add_fault("500", count=2)
        assert [(await client.get(PULL)).status_code for _ in range(3)] == [500, 500, 200]
        sim.add_fault("503", path="/push/1/applications")
        assert (await client.get(PULL)).status_code == 200
        assert (await client.get(configs("app-alpha"))).status_code == 503
        sim.add_fault("500", rate=1.0)
        assert [(await client.get(PULL)).status_code for _ in range(3)] == [500] * 3
        assert sim.state()["faultsFired"] == 6
        sim.clear_faults()
        await asyncio.sleep(0.5)  # let the throttle refill
        sim.add_fault("500", rate=0.0)
        assert (await client.get(PULL)).status_code == 200
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.add_fault("explode")
    with pytest.raises(ValueError, match="no parameter"):
        sim.add_fault("latency", delay_s=1)
    with pytest.raises(ValueError, match="not both"):
        sim.add_fault("500", rate=0.5, count=3)


async def test_spoiled_create_still_creates(configured_simulator: Simulator) -> None:
    # The operation ran before its answer was lost: a retry must expect 409.
    sim = configured_simulator
    sim.add_application("app-delta")
    sim.add_fault("drop", path="/push/1/applications/app-delta")
    async with connect(sim) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(configs("app-delta"))
        assert (await client.post(configs("app-delta"))).status_code == 409
        assert len((await client.get(configs("app-delta"))).json()["configurations"]) == 1


# --- control endpoints --------------------------------------------------------------------


async def test_control_endpoints(configured_simulator: Simulator) -> None:
    sim = configured_simulator
    async with connect(sim, headers={}) as client:
        made = await client.post(
            "/_sim/messages", json={"applicationCode": "app-beta", "count": 3, "extra": {"x": 1}}
        )
        assert made.status_code == 200
        ids = made.json()["messageIds"]
        raw = await client.post(
            "/_sim/messages", json={"messages": [{"messageId": "raw-id-1"}, {"text": "no id"}]}
        )
        assert raw.json() == {"messageIds": ["raw-id-1", "raw-5"]}
        missing = await client.post("/_sim/messages", json={"applicationCode": "nope", "count": 1})
        assert missing.status_code == 404
        assert (await client.post("/_sim/messages", content=b"{")).status_code == 400

        fault = await client.post("/_sim/faults", json={"kind": "500", "path": PULL})
        assert fault.json()["faults"][0]["kind"] == "500"
        assert (await client.post("/_sim/faults", json={"kind": "nope"})).status_code == 400
        rated = await client.post("/_sim/faults", json={"kind": "latency", "rate": 0.0})
        assert rated.json()["faults"][1]["count"] is None
        pulled = await client.get(PULL, headers=AUTH)
        assert pulled.status_code == 500
        assert (await client.delete("/_sim/faults")).status_code == 204
        body = (await client.get(PULL, headers=AUTH)).json()
        assert [m.get("messageId") for m in body["results"]] == [*ids, "raw-id-1", None]
        assert body["results"][0]["x"] == 1
        assert body["results"][4] == {"text": "no id"}

        ledger = (await client.get("/_sim/ledger")).json()
        assert ledger["handedOut"] == 5
        assert ledger["responses"][0]["messageIds"] == [*ids, "raw-id-1", "raw-5"]
        assert ledger["responses"][0]["n"] == 1
        assert set(ledger["responses"][0]) == {
            "n",
            "messageIds",
            "completed",
            "written",
            "fault",
            "at",
        }

        added = await client.post("/_sim/applications", json={"applicationCode": "app-new"})
        assert added.json() == {"applicationCode": "app-new"}
        dup = await client.post("/_sim/applications", json={"applicationCode": "app-new"})
        assert dup.status_code == 409
        assert (await client.get(configs("app-new"), headers=AUTH)).json() == {"configurations": []}

        state = (await client.get("/_sim/state")).json()
        assert state["applications"]["app-new"] == {
            "routed": False,
            "route": None,
            "configurations": [],
        }
        assert state["inboxDepth"] == 0
        assert state["handedOut"] == 5
        assert state["requests"] == 3
        assert (await client.get("/_sim/nothing")).status_code == 404


async def test_generator_spreads_over_routed_applications(
    simulator_factory: SimulatorFactory, openapi: OpenApi
) -> None:
    sim = await simulator_factory(applications=("a1", "a2", "a3"))
    sim.account.configure_pull("a1")
    sim.account.configure_pull("a2")
    async with connect(sim, headers={}) as client:
        started = time.monotonic()
        assert (await client.post("/_sim/generator", json={"rate": 400})).json() == {"rate": 400.0}
        await asyncio.sleep(0.5)
        assert (await client.post("/_sim/generator", json={"rate": 0})).status_code == 200
        elapsed = time.monotonic() - started
        assert (await client.post("/_sim/generator", json={"rate": -1})).status_code == 400
        body = (await client.get(PULL, params={"limit": 1000}, headers=AUTH)).json()
    openapi.validate("receive-push-messages", 200, body)
    generated = sim.state()["generated"]
    assert 400 * 0.4 <= generated <= 400 * elapsed + 1
    assert body["messageCount"] == generated
    assert {m["applicationCode"] for m in body["results"]} == {"a1", "a2"}
    assert all(RECEIVED_AT.fullmatch(m["receivedAt"]) for m in body["results"])
    assert len({m["messageId"] for m in body["results"]}) == generated


async def test_generator_starts_from_the_constructor(simulator_factory: SimulatorFactory) -> None:
    sim = await simulator_factory(auto_configure=True, rate=100)
    await asyncio.sleep(0.3)
    assert sim.inbox_depth > 0


async def test_seed_makes_messages_repeatable(simulator_factory: SimulatorFactory) -> None:
    first = await simulator_factory(seed=7, auto_configure=True)
    second = await simulator_factory(seed=7, auto_configure=True)
    assert first.inject("app-alpha", 5) == second.inject("app-alpha", 5)


async def test_inject_unknown_application(simulator: Simulator) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        simulator.inject("nope", 1)


async def test_simulate_command_serves_until_sigterm(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    args = parser.parse_args(["--port", "0", "--applications", "x, y", "--auto-configure"])
    assert (args.host, args.applications, args.rate, args.throttle_rps) == (
        "127.0.0.1",
        ["x", "y"],
        0.0,
        10.0,
    )
    task = asyncio.create_task(simulate_cli.run(args))
    async with asyncio.timeout(5):
        while "export" not in (out := capsys.readouterr().out):
            await asyncio.sleep(0.02)
    base_url = re.search(r"POLLER_INFOBIP__BASE_URL=(\S+)", out)[1]  # type: ignore[index]
    assert "POLLER_INFOBIP__API_KEY=sim-api-key" in out
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
        assert (await client.get(PULL)).status_code == 200
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0


# --- the HTTP server itself ---------------------------------------------------------------


async def _echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    payload = {"method": request.method, "path": request.path, "query": request.query}
    payload["body"] = request.body.decode()
    return Response(200, json.dumps(payload).encode())


async def test_httpserver_basics() -> None:
    server = HttpServer(_echo)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            first = await client.post("/a%20b", params={"q": "ä &x", "e": ""}, content=b"hi")
            assert first.json() == {
                "method": "POST",
                "path": "/a b",
                "query": {"q": "ä &x", "e": ""},
                "body": "hi",
            }
            second = await client.get("/again")
            assert second.status_code == 200
            assert (await client.get("/boom")).status_code == 500
            assert (await client.post("/big", content=b"x" * ((1 << 20) + 1))).status_code == 413
            assert (await client.get("/", headers={"X-Big": "y" * (70 << 10)})).status_code == 431
        for raw, status in (
            (b"GARBAGE\r\n\r\n", b"400"),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"400"),
            (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"400"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            assert answer.split(b" ")[1] == status, raw
    finally:
        await server.stop()


async def test_httpserver_keeps_connections_alive_and_reports_sends() -> None:
    sent: list[bool] = []

    async def handler(request: Request) -> Response:
        return Response(200, b"ok", on_sent=sent.append)

    server = HttpServer(handler)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(3):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert await reader.readexactly(2) == b"ok"
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = await reader.read()
        assert b"Connection: close" in rest
        writer.close()
        await writer.wait_closed()
        assert sent == [True] * 4
        # stop() closes connections that are still open.
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    finally:
        await server.stop()
    assert await idle_reader.read() == b""
    idle_writer.close()
