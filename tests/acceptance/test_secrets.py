"""No secret reaches an output, a log line, the spool or Redis, over a whole session.

Every secret setting gets a distinctive value, with characters that URL-encoding, form
encoding and JSON change. The daemon and every command run against the simulator, a Redis
server that needs a password and the forward receiver; then every failure known to echo
credentials back. At the end everything the poller wrote (stdout, stderr, log lines,
/readyz, the spool files' bytes, saved raw answers, every Redis key's content) is searched
for each secret in each form it travels in: raw, percent-encoded, form-encoded,
JSON-escaped, the Basic header's base64, and the pieces of a password cut at @ # ? /.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from redis.asyncio import Redis

from poller.devtools.embedded import EmbeddedRedis, free_port
from poller.devtools.simulator import Simulator
from poller.devtools.simulator.httpserver import HttpServer, Request, Response
from tests.support import poller_command

API_KEY = "SeCrEt-apikey-7f3a/k+e=y"
INFOBIP_USER = "sim-user"
INFOBIP_PASSWORD = "SeCrEt-basicpw-b4&s c"
IBSSO_TOKEN = "SeCrEt-ibsso-tok9n"
CLIENT_ID = "sim-client"
CLIENT_SECRET = "SeCrEt-oauth-c1&x=y/z%"
FORWARD_TOKEN = "SeCrEt-fwdtoken-7f3a9c1d"
FORWARD_USER = "infobip"
FORWARD_PASSWORD = "SeCrEt-fwdbasic-f1:p@ss"
# A Redis password with every character a URL treats specially.
REDIS_PASSWORD = "SeCrEt-redis@tail9w#frag3k?qry5z/end8v"
WRONG_REDIS_PASSWORD = "SeCrEt-wrongpw@w7x#w8y"
SSL_PASSWORD = "SeCrEt-sslpw-s5l9"
SSL_KEYFILE_PASSWORD = "SeCrEt-sslkeyfilepw-k3y"
LIVE_TOKEN = "SeCrEt-livetoken-b3ar/er+t="

SECRETS = [
    API_KEY,
    INFOBIP_PASSWORD,
    IBSSO_TOKEN,
    CLIENT_SECRET,
    FORWARD_TOKEN,
    FORWARD_PASSWORD,
    REDIS_PASSWORD,
    WRONG_REDIS_PASSWORD,
    SSL_PASSWORD,
    SSL_KEYFILE_PASSWORD,
    LIVE_TOKEN,
]
BASIC_PAIRS = [
    (INFOBIP_USER, INFOBIP_PASSWORD),
    (FORWARD_USER, FORWARD_PASSWORD),
    (CLIENT_ID, CLIENT_SECRET),
]
PULLED = ["app-alpha", "app-beta"]
FORWARDED = "app-gamma"


def forms(secret: str) -> set[str]:
    """Every form a secret may travel in, and the pieces a URL parser could cut it into."""
    found = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
    }
    found.update(piece for piece in re.split(r"[@#?/:&=+% ]", secret) if len(piece) >= 5)
    return found


def needles() -> dict[bytes, str]:
    """Each searched byte string -> the secret it gives away."""
    out: dict[bytes, str] = {}
    for secret in SECRETS:
        for form in forms(secret):
            out[form.encode()] = secret
    for user, password in BASIC_PAIRS:
        out[base64.b64encode(f"{user}:{password}".encode())] = f"basic {user}"
    return out


def leaks(data: bytes) -> list[str]:
    """The secrets whose forms appear in ``data``."""
    return sorted({secret for needle, secret in needles().items() if needle in data})


class Transcript:
    """Everything the poller printed or served, by label."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, bytes]] = []

    def add(self, label: str, data: bytes | str) -> None:
        self.parts.append((label, data.encode() if isinstance(data, str) else data))

    def text(self, label_prefix: str) -> str:
        return "".join(
            d.decode(errors="replace") for lb, d in self.parts if lb.startswith(label_prefix)
        )


