"""Bootstrap: a configuration and one PULL action per application, whoever runs it and how often."""

from __future__ import annotations

import asyncio

import pytest

from poller.bootstrap import bootstrap
from poller.infobip import ActionRequest, AuthError, InfobipClient
from poller.settings import InfobipSettings
from tests.fixtures_sim import SimulatorFactory
from tests.support import infobip_client


async def pull_actions(client: InfobipClient, app: str) -> list[str]:
    configs = await client.list_configurations(app)
    assert len(configs) == 1
    actions = await client.list_actions(app, configs[0].key)
    return [a.key for a in actions if a.type == "PULL"]


async def test_four_concurrent_bootstraps_create_one_configuration_and_one_pull_action(
    simulator_factory: SimulatorFactory,
) -> None:
    # Tried: four processes' worth of clients bootstrapping the same five applications at once.
    apps = [f"race-{n}" for n in range(5)]
    sim = await simulator_factory(applications=apps, throttle_rps=10_000)
    clients = [infobip_client(sim.base_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(bootstrap(c, apps, callback_data="cb") for c in clients))
        for reports in results:
            assert all(r.ok for r in reports), [r.error for r in reports]
        for app in apps:
            keys = await pull_actions(clients[0], app)
            assert len(keys) == 1, (app, keys)
            # The survivor is one a racer created (a racer that finished before a later one
            # created its own may report an action the later one then removed).
            assert keys[0] in {r.pull_action for reports in results for r in reports}
    finally:
        for c in clients:
            await c.aclose()


async def test_bootstrap_is_idempotent_and_reports_what_existed(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(applications=["app-a"], throttle_rps=10_000)
    async with infobip_client(sim.base_url) as client:
        first = await bootstrap(client, ["app-a"])
        second = await bootstrap(client, ["app-a"])
        assert first[0].configuration_created
        assert first[0].pull_action_created
        assert not second[0].configuration_created
        assert not second[0].pull_action_created
        assert second[0].pull_action == first[0].pull_action
        assert len(await pull_actions(client, "app-a")) == 1


async def test_dry_run_changes_nothing(simulator_factory: SimulatorFactory) -> None:
    sim = await simulator_factory(applications=["app-a"], throttle_rps=10_000)
    async with infobip_client(sim.base_url) as client:
        reports = await bootstrap(client, ["app-a"], dry_run=True)
        assert reports[0].configuration is None
        assert any("would create" in w for w in reports[0].warnings)
        assert await client.list_configurations("app-a") == []


async def test_http_forward_action_is_reported_and_left_alone_unless_asked(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(applications=["app-a"], throttle_rps=10_000)
    async with infobip_client(sim.base_url) as client:
        config = await client.create_configuration("app-a")
        forward = await client.create_action(
            "app-a",
            config.key,
            ActionRequest(type="HTTP_FORWARD", forwardUrl="https://example.invalid/hook"),
        )
        reports = await bootstrap(client, ["app-a"])
        assert reports[0].http_forward == [forward.key]
        assert any("HTTP_FORWARD" in w for w in reports[0].warnings)
        types = sorted(a.type for a in await client.list_actions("app-a", config.key))
        assert types == ["HTTP_FORWARD", "PULL"]

        replaced = await bootstrap(client, ["app-a"], replace_http_forward=True)
        assert replaced[0].removed == [forward.key]
        types = sorted(a.type for a in await client.list_actions("app-a", config.key))
        assert types == ["PULL"]


async def test_unknown_application_is_named_and_others_still_bootstrap(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(applications=["app-a"], throttle_rps=10_000)
    async with infobip_client(sim.base_url) as client:
        reports = await bootstrap(client, ["no-such-app", "app-a"])
    assert reports[0].error is not None
    assert "no-such-app" in reports[0].error
    assert reports[1].ok


async def test_wrong_credentials_are_fatal(simulator_factory: SimulatorFactory) -> None:
    sim = await simulator_factory(applications=["app-a"])
    settings = InfobipSettings(base_url=sim.base_url, api_key="wrong")  # type: ignore[arg-type]
    async with InfobipClient(settings) as client:
        with pytest.raises(AuthError) as info:
            await bootstrap(client, ["app-a"])
    assert info.value.status == 401
