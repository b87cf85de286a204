"""The Infobip client against the simulator over loopback HTTP: operations, errors, retries,
rate limit, safe creates and malformed pull bodies."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from poller import __version__
from poller.devtools.simulator import Simulator
from poller.devtools.simulator.httpserver import HttpServer, Request, Response
from poller.infobip import (
    ActionRequest,
    AuthError,
    BadRequestError,
    ConflictError,
    InfobipClient,
    MalformedResponseError,
    MoReport,
    NotFoundError,
    ResponseTooLargeError,
    ServerError,
    ThrottledError,
    TransportError,
    TruncatedResponseError,
)
from poller.infobip.client import PULL_PATH
from poller.infobip.errors import api_error
from poller.settings import InfobipSettings
from tests.fixtures_sim import SimulatorFactory

pytestmark = pytest.mark.timeout(30)

API_KEY = "sim-api-key"
POLLER = str(Path(sys.executable).with_name("poller"))
APP = "app-alpha"


def settings_for(base_url: str, **overrides: Any) -> InfobipSettings:
    """Client settings for a loopback peer: quick backoff, short timeouts."""
    values: dict[str, Any] = {
        "base_url": base_url,
        "api_key": API_KEY,
        "backoff_base": 0.02,
        "backoff_max": 0.1,
        "read_timeout": 5.0,
        "connect_timeout": 2.0,
        "max_retries": 3,
    }
    values.update(overrides)
    return InfobipSettings(**values)


def client_for(sim: Simulator, reasons: list[str] | None = None, **overrides: Any) -> InfobipClient:
    """A client of the simulator; retry reasons are appended to `reasons`."""
    hook = reasons.append if reasons is not None else None
    return InfobipClient(settings_for(sim.base_url, **overrides), on_retry=hook)


def configs_path(app: str) -> str:
    return f"/push/1/applications/{app}/configurations"


def actions_path(app: str, key: str) -> str:
    return f"{configs_path(app)}/{key}/actions"


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = f"{exc} {exc!r} {getattr(exc, 'text', '')}"
    for secret in (API_KEY, "sim-password", "sim-client-secret", *secrets):
        assert secret not in text


# --- every operation ----------------------------------------------------------------------


async def test_configuration_lifecycle(simulator: Simulator) -> None:
    async with client_for(simulator) as client:
        assert await client.list_configurations(APP) == []
        created = await client.create_configuration(APP)
        assert re.fullmatch(r"[0-9A-F]{32}", created.key)
        assert [c.key for c in await client.list_configurations(APP)] == [created.key]
        assert (await client.get_configuration(APP, created.key)).key == created.key
        await client.delete_configuration(APP, created.key)
        assert await client.list_configurations(APP) == []
        with pytest.raises(NotFoundError) as caught:
            await client.get_configuration(APP, created.key)
    assert caught.value.message_id == "6"


async def test_actions_round_trip_pull_and_http_forward(simulator: Simulator) -> None:
    async with client_for(simulator) as client:
        key = (await client.create_configuration(APP)).key
        pull = await client.create_action(
            APP, key, ActionRequest(type="PULL", callbackData="tenant=7;büro")
        )
        forward = await client.create_action(
            APP,
            key,
            ActionRequest(
                type="HTTP_FORWARD", forwardUrl="https://hooks.example.com/mo", callbackData="f"
            ),
        )
        assert (pull.type, pull.callback_data, pull.forward_url) == ("PULL", "tenant=7;büro", None)
        assert (forward.type, forward.forward_url) == (
            "HTTP_FORWARD",
            "https://hooks.example.com/mo",
        )
        listed = {a.key: a for a in await client.list_actions(APP, key)}
        assert listed == {pull.key: pull, forward.key: forward}
        assert listed[forward.key].callback_data == "f"
        # What Infobip would be sent back if the action were re-created from the listing.
        assert listed[pull.key].model_dump(by_alias=True, exclude_none=True) == {
            "key": pull.key,
            "type": "PULL",
            "callbackData": "tenant=7;büro",
        }
        await client.delete_action(APP, key, forward.key)
        assert [a.key for a in await client.list_actions(APP, key)] == [pull.key]
        with pytest.raises(NotFoundError) as caught:
            await client.delete_action(APP, key, forward.key)
    assert caught.value.message_id == "5"


async def test_pull_with_limit_keeps_every_field(configured_simulator: Simulator) -> None:
    sim = configured_simulator
    extra = {"futureField": {"nested": [1, "two", None]}, "isSilent": True, "score": 0.5}
    ids = sim.inject(APP, 25, extra=extra)
    async with client_for(sim) as client:
        first = await client.pull(10)
        rest = await client.pull()  # settings.pull_limit (1000)
    assert [m["messageId"] for m in first.results] == ids[:10]
    assert (first.message_count, first.pending_message_count) == (10, 15)
    assert [m["messageId"] for m in rest.results] == ids[10:]
    assert rest.pending_message_count == 0
    for item in first.results + rest.results:
        assert {k: item[k] for k in extra} == extra
        report = MoReport.model_validate(item)
        assert report.application_code == APP
        assert report.model_extra is not None
        assert report.model_extra["futureField"] == extra["futureField"]
    # The raw bytes are what the spool keeps: the same items, byte for byte decodable.
    assert json.loads(first.body)["results"] == first.results


async def test_pull_limit_out_of_range_is_refused_before_sending(
    configured_simulator: Simulator,
) -> None:
    before = configured_simulator.account.counters.requests
    async with client_for(configured_simulator) as client:
        for limit in (0, 1001):
            with pytest.raises(ValueError, match="between 1 and 1000"):
                await client.pull(limit)
    assert configured_simulator.account.counters.requests == before


class Peer:
    """A tiny real HTTP peer that records requests and answers from a table."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.requests: list[Request] = []
        self.server = HttpServer(self.handle)

    async def handle(self, request: Request) -> Response:
        self.requests.append(request)
        payload = self.answers.get(request.path)
        if payload is None:
            return Response(404, b"{}")
        return Response(200, json.dumps(payload).encode())