class Echo:
    """An HTTP server playing the failures that echo credentials back, one mode at a time."""

    def __init__(self) -> None:
        self.mode = "echo"
        self.seen: list[bytes] = []
        self.server = HttpServer(self.handle)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def handle(self, request: Request) -> Response:
        headers = "".join(f"{k}: {v}\n" for k, v in request.headers.items())
        echoed = f"{request.method} {request.path}?{request.query}\n{headers}\n".encode()
        echoed += request.body
        self.seen.append(echoed)
        if self.mode == "echo":
            # A wrong base URL answered by a server that echoes the request: 200, not JSON.
            return Response(200, b"ECHO " + echoed, content_type="text/plain")
        if self.mode == "upstream-400":
            # An upstream error quoting the header it refused.
            text = f"Invalid header Authorization={request.headers.get('authorization', '')}"
            return Response(400, _service_exception("BAD_REQUEST", text))
        if self.mode == "oauth-echo":
            # A token endpoint quoting the form it refused (client_secret URL-encoded).
            return Response(401, _service_exception("UNAUTHORIZED", request.body.decode()))
        if self.mode == "live-token":
            if request.method == "POST":
                body = {"access_token": LIVE_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
                return Response(200, json.dumps(body).encode())
            text = f"Authorization={request.headers.get('authorization', '')} not allowed"
            return Response(400, _service_exception("BAD_REQUEST", text))
        raise AssertionError(self.mode)


def _service_exception(message_id: str, text: str) -> bytes:
    body = {"requestError": {"serviceException": {"messageId": message_id, "text": text}}}
    return json.dumps(body).encode()


@pytest.fixture
def locked_redis() -> Iterator[EmbeddedRedis]:
    """A private server that needs REDIS_PASSWORD (set once it answers PING)."""
    with EmbeddedRedis() as server:
        import redis

        with redis.Redis(port=server.port) as client:
            client.config_set("requirepass", REDIS_PASSWORD)
        yield server


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    await server.server.start()
    try:
        yield server
    finally:
        await server.server.stop()


class Session:
    """Runs `poller` commands with the secret settings and records what they print."""

    def __init__(self, tmp_path: Path, sim: Simulator, redis_port: int) -> None:
        self.tmp = tmp_path
        self.transcript = Transcript()
        self.template = f"sec:{uuid.uuid4().hex[:8]}:{{${{app}}}}:mo"
        self.health_port = free_port()
        self.forward_port = free_port()
        self.redis_port = redis_port
        self.env = {
            "POLLER_INFOBIP__BASE_URL": sim.base_url,
            "POLLER_INFOBIP__API_KEY": API_KEY,
            "POLLER_INFOBIP__USERNAME": INFOBIP_USER,
            "POLLER_INFOBIP__PASSWORD": INFOBIP_PASSWORD,
            "POLLER_INFOBIP__IBSSO_TOKEN": IBSSO_TOKEN,
            "POLLER_INFOBIP__CLIENT_ID": CLIENT_ID,
            "POLLER_INFOBIP__CLIENT_SECRET": CLIENT_SECRET,
            "POLLER_INFOBIP__APPLICATIONS": ",".join(PULLED),
            "POLLER_INFOBIP__BACKOFF_BASE": "0.05",
            "POLLER_INFOBIP__BACKOFF_MAX": "0.2",
            "POLLER_INFOBIP__MAX_RETRIES": "1",
            "POLLER_INFOBIP__CONNECT_TIMEOUT": "1",
            "POLLER_INFOBIP__READ_TIMEOUT": "4",
            "POLLER_REDIS__URL": self.redis_url(quote(REDIS_PASSWORD, safe="")),
            "POLLER_REDIS__STREAM_KEY_TEMPLATE": self.template,
            "POLLER_REDIS__SOCKET_TIMEOUT": "2",
            "POLLER_SPOOL__PATH": str(tmp_path / "spool.db"),
            "POLLER_SCHEDULE__INTERVAL": "0.5",
            "POLLER_SCHEDULE__GRACE_PERIOD": "10",
            "POLLER_FORWARD__APPLICATIONS": FORWARDED,
            "POLLER_FORWARD__TOKEN": FORWARD_TOKEN,
            "POLLER_FORWARD__PORT": str(self.forward_port),
            "POLLER_FORWARD__PUBLIC_URL": f"http://127.0.0.1:{self.forward_port}/infobip/forward",
            "POLLER_FORWARD__BASIC_USERNAME": FORWARD_USER,
            "POLLER_FORWARD__BASIC_PASSWORD": FORWARD_PASSWORD,
            "POLLER_HEALTH__PORT": str(self.health_port),
            "POLLER_LOG__FORMAT": "json",
            "POLLER_LOG__LEVEL": "DEBUG",
        }

    def redis_url(self, userinfo_password: str, scheme: str = "redis", query: str = "") -> str:
        return f"{scheme}://:{userinfo_password}@127.0.0.1:{self.redis_port}/0{query}"

    def environment(self, **overrides: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        return {**base, **self.env, **overrides}

    async def run(
        self, label: str, *args: str, **overrides: str
    ) -> subprocess.CompletedProcess[str]:
        """`poller ARGS` with the session's settings and ``overrides``, output recorded."""
        done = await asyncio.to_thread(
            subprocess.run,
            poller_command(*args),
            env=self.environment(**overrides),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.transcript.add(f"{label} stdout", done.stdout)
        self.transcript.add(f"{label} stderr", done.stderr)
        return done


async def dump_redis(port: int) -> bytes:
    """Every key of the server and its whole content (SCAN, then by type), as bytes."""
    client = Redis(port=port, password=REDIS_PASSWORD)
    out: list[bytes] = []
    try:
        async for key in client.scan_iter(count=1000):
            out.append(key)
            kind = (await client.type(key)).decode()
            if kind == "string":
                out.append(await client.get(key) or b"")
            elif kind == "stream":
                for entry_id, fields in await client.xrange(key):
                    out.append(entry_id)
                    for name, value in fields.items():
                        out += [name, value]
                out.append(repr(await client.xinfo_groups(key)).encode())
            elif kind == "zset":
                out.append(repr(await client.zrange(key, 0, -1, withscores=True)).encode())
            elif kind == "hash":
                out.append(repr(await client.hgetall(key)).encode())
            elif kind == "set":
                out.append(repr(await client.smembers(key)).encode())
            elif kind == "list":
                out.append(repr(await client.lrange(key, 0, -1)).encode())
            else:
                raise AssertionError(f"unexpected key type {kind} for {key!r}")
            out.append(await client.dump(key) or b"")
    finally:
        await client.aclose()
    return b"\n".join(out)


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached in {timeout:g} s: {what}")


async def run_daemon_phase(session: Session, sim: Simulator) -> None:
    """`poller run` with pulls and forwarded messages; every command while it runs."""
    log_path = session.tmp / "run.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *poller_command("run"),
            env=session.environment(),
            cwd=session.tmp,
            stdout=log,
            stderr=log,
        )
    try:
        readyz = f"http://127.0.0.1:{session.health_port}/readyz"
        async with httpx.AsyncClient(timeout=3.0, trust_env=False) as client:

            async def ready() -> bool:
                try:
                    return (await client.get(readyz)).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_until(ready, 30, "the daemon ready\n" + log_path.read_text()[-3000:])
            sim.inject(PULLED[0], 20)
            sim.inject(PULLED[1], 10)
            forward = f"http://127.0.0.1:{session.forward_port}/infobip/forward"
            body = {
                "results": [
                    {
                        "messageId": f"fwd-{i}",
                        "applicationCode": FORWARDED,
                        "receivedAt": "2026-11-30T10:00:00.000+0000",
                        "text": f"forwarded {i}",
                    }
                    for i in range(5)
                ]
            }
            auth = (FORWARD_USER, FORWARD_PASSWORD)
            good = await client.post(f"{forward}/{FORWARD_TOKEN}", json=body, auth=auth)
            assert good.status_code == 200, good.text
            # A body that is not JSON and quotes our credentials: quarantined, dead-lettered.
            junk = f"Authorization: App {API_KEY}\nX-Forward-Token: {FORWARD_TOKEN}".encode()
            bad = await client.post(
                forward,
                content=junk,
                headers={"X-Forward-Token": FORWARD_TOKEN, "Content-Type": "application/json"},
                auth=auth,
            )
            assert bad.status_code == 400, bad.text
            wrong = await client.post(f"{forward}/{FORWARD_TOKEN}x", json=body, auth=auth)
            assert wrong.status_code in (401, 403)
            stream = session.template.replace("${app}", PULLED[0])
            reader = Redis(port=session.redis_port, password=REDIS_PASSWORD)
            try:
                await wait_until(
                    lambda: _has(reader, stream, 20), 30, "pulled messages in their stream"
                )
            finally:
                await reader.aclose()
            for path in ("/readyz", "/livez"):
                response = await client.get(f"http://127.0.0.1:{session.health_port}{path}")
                session.transcript.add(f"http {path}", response.content)
        for args in (
            ["status"],
            ["status", "--json"],
            ["check"],
            ["tail", "--count", "40"],
            ["tail", "--json", "--count", "40"],
            ["tail", "--dead", "--count", "10"],
            ["tail", "--dead", "--json", "--count", "10"],
            ["tail", PULLED[0], "--group", "g1", "--ack", "--count", "5"],
        ):
            done = await session.run(" ".join(args), *args)
            assert done.returncode == 0, done.stdout + done.stderr
        assert "forwarded 0" in session.transcript.text("tail --json")
        assert "***" in session.transcript.text("tail --dead --json"), "the junk body, masked"
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await proc.wait()
        session.transcript.add("poller run log", log_path.read_bytes())
    assert code == 0, log_path.read_text()[-3000:]


async def _has(client: Redis, stream: str, count: int) -> bool:
    return int(await client.xlen(stream)) >= count


async def run_commands_phase(session: Session, sim: Simulator) -> None:
    """Every command against the simulator, with each auth scheme."""
    spool = str(session.tmp / "once.db")
    for label, args in (
        ("config show", ["config", "show"]),
        ("config show --json", ["config", "show", "--json"]),
        ("bootstrap --dry-run", ["bootstrap", "--dry-run"]),
        ("bootstrap", ["bootstrap"]),
        ("bootstrap --json", ["bootstrap", "--json"]),
        ("actions list", ["infobip", "actions", "list", FORWARDED]),
        ("actions list --json", ["infobip", "actions", "list", FORWARDED, "--json"]),
        ("configurations list", ["infobip", "configurations", "list", PULLED[0]]),
        ("configurations list --json", ["infobip", "configurations", "list", PULLED[0], "--json"]),
    ):
        done = await session.run(label, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    # The forward URL holds the token: shown masked, and bootstrap did set it.
    assert f"/infobip/forward/{FORWARD_TOKEN}" in str(sim.state()), "bootstrap set the forwardUrl"
    assert "/infobip/forward/***" in session.transcript.text("actions list")
    for auth in ("basic", "ibsso", "oauth2"):
        done = await session.run(
            f"configurations list auth={auth}",
            "infobip",
            "configurations",
            "list",
            PULLED[0],
            POLLER_INFOBIP__AUTH=auth,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    sim.inject(PULLED[0], 5)
    pulled = await session.run("infobip pull", "infobip", "pull", "--limit", "2", "--json")
    assert pulled.returncode == 0, pulled.stderr
    once = await session.run("once", "once", POLLER_SPOOL__PATH=spool)
    assert once.returncode == 0, once.stdout + once.stderr
    # The password in POLLER_REDIS__PASSWORD, and in the URL with its @ unencoded.
    once = await session.run(
        "once password setting",
        "once",
        "--no-bootstrap",
        POLLER_SPOOL__PATH=spool,
        POLLER_REDIS__URL=f"redis://127.0.0.1:{session.redis_port}/0",
        POLLER_REDIS__PASSWORD=REDIS_PASSWORD,
    )
    assert once.returncode == 0, once.stdout + once.stderr
    at_unencoded = REDIS_PASSWORD.replace("#", "%23").replace("?", "%3F").replace("/", "%2F")
    assert "@" in at_unencoded
    for label, args in (
        ("once @ unencoded", ["once", "--no-bootstrap"]),
        ("status @ unencoded", ["status", "--json"]),
        ("config show @ unencoded", ["config", "show"]),
    ):
        done = await session.run(
            label,
            *args,
            POLLER_SPOOL__PATH=spool,
            POLLER_REDIS__URL=session.redis_url(at_unencoded),
        )
        assert done.returncode in (0, 1), done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    assert "redis://:***@127.0.0.1" in session.transcript.text("config show @ unencoded")


async def run_failures_phase(session: Session, echo: Echo) -> None:
    """Every failure known to bring a secret back."""
    # Unencoded # and ? in the password: a settings error, no traceback, exit 2.
    for char in "#?":
        password = f"SeCrEt-wrongpw@w7x{char}w8y"
        for args in (["config", "show"], ["status"], ["once"]):
            done = await session.run(
                f"unparseable url {char} {args[0]}",
                *args,
                POLLER_REDIS__URL=session.redis_url(password),
            )
            assert done.returncode == 2, done.stdout + done.stderr
            assert done.stderr.startswith("poller: bad setting: redis.url (POLLER_REDIS__URL):")
            assert "Traceback" not in done.stderr
    # A wrong password with @, and TLS with ssl_password and ssl_keyfile_password.
    wrong = session.redis_url(quote(WRONG_REDIS_PASSWORD, safe=""))
    ssl = session.redis_url(
        quote(REDIS_PASSWORD, safe=""),
        scheme="rediss",
        query=f"?ssl_password={quote(SSL_PASSWORD)}&ssl_cert_reqs=none",
    )
    keyfile = f"{wrong}?ssl_keyfile_password={SSL_KEYFILE_PASSWORD}"
    for label, url in (("wrong redis password", wrong), ("rediss ssl_password", ssl)):
        for args in (["status"], ["status", "--json"], ["once", "--no-bootstrap"], ["tail"]):
            spool = str(session.tmp / f"{label.replace(' ', '-')}.db")
            done = await session.run(
                f"{label} {args[0]}", *args, POLLER_REDIS__URL=url, POLLER_SPOOL__PATH=spool
            )
            # `once` with nothing pulled has nothing left behind: it may exit 0.
            assert done.returncode != 0 or args[0] == "once", done.stdout + done.stderr
            assert "Traceback" not in done.stderr
    # ssl_password on a plain redis:// URL, which the client library refuses.
    plain = session.redis_url(quote(REDIS_PASSWORD, safe=""), query=f"?ssl_password={SSL_PASSWORD}")
    done = await session.run("redis ssl_password without TLS", "status", POLLER_REDIS__URL=plain)
    assert done.returncode != 0, done.stdout + done.stderr
    # TLS passwords belong in POLLER_REDIS__TLS_KEY_PASSWORD: in the URL they are refused at
    # start, by name and without their values.
    done = await session.run("config show ssl", "config", "show", POLLER_REDIS__URL=ssl)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "POLLER_REDIS__TLS_KEY_PASSWORD" in done.stderr
    done = await session.run(
        "config show keyfile", "config", "show", "--json", POLLER_REDIS__URL=keyfile
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ssl_keyfile_password in POLLER_REDIS__URL" in done.stderr
    assert "POLLER_REDIS__TLS_KEY_PASSWORD" in done.stderr
    assert "invalid username-password pair" in session.transcript.text("wrong redis password")
    # Infobip side: a wrong base URL echoing the request, an upstream 400 quoting the header,
    # a token endpoint quoting the form, a live token quoted back.
    for mode, auth in (
        ("echo", "app"),
        ("echo", "basic"),
        ("echo", "ibsso"),
        ("upstream-400", "app"),
        ("upstream-400", "basic"),
        ("oauth-echo", "oauth2"),
        ("live-token", "oauth2"),
    ):
        echo.mode = mode
        label = f"{mode} auth={auth}"
        env = {
            "POLLER_INFOBIP__BASE_URL": echo.url,
            "POLLER_INFOBIP__AUTH": auth,
            "POLLER_SPOOL__PATH": str(session.tmp / f"{mode}-{auth}.db"),
        }
        for args in (
            ["once"],
            ["once", "--no-bootstrap"],
            ["bootstrap"],
            ["bootstrap", "--json"],
            ["infobip", "configurations", "list", PULLED[0]],
            ["infobip", "actions", "list", PULLED[0], "--json"],
            ["infobip", "pull", "--limit", "3"],
        ):
            await session.run(f"{label} {' '.join(args)}", *args, **env)
    # The failures happened, and carried the secrets on the wire: what was masked was there.
    wire = b"\n".join(echo.seen)
    for secret in (API_KEY, IBSSO_TOKEN, LIVE_TOKEN):
        assert secret.encode() in wire, secret
    assert quote_plus(CLIENT_SECRET).encode() in wire
    assert base64.b64encode(f"{INFOBIP_USER}:{INFOBIP_PASSWORD}".encode()) in wire
    assert "HTTP 400" in session.transcript.text("upstream-400 auth=app infobip")
    assert "HTTP 401" in session.transcript.text("oauth-echo")
    assert "HTTP 400" in session.transcript.text("live-token auth=oauth2 infobip")


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_no_secret_anywhere_over_a_whole_session(
    simulator_factory: Any, locked_redis: EmbeddedRedis, echo: Echo, tmp_path: Path
) -> None:
    sim = await simulator_factory(
        api_key=API_KEY,
        password=INFOBIP_PASSWORD,
        ibsso_token=IBSSO_TOKEN,
        client_secret=CLIENT_SECRET,
        applications=[*PULLED, FORWARDED],
    )
    session = Session(tmp_path, sim, locked_redis.port)
    await run_commands_phase(session, sim)
    await run_daemon_phase(session, sim)
    await run_failures_phase(session, echo)

    found: dict[str, list[str]] = {}
    for label, data in session.transcript.parts:
        if leaked := leaks(data):
            found[label] = leaked
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".raw") for p in written), "a garbled answer was saved"
    assert any(p.name.endswith("-wal") or p.suffix == ".db" for p in written)
    for path in written:
        if leaked := leaks(path.read_bytes()):
            found[str(path.relative_to(tmp_path))] = leaked
    content = await dump_redis(locked_redis.port)
    assert b"ECHO GET /push/1/inbox/reports" in content, "the echoed answer was dead-lettered"
    assert b"Authorization=***" in content or b"Authorization: App ***" in content
    if leaked := leaks(content):
        found["redis"] = leaked
    assert not found, json.dumps(found, indent=1)


def test_the_search_finds_every_form() -> None:
    # The search itself must be able to fail: each form of each secret is found.
    for secret in SECRETS:
        for form in forms(secret):
            assert secret in leaks(f"x {form} y".encode())
    pair = base64.b64encode(f"{FORWARD_USER}:{FORWARD_PASSWORD}".encode())
    assert leaks(b"Basic " + pair) == [f"basic {FORWARD_USER}"]
    assert leaks(b"redis://:SeCrEt-redis@tail9w") == [REDIS_PASSWORD]
