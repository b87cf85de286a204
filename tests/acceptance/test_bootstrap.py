"""`poller bootstrap` and `poller once` set up Infobip: what each application got, a dry run that
changes nothing, the forward action pointed at the receiver, and a key without the scope told
apart from a wrong one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.fixtures_sim import SimulatorFactory
from tests.support import infobip_client, make_settings, run_poller


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
    async with infobip_client(sim.base_url) as client:
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
    async with infobip_client(sim.base_url) as client:
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