async def test_unknown_fields_of_configurations_and_actions_are_kept() -> None:
    key = "0123456789ABCDEF0123456789ABCDEF"
    peer = Peer(
        {
            configs_path(APP): {
                "configurations": [{"key": key, "createdAt": "2026-01-01", "labels": ["x"]}],
                "page": {"size": 1},
            },
            actions_path(APP, key): {
                "actions": [
                    {"key": "a1", "type": "PULL", "priority": 3},
                    {"key": "a2", "type": "MOBILE_INBOX", "target": {"id": 9}},
                ]
            },
        }
    )
    await peer.server.start()
    try:
        async with InfobipClient(settings_for(peer.server.url)) as client:
            (config,) = await client.list_configurations(APP)
            actions = await client.list_actions(APP, key)
    finally:
        await peer.server.stop()
    assert config.model_dump(by_alias=True) == {
        "key": key,
        "createdAt": "2026-01-01",
        "labels": ["x"],
    }
    assert actions[0].model_dump(by_alias=True, exclude_none=True) == {
        "key": "a1",
        "type": "PULL",
        "priority": 3,
    }
    # A type this client does not know is kept as text, not refused.
    assert actions[1].type == "MOBILE_INBOX"
    assert actions[1].model_extra == {"target": {"id": 9}}


async def test_user_agent_and_headers_sent() -> None:
    peer = Peer({PULL_PATH: {"results": [], "messageCount": 0, "pendingMessageCount": 0}})
    await peer.server.start()
    try:
        async with InfobipClient(settings_for(peer.server.url)) as client:
            await client.pull(7)
    finally:
        await peer.server.stop()
    (request,) = peer.requests
    assert request.headers["user-agent"] == f"infobip-push-poller/{__version__}"
    assert request.headers["authorization"] == f"App {API_KEY}"
    assert request.headers["accept"] == "application/json"
    assert request.query == {"limit": "7"}


