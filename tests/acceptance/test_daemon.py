"""`poller run` as a real process: readiness, graceful stop, and SIGKILL at random moments."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from poller.devtools.embedded import EmbeddedRedis, free_port
from poller.devtools.simulator import Simulator
from poller.settings import Settings
from tests.fixtures_sim import SimulatorFactory
from tests.support import (
    PollerProcess,
    Processes,
    ids_at,
    ids_in_streams,
    make_settings,
    poller_command,
    settings_env,
    stream_of,
)

APPS = ["app-alpha", "app-beta", "app-gamma"]


def daemon_settings(
    sim: Simulator, redis_url: str, tmp_path: Path, key_template: str, **kw: object
) -> Settings:
    return make_settings(
        sim,
        redis_url,
        tmp_path,
        key_template,
        apps=APPS,
        health={"enabled": True, "port": free_port()},
        redis={"socket_timeout": 1.0},
        **kw,  # type: ignore[arg-type]
    )


async def wait_for(predicate_coro, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate_coro():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_readiness_follows_redis_and_turns_503_on_sigterm_before_exit(
    simulator_factory: SimulatorFactory,
    own_redis: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried as an operator would: Redis stopped and restarted under a running daemon, then a
    # SIGTERM while a slow pull is in flight.
    sim = await simulator_factory(applications=APPS)
    settings = daemon_settings(sim, own_redis.url, tmp_path, key_template)
    poller = await processes.start(settings, tmp_path / "poller.log")
    await poller.wait_ready(200)

    sim.inject("app-alpha", 50)
    redis = Redis.from_url(own_redis.url)
    try:

        async def all_written() -> bool:
            return len(await ids_in_streams(redis, key_template)) == 50

        await wait_for(all_written)
    finally:
        await redis.aclose()

    own_redis.kill()
    started = time.monotonic()
    body = await poller.wait_ready(503, timeout=10)
    assert time.monotonic() - started < 5
    assert body["checks"]["sink"]["ok"] is False  # type: ignore[index]
    sim.inject("app-beta", 30)  # pulled into the spool while Redis is away
    await asyncio.sleep(1.5)
    own_redis.restart()
    await poller.wait_ready(200, timeout=15)

    sim.add_fault("latency", count=1, path="/push/1/inbox/reports", delay=3.0)
    sim.inject("app-gamma", 20)
    await asyncio.sleep(1.0)  # the next tick's pull is now held by the latency fault
    poller.signal(signal.SIGTERM)
    body = await poller.wait_ready(503, timeout=3)
    assert body["checks"]["shutdown"]["ok"] is False  # type: ignore[index]
    assert await poller.wait(timeout=20) == 0

    counts = await ids_at(own_redis.url, key_template)
    assert set(counts) == set(sim.ledger.ids())
    assert len(counts) == 100
    assert set(counts.values()) == {1}


async def test_bad_setting_exits_2_naming_it(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *poller_command("run"),
        env={"POLLER_INFOBIP__PULL_LIMIT": "0", "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    _out, err = await proc.communicate()
    assert proc.returncode == 2
    assert "POLLER_INFOBIP__PULL_LIMIT" in err.decode()


async def test_corrupt_spool_stops_the_start_and_is_kept(
    configured_simulator: Simulator,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
) -> None:
    settings = make_settings(configured_simulator, redis_url, tmp_path, key_template)
    settings.spool.path.write_bytes(b"this is not a sqlite database" * 100)
    before = settings.spool.path.read_bytes()
    proc = await asyncio.create_subprocess_exec(
        *poller_command("once"),
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 1
    assert "spool" in (out + err).decode()
    assert settings.spool.path.read_bytes() == before


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    simulator_factory: SimulatorFactory,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried: a steadily producing Infobip (150 msg/s over three applications), `poller run`
    # SIGKILLed five times at random moments and restarted each time, then drained.
    rng = random.Random(20261126)
    sim = await simulator_factory(applications=APPS, auto_configure=True, rate=150.0)
    settings = daemon_settings(sim, redis_url, tmp_path, key_template, infobip={"pull_limit": 100})
    kills: list[float] = []
    for _round in range(5):
        poller = await processes.start(settings, tmp_path / "poller.log")
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        kills.append(time.time())
        await poller.kill()

    sim.set_rate(0)
    poller = await processes.start(settings, tmp_path / "poller.log")
    await poller.wait_ready(200, timeout=30)
    redis = Redis.from_url(redis_url)
    try:

        async def drained() -> bool:
            return sim.inbox_depth == 0 and len(await ids_in_streams(redis, key_template)) > 0

        await wait_for(drained, timeout=30)
        await asyncio.sleep(1.5)  # one more cycle to flush the last pull
        poller.signal(signal.SIGTERM)
        assert await poller.wait() == 0
        counts = await ids_in_streams(redis, key_template)
    finally:
        await redis.aclose()

    handed = sim.ledger.ids()
    assert len(handed) > 500
    assert set(counts.values()) == {1}, "a message was written twice"
    assert set(counts) <= set(handed)
    missing = set(handed) - set(counts)
    # The only window a destructive read leaves: a response already sent when the process died,
    # before it reached the spool. Each such response must end within moments of a kill.
    lost_responses = [e for e in sim.ledger.entries if set(e.message_ids) & missing]
    for entry in lost_responses:
        assert set(entry.message_ids) <= missing, "a response was lost only in part"
        assert any(0 <= k - entry.at < 2.0 for k in kills), (entry.n, entry.at, kills)
    assert len(lost_responses) <= len(kills)
    report = {
        "handed_out": len(handed),
        "in_streams": len(counts),
        "lost_in_flight_messages": len(missing),
        "lost_in_flight_responses": len(lost_responses),
        "kills": len(kills),
    }
    (tmp_path / "chaos.json").write_text(json.dumps(report))
    print("chaos report:", json.dumps(report))


def metric_total(text: str, name: str) -> float:
    """Sum of every sample of a metric in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *poller_command(*args),
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_operator_view_metrics_check_status_and_systemd_notify_agree(
    simulator_factory: SimulatorFactory,
    own_redis: EmbeddedRedis,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried as an operator would: the daemon under a notify socket; /metrics, `poller check`
    # and `poller status` read while it works and while Redis is stopped.
    import socket

    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    messages: list[str] = []
    # Read as systemd does, all along: a full socket buffer would drop notifications.
    asyncio.get_running_loop().add_reader(
        notify.fileno(), lambda: messages.append(notify.recv(4096).decode())
    )
    sim = await simulator_factory(applications=APPS, auto_configure=True)
    settings = daemon_settings(sim, own_redis.url, tmp_path, key_template)
    poller = PollerProcess(settings, tmp_path / "poller.log")
    processes.append(poller)
    env_extra = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
    log = poller.log_path.open("ab")
    poller.proc = await asyncio.create_subprocess_exec(
        *poller_command("run"), env={**settings_env(settings), **env_extra}, stdout=log, stderr=log
    )
    log.close()
    try:
        await poller.wait_ready(200)
        for app, n in zip(APPS, (40, 25, 10), strict=True):
            sim.inject(app, n)
        redis = Redis.from_url(own_redis.url)
        try:

            async def written() -> bool:
                return len(await ids_in_streams(redis, key_template)) == 75

            await wait_for(written)
        finally:
            await redis.aclose()
        await asyncio.sleep(0.3)

        async with httpx.AsyncClient(trust_env=False) as client:
            text = (await client.get(f"http://127.0.0.1:{settings.health.port}/metrics")).text
        assert metric_total(text, "poller_messages_written_total") == 75
        assert metric_total(text, "poller_messages_pulled_total") == 75
        assert 'poller_messages_written_total{app="app-alpha"} 40.0' in text

        code, out, _ = await run_cli(settings, "check")
        assert code == 0, out
        assert out.startswith("ok")
        code, out, err = await run_cli(settings, "status", "--json")
        assert code == 0, err
        status = json.loads(out)
        lengths = {s["key"]: s["length"] for s in status["streams"]}
        counts = dict(zip(APPS, (40, 25, 10), strict=True))
        assert lengths == {stream_of(settings, a): n for a, n in counts.items()}
        assert status["spool"]["rows"] == 0
        assert status["health"]["ready"] is True

        own_redis.kill()
        await poller.wait_ready(503, timeout=10)
        code, out, _ = await run_cli(settings, "check")
        assert code == 1
        assert "redis" in out
        own_redis.restart()
        await poller.wait_ready(200, timeout=15)

        poller.signal(signal.SIGTERM)
        assert await poller.wait() == 0
        await asyncio.sleep(0.1)
        joined = "\n".join(messages)
        assert "READY=1" in joined
        assert "STOPPING=1" in joined
        assert "STATUS=" in joined
        assert joined.count("WATCHDOG=1") >= 3  # every 0.5 s for a 1 s WatchdogSec
        assert joined.index("READY=1") < joined.index("STOPPING=1")
    finally:
        asyncio.get_running_loop().remove_reader(notify.fileno())
        notify.close()


async def test_demo_command_runs_and_reports_every_message_once(tmp_path: Path) -> None:
    # The README's first command, shortened: simulator, embedded server, daemon, summary.
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("POLLER_")}
    proc = await asyncio.create_subprocess_exec(
        *poller_command("demo", "--duration", "4", "--rate", "100", "--plain"),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])
    assert "summary: OK" in out.decode()


