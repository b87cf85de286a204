"""Bootstrap: a configuration and one PULL action per application, whoever runs it and how often."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from poller.bootstrap import bootstrap
from poller.infobip import ActionRequest, AuthError, InfobipClient
from poller.settings import InfobipSettings
from tests.fixtures_sim import SimulatorFactory
from tests.support import make_settings, run_poller


def client_for(base_url: str, **extra: object) -> InfobipClient:
    """A client with fast retries for tests."""
    settings = InfobipSettings(
        base_url=base_url,
        api_key="sim-api-key",  # type: ignore[arg-type]
        rate_limit=200,
        backoff_base=0.01,
        backoff_max=0.1,
        **extra,  # type: ignore[arg-type]
    )
    return InfobipClient(settings)


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
    clients = [client_for(sim.base_url) for _ in range(4)]
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
    async with client_for(sim.base_url) as client:
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
    async with client_for(sim.base_url) as client:
        reports = await bootstrap(client, ["app-a"], dry_run=True)
        assert reports[0].configuration is None
        assert any("would create" in w for w in reports[0].warnings)
        assert await client.list_configurations("app-a") == []


async def test_http_forward_action_is_reported_and_left_alone_unless_asked(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(applications=["app-a"], throttle_rps=10_000)
    async with client_for(sim.base_url) as client:
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
    async with client_for(sim.base_url) as client:
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


async def test_bootstrap_command_prints_per_application_and_dry_run(
    simulator_factory: SimulatorFactory, redis_url: str, key_template: str, tmp_path: Path
) -> None:
    sim = await simulator_factory(applications=["app-a", "app-b"])
    settings = make_settings(sim, redis_url, tmp_path, key_template, apps=["app-a", "app-b"])
    dry = await asyncio.to_thread(run_poller, settings, "bootstrap", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would create" in dry.stdout
    done = await asyncio.to_thread(run_poller, settings, "bootstrap")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(created)") == 4
    again = await asyncio.to_thread(run_poller, settings, "bootstrap", "--json")
    assert again.returncode == 0
    assert '"configuration_created": false' in again.stdout


async def test_a_forward_application_gets_one_http_forward_action_to_the_receiver(
    simulator_factory: SimulatorFactory, redis_url: str, key_template: str, tmp_path: Path
) -> None:
    # Tried: an application pulled until now (a PULL action exists) switched to forward:
    # dry run, then bootstrap (PULL reported, left alone), then asked to replace it.
    token = "forward-token-0123456789abcdef"
    sim = await simulator_factory(applications=["app-a"], auto_configure=True)
    settings = make_settings(
        sim,
        redis_url,
        tmp_path,
        key_template,
        forward={
            "applications": ["app-a"],
            "token": token,
            "public_url": "https://poller.example.com/infobip/forward",
        },
    )
    url = f"https://poller.example.com/infobip/forward/{token}"

    dry = await asyncio.to_thread(run_poller, settings, "bootstrap", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert "would create" in dry.stdout + dry.stderr
    assert token not in dry.stdout + dry.stderr

    done = await asyncio.to_thread(run_poller, settings, "bootstrap", "--json")
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert (report["mode"], report["action_created"], report["ok"]) == ("forward", True, True)
    assert len(report["conflicting"]) == 1  # the PULL action, reported
    assert token not in done.stdout + done.stderr
    async with client_for(sim.base_url) as client:
        (config,) = await client.list_configurations("app-a")
        actions = await client.list_actions("app-a", config.key)
    assert sorted((a.type, a.forward_url) for a in actions) == [
        ("HTTP_FORWARD", url),
        ("PULL", None),
    ]

    replace = settings.model_copy(
        update={"forward": settings.forward.model_copy(update={"replace_pull": True})}
    )
    again = await asyncio.to_thread(run_poller, replace, "bootstrap", "--json")
    (report,) = json.loads(again.stdout)
    assert (report["action_created"], len(report["removed"])) == (False, 1)
    async with client_for(sim.base_url) as client:
        actions = await client.list_actions("app-a", config.key)
    assert [(a.type, a.forward_url) for a in actions] == [("HTTP_FORWARD", url)]


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("sim-forbidden-key", ["inbound-message:read", "mobile-app-messaging:manage",
                               "POLLER_INFOBIP__BOOTSTRAP=false"]),
        ("no-such-key", ["refused", "wrong or revoked key"]),
    ],
)  # fmt: skip
async def test_a_key_without_the_scope_and_a_wrong_key_are_told_apart(
    simulator_factory: SimulatorFactory,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
    key: str,
    says: list[str],
) -> None:
    # Tried: `poller once` with a key Infobip answers 403 (valid, missing a scope) and one it
    # answers 401 (unknown).
    sim = await simulator_factory(applications=["app-a"])
    settings = make_settings(
        sim, redis_url, tmp_path, key_template, apps=["app-a"], infobip={"api_key": key}
    )
    done = await asyncio.to_thread(run_poller, settings, "once")
    assert done.returncode == 1
    for text in says:
        assert text in done.stdout + done.stderr, text