# --- every documented status becomes a typed error ----------------------------------------


async def test_400_bad_limit_and_invalid_action(simulator: Simulator) -> None:
    # The client refuses a bad limit itself; what Infobip would say to it is still typed.
    async with httpx.AsyncClient(
        base_url=simulator.base_url, headers={"Authorization": f"App {API_KEY}"}
    ) as raw:
        answer = await raw.get(PULL_PATH, params={"limit": 5000})
    error = api_error(answer.status_code, answer.content, operation=f"GET {PULL_PATH}")
    assert isinstance(error, BadRequestError)
    assert (error.status, error.message_id) == (400, "BAD_REQUEST")
    assert "limit" in (error.text or "")

    async with client_for(simulator) as client:
        key = (await client.create_configuration(APP)).key
        with pytest.raises(BadRequestError) as caught:
            await client.create_action(
                APP, key, ActionRequest(type="HTTP_FORWARD", forwardUrl="ftp://nowhere")
            )
    assert (caught.value.status, caught.value.message_id) == (400, "8")
    assert caught.value.text == "Invalid action request"
    assert_no_secret(caught.value)


async def test_401_wrong_key(configured_simulator: Simulator) -> None:
    wrong = "wrong-key-d41d8cd98f00"
    async with client_for(configured_simulator, api_key=wrong) as client:
        with pytest.raises(AuthError) as caught:
            await client.pull(10)
    exc = caught.value
    assert (exc.status, exc.message_id, exc.text) == (401, "UNAUTHORIZED", "Invalid login details")
    assert PULL_PATH in str(exc)
    assert_no_secret(exc, wrong)


async def test_403_forbidden_key(configured_simulator: Simulator) -> None:
    async with client_for(configured_simulator, api_key="sim-forbidden-key") as client:
        with pytest.raises(AuthError) as caught:
            await client.list_configurations(APP)
    assert (caught.value.status, caught.value.message_id) == (403, "FORBIDDEN")
    assert_no_secret(caught.value, "sim-forbidden-key")


async def test_404_names_what_is_missing(simulator: Simulator) -> None:
    async with client_for(simulator) as client:
        with pytest.raises(NotFoundError) as app_missing:
            await client.list_configurations("no-such-app")
        key = (await client.create_configuration(APP)).key
        with pytest.raises(NotFoundError) as config_missing:
            await client.list_actions(APP, "F" * 32)
        with pytest.raises(NotFoundError) as action_missing:
            await client.delete_action(APP, key, "no-such-action")
    assert (app_missing.value.message_id, app_missing.value.text) == (
        "1",
        "Application does not exist",
    )
    assert "no-such-app" in str(app_missing.value)
    assert (config_missing.value.message_id, config_missing.value.text) == (
        "6",
        "Configuration does not exist",
    )
    assert action_missing.value.message_id == "5"
    for caught in (app_missing, config_missing, action_missing):
        assert caught.value.status == 404
        assert_no_secret(caught.value)


async def test_409_second_configuration(simulator: Simulator) -> None:
    async with client_for(simulator) as client:
        first = await client.create_configuration(APP)
        with pytest.raises(ConflictError) as caught:
            await client.create_configuration(APP)
        assert [c.key for c in await client.list_configurations(APP)] == [first.key]
    assert (caught.value.status, caught.value.message_id) == (409, "CONFLICT")
    assert caught.value.text == "Configuration already exists"


async def test_429_throttle_is_typed(simulator_factory: SimulatorFactory) -> None:
    sim = await simulator_factory(throttle_rps=1.0, auto_configure=True)
    async with client_for(sim, max_retries=0, rate_limit=1000) as client:
        await client.pull(1)
        with pytest.raises(ThrottledError) as caught:
            await client.pull(1)
    assert (caught.value.status, caught.value.message_id) == (429, "TOO_MANY_REQUESTS")
    assert sim.state()["throttled"] == 1


