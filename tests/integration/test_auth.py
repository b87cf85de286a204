"""Every Infobip auth scheme against the simulator, and the OAuth2 token's life cycle."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from poller.devtools.simulator import Simulator
from poller.infobip import AuthError, InfobipClient, TransportError
from poller.settings import InfobipSettings
from tests.fixtures_sim import SimulatorFactory

pytestmark = pytest.mark.timeout(30)

APP = "app-alpha"
SCHEMES: dict[str, dict[str, Any]] = {
    "app": {"api_key": "sim-api-key"},
    "basic": {"username": "sim-user", "password": "sim-password"},
    "ibsso": {"ibsso_token": "sim-ibsso-token"},
    "oauth2": {"client_id": "sim-client", "client_secret": "sim-client-secret"},
}
WRONG: dict[str, dict[str, Any]] = {
    "app": {"api_key": "not-the-key"},
    "basic": {"username": "sim-user", "password": "not-the-password"},
    "ibsso": {"ibsso_token": "not-the-token"},
    "oauth2": {"client_id": "sim-client", "client_secret": "not-the-secret"},
}


def settings(sim: Simulator, auth: str, **values: Any) -> InfobipSettings:
    return InfobipSettings(
        base_url=sim.base_url, auth=auth, backoff_base=0.02, max_retries=1, **values
    )


@pytest.mark.parametrize("auth", sorted(SCHEMES))
async def test_every_scheme_is_accepted(auth: str, configured_simulator: Simulator) -> None:
    ids = configured_simulator.inject(APP, 3)
    async with InfobipClient(settings(configured_simulator, auth, **SCHEMES[auth])) as client:
        configs = await client.list_configurations(APP)
        pulled = await client.pull(10)
    assert len(configs) == 1
    assert [m["messageId"] for m in pulled.results] == ids


@pytest.mark.parametrize("auth", sorted(WRONG))
async def test_wrong_credentials_are_an_auth_error_without_the_secret(
    auth: str, configured_simulator: Simulator
) -> None:
    configured_simulator.inject(APP, 2)
    async with InfobipClient(settings(configured_simulator, auth, **WRONG[auth])) as client:
        with pytest.raises(AuthError) as caught:
            await client.pull(10)
    assert caught.value.status == 401
    text = f"{caught.value} {caught.value!r}"
    for secret in ("not-the-key", "not-the-password", "not-the-token", "not-the-secret"):
        assert secret not in text
    # A refused pull took nothing out of the inbox.
    assert configured_simulator.inbox_depth == 2


async def test_oauth2_token_is_cached_across_calls(simulator: Simulator) -> None:
    async with InfobipClient(settings(simulator, "oauth2", **SCHEMES["oauth2"])) as client:
        for _ in range(5):
            await client.list_configurations(APP)
    assert simulator.auth.issued == 1


async def test_oauth2_token_is_refreshed_before_it_expires(
    simulator_factory: SimulatorFactory,
) -> None:
    # A 2 s token is renewed at half its life (the 60 s margin would exceed it), so the client
    # never sends an expired token and never takes a 401 for it.
    sim = await simulator_factory(token_ttl=2.0)
    async with InfobipClient(settings(sim, "oauth2", **SCHEMES["oauth2"])) as client:
        await client.list_configurations(APP)
        await client.list_configurations(APP)
        assert sim.auth.issued == 1
        await asyncio.sleep(1.1)
        # The first token is still valid on the server for another ~0.9 s.
        await client.list_configurations(APP)
        assert sim.auth.issued == 2
        await client.list_configurations(APP)
        assert sim.auth.issued == 2


async def test_oauth2_refetches_once_after_a_401(simulator: Simulator) -> None:
    async with InfobipClient(settings(simulator, "oauth2", **SCHEMES["oauth2"])) as client:
        await client.list_configurations(APP)
        async with httpx.AsyncClient(base_url=simulator.base_url) as control:
            revoked = (await control.post("/_sim/tokens/revoke")).json()
        assert revoked == {"revoked": 1}
        assert await client.list_configurations(APP) == []
        assert simulator.auth.issued == 2
        await client.list_configurations(APP)
    assert simulator.auth.issued == 2


async def test_oauth2_wrong_client_secret(simulator: Simulator) -> None:
    values = {"client_id": "sim-client", "client_secret": "definitely-wrong-secret"}
    async with InfobipClient(settings(simulator, "oauth2", **values)) as client:
        with pytest.raises(AuthError) as caught:
            await client.list_configurations(APP)
    exc = caught.value
    assert (exc.status, exc.message_id) == (401, "invalid_client")
    assert "/auth/1/oauth2/token" in str(exc)
    assert "definitely-wrong-secret" not in f"{exc} {exc!r}"
    assert simulator.auth.issued == 0


async def test_oauth2_custom_token_url(simulator: Simulator) -> None:
    values = dict(SCHEMES["oauth2"], token_url=f"{simulator.base_url}/auth/1/oauth2/token")
    async with InfobipClient(settings(simulator, "oauth2", **values)) as client:
        await client.list_configurations(APP)
    assert simulator.auth.issued == 1


@pytest.mark.parametrize("kind", ["503", "429"])
async def test_a_failing_token_endpoint_is_retried(kind: str, simulator: Simulator) -> None:
    simulator.add_fault(kind, path="/auth/1/oauth2/token", retry_after=0)
    reasons: list[str] = []
    oauth = settings(simulator, "oauth2", **SCHEMES["oauth2"])
    async with InfobipClient(oauth, on_retry=reasons.append) as client:
        assert await client.list_configurations(APP) == []
    assert reasons == ["token"]
    assert simulator.auth.issued == 1


async def test_an_unreachable_token_endpoint_is_a_transport_error(simulator: Simulator) -> None:
    values = dict(SCHEMES["oauth2"], token_url="http://127.0.0.1:9/auth/1/oauth2/token")
    reasons: list[str] = []
    oauth = settings(simulator, "oauth2", **values)
    async with InfobipClient(oauth, on_retry=reasons.append) as client:
        with pytest.raises(TransportError, match="OAuth2 token request failed"):
            await client.list_configurations(APP)
    assert reasons == ["token"]
    assert simulator.account.counters.requests == 0


async def test_the_live_oauth2_token_is_masked_in_log_lines(simulator: Simulator) -> None:
    # Tried: a log line that quotes the Authorization header after a token was fetched.
    from poller import logs, redact

    async with InfobipClient(settings(simulator, "oauth2", **SCHEMES["oauth2"])) as client:
        await client.list_configurations("app-alpha")
        token = client._auth._token  # type: ignore[attr-defined]
    assert token
    assert token not in redact.text(f"Authorization: Bearer {token}")
    line = logs.redact_processor(None, "warning", {"event": "echo", "header": f"Bearer {token}"})
    assert token not in str(line)
