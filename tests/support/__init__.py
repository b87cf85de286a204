"""Helpers shared by the core tests: settings for a simulator + Redis, stream readers, and
`poller run` as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from poller.devtools.simulator import Simulator
from poller.infobip import InfobipClient
from poller.runtime import Runtime
from poller.settings import InfobipSettings, RedisSettings, Settings
from poller.sink.redis.keys import stream_key
from poller.sink.redis.sink import HWM_TTL_SECONDS, RedisSink
from poller.sink.redis.tls import TLSOptions
from poller.stop import Stop

DEFAULT_TEMPLATE = "infobip:push:{${app}}:mo"


def make_settings(
    sim: Simulator,
    redis_url: str,
    tmp_path: Path,
    key_template: str,
    *,
    apps: list[str] | None = None,
    infobip: dict[str, Any] | None = None,
    redis: dict[str, Any] | None = None,
    spool: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
    forward: dict[str, Any] | None = None,
) -> Settings:
    """Settings pointing at a simulator and a Redis server, with a spool under tmp_path.

    With no application, bootstrap is off: the daemon pulls the simulator's inbox with the
    actions it has (what `run` and `once` require for an empty application list)."""
    apps = apps or []
    return Settings(
        infobip={
            "base_url": sim.base_url,
            "api_key": "sim-api-key",
            "applications": apps,
            "bootstrap": bool(apps or (forward or {}).get("applications")),
            "backoff_base": 0.05,
            "backoff_max": 0.5,
            "read_timeout": 4.0,
            "connect_timeout": 1.0,
            **(infobip or {}),
        },
        redis={"url": redis_url, "stream_key_template": key_template, **(redis or {})},
        spool={"path": tmp_path / "spool.db", **(spool or {})},
        schedule={"interval": 0.5, "jitter": 0.0, "grace_period": 10.0, **(schedule or {})},
        health={"enabled": False, **(health or {})},
        forward=forward or {},
    )


def redis_sink(
    url: str,
    key_template: str = DEFAULT_TEMPLATE,
    *,
    instance_id: str = "test",
    dedupe_window: int = 3600,
    hwm_ttl: int = HWM_TTL_SECONDS,
    tls: TLSOptions | None = None,
    **redis: Any,
) -> RedisSink:
    """A Redis sink on ``url`` with these [redis] settings (checked as the settings are)."""
    if tls is not None:
        redis.update(
            tls=True,
            tls_ca_file=tls.ca_file,
            tls_cert_file=tls.cert_file,
            tls_key_file=tls.key_file,
            tls_key_password=tls.key_password,
            tls_verify=tls.verify,
            tls_check_hostname=tls.check_hostname,
        )
    settings = RedisSettings(url=url, stream_key_template=key_template, **redis)
    return RedisSink(
        settings, instance_id=instance_id, dedupe_window=dedupe_window, hwm_ttl=hwm_ttl
    )


def stream_of(settings: Settings, app: str | None) -> str:
    """The Redis stream key of one application under these settings."""
    return stream_key(settings.redis.stream_key_template, app)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a `poller` subprocess these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    for group, values in settings.model_dump(mode="python").items():
        for name, value in values.items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if isinstance(value, list):
                value = json.dumps(value)
            env[f"POLLER_{group.upper()}__{name.upper()}"] = str(value)
    env["POLLER_LOG__FORMAT"] = "json"
    return env


def poller_command(*args: str) -> list[str]:
    """`poller ARGS` run with this interpreter."""
    return [sys.executable, "-m", "poller", *args]


def run_poller(
    settings: Settings, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    return subprocess.run(
        poller_command(*args),
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def stream_entries(redis: Redis, key: str) -> list[dict[str, str]]:
    """Every entry of a stream, fields decoded."""
    out: list[dict[str, str]] = []
    for _id, fields in await redis.xrange(key):
        out.append({k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()})
    return out


async def ids_in_streams(redis: Redis, key_template: str) -> Counter[str]:
    """Message id -> how many stream entries carry it, over every stream of the template."""
    counts: Counter[str] = Counter()
    pattern = key_template.replace("${app}", "*")
    async for key in redis.scan_iter(match=pattern, _type="stream"):
        if key.endswith(b":dead"):
            continue
        for entry in await stream_entries(redis, key.decode()):
            counts[entry["id"]] += 1
    return counts


async def ids_at(url: str, key_template: str) -> Counter[str]:
    """`ids_in_streams` on a fresh connection to the server at url."""
    client = Redis.from_url(url)
    try:
        return await ids_in_streams(client, key_template)
    finally:
        await client.aclose()


def assert_schema(entries: list[dict[str, str]], name: str) -> None:
    """Every entry validates against the shipped JSON Schema ``name``; a message's payload is
    a JSON object."""
    from jsonschema import Draft202012Validator

    from poller import schemas

    validator = Draft202012Validator(schemas.load(name))
    for entry in entries:
        validator.validate(entry)
        if name == schemas.MO:
            assert isinstance(json.loads(entry["payload"]), dict)


class PollerProcess:
    """A `poller run` subprocess, driven from the test's event loop (the simulator lives there)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *poller_command("run"), env=settings_env(self.settings), stdout=log, stderr=log
        )
        log.close()

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def readyz(self) -> tuple[int, dict[str, object]]:
        url = f"http://127.0.0.1:{self.settings.health.port}/readyz"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            response = await client.get(url)
        return response.status_code, response.json()

    async def wait_ready(self, want: int, timeout: float = 20) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                status, body = await self.readyz()
                if status == want:
                    return body
                last = body
            except httpx.HTTPError as exc:
                last = exc
            await asyncio.sleep(0.1)
        raise AssertionError(f"/readyz never answered {want}: {last}\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class Processes(list[PollerProcess]):
    """The pollers a test started; all are killed after it."""

    async def start(self, settings: Settings, log_path: Path) -> PollerProcess:
        """Start `poller run` with these settings and track it."""
        poller = PollerProcess(settings, log_path)
        self.append(poller)
        await poller.start()
        return poller


class Forwarding:
    """A runtime's forward receiver listening in the test's loop, and ways to post to it."""

    def __init__(self, rt: Runtime) -> None:
        assert rt.receiver is not None
        self.rt = rt
        self.port = rt.receiver.port
        self.token = (
            rt.settings.forward.token.get_secret_value() if rt.settings.forward.token else ""
        )
        self.path = f"{rt.settings.forward.path}/{self.token}"
        self.url = f"http://127.0.0.1:{self.port}{self.path}"

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST ``body`` with the token in the path and exactly these headers."""
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            request = client.build_request("POST", self.url, content=body)
            for name in ("content-type", "accept-encoding", "user-agent", "accept"):
                request.headers.pop(name, None)
            request.headers.update(headers or {})
            return await client.send(request)

    async def raw(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        """Send bytes as they are (a request head ending in CRLF CRLF, then a body); the
        status code and the whole answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(head + body)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0
        return status, answer

    async def settled(self) -> None:
        """Wait until the flusher has emptied the spool."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = self.rt.spool.stats()
            if not stats.rows and not stats.quarantine_pending:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the flusher did not empty the spool")


@contextlib.asynccontextmanager
async def forwarding(settings: Settings) -> AsyncIterator[Forwarding]:
    """A runtime with its flusher running and its receiver listening, stopped after."""
    rt = await Runtime.open(settings)
    try:
        rt.start_flushing()
        assert rt.receiver is not None
        await rt.receiver.start()
        yield Forwarding(rt)
    finally:
        rt.stop.request("test")
        await rt.finish()
        await rt.close()


def infobip_client(base_url: str, **extra: object) -> InfobipClient:
    """An Infobip client with fast retries, for tests."""
    settings = InfobipSettings(
        base_url=base_url,
        api_key="sim-api-key",  # type: ignore[arg-type]
        rate_limit=200,
        backoff_base=0.01,
        backoff_max=0.1,
        **extra,  # type: ignore[arg-type]
    )
    return InfobipClient(settings)


def inbox_item(n: int, app: str = "app-alpha", size: int = 0) -> dict[str, object]:
    """Message n as an item of a pull answer, padded with `size` bytes of text."""
    return {
        "messageId": f"m-{n:05d}",
        "applicationCode": app,
        "receivedAt": "2026-11-30T10:00:00.000+0000",
        "text": f"message {n} " + "x" * size,
        "customPayload": {"n": n, "nested": [1, {"deep": "é"}]},
    }


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, stop: Stop | None = None) -> AsyncIterator[Runtime]:
    """`Runtime.open(settings, stop)`, closed when the block ends, however it ends."""
    rt = await Runtime.open(settings, stop)
    try:
        yield rt
    finally:
        await rt.close()