async def test_500_without_retries(configured_simulator: Simulator) -> None:
    configured_simulator.add_fault("500", path=PULL_PATH)
    async with client_for(configured_simulator, max_retries=0) as client:
        with pytest.raises(ServerError) as caught:
            await client.pull(10)
    assert (caught.value.status, caught.value.message_id) == (500, "GENERAL_ERROR")
    assert caught.value.text == "Something went wrong. Please contact support."
    assert_no_secret(caught.value)


# --- retries ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503"])
async def test_5xx_then_success(kind: str, configured_simulator: Simulator) -> None:
    sim = configured_simulator
    ids = sim.inject(APP, 5)
    sim.add_fault(kind, count=2, path=PULL_PATH)
    reasons: list[str] = []
    async with client_for(sim, reasons) as client:
        response = await client.pull(10)
    assert [m["messageId"] for m in response.results] == ids
    assert reasons == ["5xx", "5xx"]


async def timed_pull(client: InfobipClient) -> float:
    started = time.monotonic()
    await client.pull(10)
    return time.monotonic() - started


async def test_429_retry_after_seconds_is_honoured(configured_simulator: Simulator) -> None:
    configured_simulator.add_fault("429", path=PULL_PATH, retry_after=1)
    reasons: list[str] = []
    async with client_for(configured_simulator, reasons) as client:
        waited = await timed_pull(client)
    assert reasons == ["429"]
    assert 0.95 <= waited < 1.6


async def test_429_retry_after_http_date_is_honoured(configured_simulator: Simulator) -> None:
    # The date has whole-second precision: "now + 2 s" is between 1 and 2 s away.
    configured_simulator.add_fault("429", path=PULL_PATH, retry_after=2, retry_after_date=True)
    async with client_for(configured_simulator) as client:
        waited = await timed_pull(client)
    assert 0.95 <= waited < 2.6


async def test_429_retry_after_is_capped(configured_simulator: Simulator) -> None:
    configured_simulator.add_fault("429", path=PULL_PATH, retry_after=3600)
    async with client_for(configured_simulator, retry_after_max=0.4) as client:
        waited = await timed_pull(client)
    assert 0.35 <= waited < 1.2


async def test_retries_exhausted_raise_the_typed_error(configured_simulator: Simulator) -> None:
    configured_simulator.add_fault("503", count=10, path=PULL_PATH)
    reasons: list[str] = []
    async with client_for(configured_simulator, reasons, max_retries=2) as client:
        with pytest.raises(ServerError) as caught:
            await client.pull(10)
    assert caught.value.status == 503
    assert reasons == ["5xx", "5xx"]
    assert configured_simulator.state()["faultsFired"] == 3


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused_fails_fast_and_counts_retries() -> None:
    reasons: list[str] = []
    settings = settings_for(f"http://127.0.0.1:{closed_port()}", max_retries=3)
    started = time.monotonic()
    async with InfobipClient(settings, on_retry=reasons.append) as client:
        with pytest.raises(TransportError) as caught:
            await client.list_configurations(APP)
    assert time.monotonic() - started < 2.0
    assert reasons == ["connect"] * 3
    assert "/configurations" in str(caught.value)
    assert_no_secret(caught.value)


async def test_read_timeout_is_retried(configured_simulator: Simulator) -> None:
    sim = configured_simulator
    sim.add_fault("latency", path=configs_path(APP), delay=1.0)
    reasons: list[str] = []
    async with client_for(sim, reasons, read_timeout=0.3) as client:
        configs = await client.list_configurations(APP)
    assert len(configs) == 1
    assert reasons == ["timeout"]


async def test_read_timeout_exhausted_is_a_transport_error(configured_simulator: Simulator) -> None:
    configured_simulator.add_fault("latency", count=3, path=configs_path(APP), delay=1.0)
    async with client_for(configured_simulator, read_timeout=0.2, max_retries=1) as client:
        with pytest.raises(TransportError, match="timeout"):
            await client.list_configurations(APP)