async def test_sigterm_while_draining_a_large_inbox_stops_after_the_current_pull(
    simulator_factory: SimulatorFactory,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried: 3,000 messages pulled 10 at a time (a 30 s drain at 10 requests/s), SIGTERM after
    # 2 s: the stop must not wait for the drain, and what was handed out must be in Redis.
    sim = await simulator_factory(applications=APPS, auto_configure=True)
    sim.inject("app-alpha", 3000)
    settings = daemon_settings(sim, redis_url, tmp_path, key_template, infobip={"pull_limit": 10})
    poller = await processes.start(settings, tmp_path / "poller.log")
    await poller.wait_ready(200)
    await asyncio.sleep(2.0)
    stopped_at = time.monotonic()
    poller.signal(signal.SIGTERM)
    assert await poller.wait(timeout=20) == 0
    assert time.monotonic() - stopped_at < 5
    assert sim.inbox_depth > 0  # the drain was cut short, as asked
    counts = await ids_at(redis_url, key_template)
    assert set(counts) == set(sim.ledger.ids())
    assert set(counts.values()) == {1}


async def test_sigterm_while_the_answer_of_a_pull_is_on_its_way_keeps_its_messages(
    simulator_factory: SimulatorFactory,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried: Infobip has taken 40 messages out of the inbox for a pull whose answer arrives
    # 2.5 s later (a slow network); SIGTERM lands in between. The stop must wait for it.
    sim = await simulator_factory(applications=APPS, auto_configure=True)
    settings = daemon_settings(sim, redis_url, tmp_path, key_template)
    poller = await processes.start(settings, tmp_path / "poller.log")
    await poller.wait_ready(200)
    sim.add_fault("slow_answer", count=1, path="/push/1/inbox/reports", delay=2.5)
    sim.inject("app-beta", 40)
    for _ in range(50):
        if sim.inbox_depth == 0:
            break
        await asyncio.sleep(0.05)
    assert sim.inbox_depth == 0  # handed out; the answer is still on its way
    poller.signal(signal.SIGTERM)
    assert await poller.wait(timeout=20) == 0
    counts = await ids_at(redis_url, key_template)
    assert len(sim.ledger.ids()) == 40
    assert set(counts) == set(sim.ledger.ids())


async def test_sigterm_during_a_slow_bootstrap_stops_at_once_and_never_says_ready(
    simulator_factory: SimulatorFactory,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: Infobip's configuration API answers after 8 s; SIGTERM 1 s into the bootstrap.
    import socket

    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    sim = await simulator_factory(applications=APPS)
    sim.add_fault("latency", rate=1.0, path="/push/1/applications", delay=8.0)
    settings = daemon_settings(
        sim,
        redis_url,
        tmp_path,
        key_template,
        infobip={"read_timeout": 10.0},
        schedule={"grace_period": 20.0},
    )
    proc = await asyncio.create_subprocess_exec(
        *poller_command("run"),
        env={**settings_env(settings), "NOTIFY_SOCKET": str(notify_path)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
        assert time.monotonic() - started < 3
        messages = []
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
        assert not any("READY=1" in m for m in messages)
        assert any("EXTEND_TIMEOUT_USEC" in m for m in messages)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()


async def test_wrong_credentials_without_applications_stop_the_daemon(
    simulator_factory: SimulatorFactory,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: no applications to bootstrap, so the first pull is the first call; wrong key.
    sim = await simulator_factory(applications=APPS, auto_configure=True)
    settings = make_settings(
        sim, redis_url, tmp_path, key_template, infobip={"api_key": "not-the-key"}
    )
    proc = await asyncio.create_subprocess_exec(
        *poller_command("run"),
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode == 1
    text = (out + err).decode()
    assert "refused the credentials" in text
    assert "not-the-key" not in text


async def test_run_refuses_a_grace_period_too_short_for_a_pull(tmp_path: Path) -> None:
    # Tried: POLLER_SCHEDULE__GRACE_PERIOD=10 with a 30 s read timeout: a stop could not let
    # the pull in flight finish, so `poller run` refuses to start (exit 2, naming both).
    proc = await asyncio.create_subprocess_exec(
        *poller_command("run"),
        env={
            "PATH": "/usr/bin:/bin",
            "POLLER_SCHEDULE__GRACE_PERIOD": "10",
            "POLLER_INFOBIP__READ_TIMEOUT": "30",
            "POLLER_INFOBIP__API_KEY": "k",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    _out, err = await proc.communicate()
    assert proc.returncode == 2
    assert "POLLER_SCHEDULE__GRACE_PERIOD" in err.decode()
    assert "POLLER_INFOBIP__READ_TIMEOUT" in err.decode()


async def test_a_cron_schedule_runs_its_first_cycle_at_start(
    simulator_factory: SimulatorFactory,
    redis_url: str,
    key_template: str,
    tmp_path: Path,
    processes: Processes,
) -> None:
    # Tried: POLLER_SCHEDULE__CRON set to an hourly expression: the daemon must not wait for
    # the hour to drain what is already waiting.
    sim = await simulator_factory(applications=APPS, auto_configure=True)
    sim.inject("app-gamma", 25)
    settings = daemon_settings(
        sim, redis_url, tmp_path, key_template, schedule={"cron": "0 * * * *"}
    )
    poller = await processes.start(settings, tmp_path / "poller.log")
    await poller.wait_ready(200)

    async def drained() -> bool:
        return len(await ids_at(redis_url, key_template)) == 25

    await wait_for(drained, timeout=15)
    poller.signal(signal.SIGTERM)
    assert await poller.wait() == 0


async def test_demo_forward_command_receives_by_forward_and_reports_every_message_once(
    tmp_path: Path,
) -> None:
    # The demo with the applications received by HTTP forward: bootstrap points the
    # simulator's forward at the daemon's receiver, every message reaches its stream once.
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("POLLER_")}
    proc = await asyncio.create_subprocess_exec(
        *poller_command("demo", "--forward", "--duration", "4", "--rate", "100", "--plain"),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, (text[-2000:], err.decode()[-2000:])
    assert "forwarded to the receiver at http://127.0.0.1:" in text
    assert "summary: OK" in text
    summary = next(line for line in text.splitlines() if "Infobip forwarded" in line)
    forwarded = int(summary.split("Infobip forwarded ")[1].split()[0])
    assert forwarded > 0
    assert f"the streams hold {forwarded} entries ({forwarded} distinct)" in summary