async def test_delete_whose_answer_was_lost_is_not_an_error(simulator: Simulator) -> None:
    async with client_for(simulator, read_timeout=0.3) as client:
        key = (await client.create_configuration(APP)).key
        action = await client.create_action(APP, key, ActionRequest(type="PULL"))
        simulator.add_fault("latency", path=f"{actions_path(APP, key)}/{action.key}", delay=0.5)
        await client.delete_action(APP, key, action.key)
        await asyncio.sleep(0.4)  # let the delayed first DELETE land
        assert await client.list_actions(APP, key) == []


async def test_delete_of_a_missing_action_after_a_refused_connection_is_404() -> None:
    # A DELETE that never reached the server cannot be what removed the action.
    port = closed_port()
    answered = 0

    async def handle(request: Request) -> Response:
        nonlocal answered
        answered += 1
        body = b'{"requestError":{"serviceException":{"messageId":"5","text":"gone"}}}'
        return Response(404, body)

    settings = settings_for(f"http://127.0.0.1:{port}", connect_timeout=0.5, backoff_base=0.3)
    async with InfobipClient(settings) as client:
        server = HttpServer(handle, port=port)
        task = asyncio.create_task(client.delete_action(APP, "K", "A"))
        await asyncio.sleep(0.05)  # the first attempt is refused
        await server.start()
        try:
            with pytest.raises(NotFoundError):
                await task
        finally:
            await server.stop()
    assert answered == 1


# --- rate limit ---------------------------------------------------------------------------


async def test_rate_limit_keeps_under_the_documented_throttle(
    configured_simulator: Simulator,
) -> None:
    async with client_for(configured_simulator, rate_limit=10) as client:
        started = time.monotonic()
        await asyncio.gather(*(client.pull(1) for _ in range(25)))
        elapsed = time.monotonic() - started
    assert elapsed >= 2.3
    assert configured_simulator.state()["throttled"] == 0


async def test_a_429_pauses_other_calls_too(configured_simulator: Simulator) -> None:
    configured_simulator.add_fault("429", path=PULL_PATH, retry_after=1)
    async with client_for(configured_simulator, rate_limit=1000) as client:
        started = time.monotonic()
        throttled = asyncio.create_task(client.pull(1))
        await asyncio.sleep(0.1)
        await client.list_configurations(APP)
        other = time.monotonic() - started
        await throttled
    assert other >= 0.9


# --- creates whose answer was lost -------------------------------------------------------


async def test_timed_out_create_action_leaves_exactly_one(simulator: Simulator) -> None:
    async with client_for(simulator, read_timeout=0.3) as client:
        key = (await client.create_configuration(APP)).key
        # The simulator sleeps, then applies the create although the client has gone.
        simulator.add_fault("latency", path=actions_path(APP, key), delay=0.45)
        action = await client.create_action(APP, key, ActionRequest(type="PULL", callbackData="c"))
        await asyncio.sleep(0.5)
        actions = await client.list_actions(APP, key)
    assert [(a.key, a.type, a.callback_data) for a in actions] == [(action.key, "PULL", "c")]


@pytest.mark.parametrize("delay", [0.45, 0.9])
async def test_timed_out_create_configuration_leaves_exactly_one(
    delay: float, simulator: Simulator
) -> None:
    # 0.45 s: the late create lands while the client watches; 0.9 s: the retry creates it and
    # the late one gets a 409, or the late one wins and the retry's 409 finds it.
    simulator.add_fault("latency", path=configs_path(APP), delay=delay)
    async with client_for(simulator, read_timeout=0.3) as client:
        config = await client.create_configuration(APP)
        await asyncio.sleep(delay)
        configs = await client.list_configurations(APP)
    assert [c.key for c in configs] == [config.key]


async def test_create_refused_with_5xx_is_retried_once_listed(simulator: Simulator) -> None:
    reasons: list[str] = []
    async with client_for(simulator, reasons) as client:
        key = (await client.create_configuration(APP)).key
        simulator.add_fault("503", path=actions_path(APP, key))
        action = await client.create_action(APP, key, ActionRequest(type="PULL"))
        assert [a.key for a in await client.list_actions(APP, key)] == [action.key]
    assert reasons == ["ambiguous-create"]


# --- malformed pull bodies ----------------------------------------------------------------


async def pull_error(sim: Simulator, **overrides: Any) -> MalformedResponseError:
    async with client_for(sim, max_retries=0, **overrides) as client:
        with pytest.raises(MalformedResponseError) as caught:
            await client.pull(10)
    return caught.value


async def test_pull_not_json(configured_simulator: Simulator) -> None:
    configured_simulator.inject(APP, 3)
    configured_simulator.add_fault("invalid_json", path=PULL_PATH)
    error = await pull_error(configured_simulator)
    assert type(error) is MalformedResponseError
    assert error.reason.startswith("not JSON")
    assert error.body.startswith(b'{"results":[')
    assert b"502 Bad Gateway" in error.body


async def test_pull_truncated_keeps_the_partial_bytes(configured_simulator: Simulator) -> None:
    ids = configured_simulator.inject(APP, 3)
    configured_simulator.add_fault("truncated", path=PULL_PATH, at=120)
    error = await pull_error(configured_simulator)
    assert isinstance(error, TruncatedResponseError)
    assert len(error.body) == 120
    assert error.body.startswith(b'{"results":[{"messageId":"' + ids[0].encode())
    assert "120 bytes" in str(error)


async def test_pull_dropped_after_headers_is_reported_not_retried(
    configured_simulator: Simulator,
) -> None:
    configured_simulator.inject(APP, 3)
    configured_simulator.add_fault("drop", path=PULL_PATH)
    reasons: list[str] = []
    async with client_for(configured_simulator, reasons) as client:
        with pytest.raises(TruncatedResponseError) as caught:
            await client.pull(10)
    assert caught.value.body == b""
    # Its messages left the inbox: a silent retry would hide that they are gone.
    assert reasons == []
    assert configured_simulator.inbox_depth == 0


async def test_pull_wrong_types(configured_simulator: Simulator) -> None:
    configured_simulator.inject(APP, 2)
    configured_simulator.add_fault("wrong_types", path=PULL_PATH)
    error = await pull_error(configured_simulator)
    assert "results" in error.reason
    assert isinstance(json.loads(error.body)["results"], dict)


@pytest.fixture(scope="module")
def simulator_process() -> Iterator[str]:
    """A `poller simulate` in its own process, so that its memory is not counted here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    proc = subprocess.Popen(
        [POLLER, "simulate", "--port", "0", "--auto-configure"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://\S+", line)
        assert match, line
        yield match.group(0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_pull_oversized_body_is_refused_with_bounded_memory(simulator_process: str) -> None:
    size = 32 << 20
    async with httpx.AsyncClient(base_url=simulator_process) as control:
        await control.post("/_sim/messages", json={"applicationCode": APP, "count": 3})
        answer = await control.post(
            "/_sim/faults", json={"kind": "oversized", "path": PULL_PATH, "size": size}
        )
        assert answer.status_code == 200
    limit = 64 << 10
    async with InfobipClient(settings_for(simulator_process, max_body_bytes=limit)) as client:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLargeError) as caught:
                await client.pull(10)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(caught.value.body) == limit
    assert caught.value.body.startswith(b"{ ")
    assert peak < 4 << 20, f"peak {peak} bytes for a {size}-byte body"


async def test_a_pull_body_that_does_not_decode_is_kept_for_quarantine() -> None:
    # Tried: a 200 answer to a pull announcing gzip, whose bytes are not gzip: the messages in
    # it were handed out, so the error must carry what arrived instead of escaping as a crash.
    garbage = b"\x1f\x8b not really gzip \x00\x01\x02"

    async def handle(request: Request) -> Response:
        return Response(200, garbage, headers={"Content-Encoding": "gzip"})

    server = HttpServer(handle)
    await server.start()
    try:
        async with InfobipClient(settings_for(server.url, max_retries=0)) as client:
            with pytest.raises(MalformedResponseError) as info:
                await client.pull(10)
    finally:
        await server.stop()
    assert "could not be read" in info.value.reason
