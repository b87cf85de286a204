"""Redis over TLS in every mode, against real TLS-only redis-servers and a throwaway CA.

Each server here has its plain port turned off (``--port 0``), so a connection that skipped
TLS, or lost the CA or the client certificate on the way (a sentinel's master, a cluster's
per-node client), fails instead of passing in clear."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from redis.asyncio import Redis
from redis.crc import key_slot

from poller.daemon import run_once
from poller.devtools.embedded import EmbeddedRedis
from poller.devtools.simulator import Simulator
from poller.settings import SettingsError, load_settings
from poller.sink import SinkConfigError, SinkError
from poller.sink.redis.sink import RedisSink
from poller.sink.redis.tls import TLSOptions
from tests.fixtures_redis import (
    TLSFiles,
    TLSRedis,
    _start_cluster,
    redis_has_tls,
    run_sentinel,
    tls_client,
)
from tests.fixtures_sim import SimulatorFactory
from tests.support import make_settings, redis_sink, run_poller, stream_entries, stream_of

pytestmark = pytest.mark.skipif(not redis_has_tls(), reason="redis-server built without TLS")

APPS = ["app-alpha", "app-beta"]


def tls_settings(files: TLSFiles, *, client_cert: bool = False, **more: Any) -> dict[str, Any]:
    """The redis settings that trust the test CA (and present the client certificate)."""
    settings: dict[str, Any] = {"tls_ca_file": files.ca, **more}
    if client_cert:
        settings |= {"tls_cert_file": files.client_cert, "tls_key_file": files.client_key}
    return settings


def encrypted_key(files: TLSFiles, folder: Path, password: str) -> Path:
    """The client key, encrypted with ``password``."""
    key = serialization.load_pem_private_key(files.client_key.read_bytes(), password=None)
    path = folder / "client-encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    return path


def async_tls_client(port: int, files: TLSFiles) -> Redis:
    """An asyncio client over TLS with the client certificate, to read back what landed."""
    return Redis(
        port=port,
        ssl=True,
        ssl_ca_certs=str(files.ca),
        ssl_certfile=str(files.client_cert),
        ssl_keyfile=str(files.client_key),
    )


async def landed(port: int, files: TLSFiles, key: str) -> list[str]:
    """Message ids in one stream of the server on ``port``."""
    client = async_tls_client(port, files)
    try:
        return [entry["id"] for entry in await stream_entries(client, key)]
    finally:
        await client.aclose()


def assert_plain_port_off(port: int, files: TLSFiles) -> None:
    """The server answers only over TLS: no plain port a client could fall back to."""
    with tls_client(port, files) as client:
        assert client.config_get("port") == {"port": "0"}


# -- settings ------------------------------------------------------------------------------


def _load(**redis: Any) -> None:
    load_settings(redis=redis)


def test_tls_settings_that_cannot_work_are_refused_naming_the_setting(
    tls_files: TLSFiles, tmp_path: Path
) -> None:
    # Tried: each way an operator can get the TLS settings wrong; every one is a settings
    # error naming the variable to fix, before anything connects.
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    missing = tmp_path / "missing.pem"
    rediss = "rediss://127.0.0.1:6380/0"
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"url": rediss, "tls_ca_file": missing},
            f"POLLER_REDIS__TLS_CA_FILE: cannot read {missing}",
        ),
        (
            {"url": rediss, "tls_key_file": tls_files.client_key},
            "TLS_KEY_FILE needs POLLER_REDIS__TLS_CERT_FILE",
        ),
        ({"url": "unix:///run/redis.sock", "tls": True}, "TLS over a unix:// socket"),
        ({"url": "redis://h:6379/0", "tls_ca_file": tls_files.ca}, "set but TLS is off"),
        ({"url": "redis://h:6379/0", "tls_sentinels": True}, "TLS_SENTINELS set but TLS is off"),
        ({"url": rediss, "tls": False}, "POLLER_REDIS__TLS=false contradicts the rediss:// URL"),
        (
            {"url": rediss, "tls_ca_file": not_pem},
            "TLS_CA_FILE (" + str(not_pem) + "): not a PEM CA",
        ),
        (
            # The server's key does not belong to the client certificate.
            {
                "url": rediss,
                "tls_cert_file": tls_files.client_cert,
                "tls_key_file": tls_files.server_key,
            },
            "cannot load the client certificate and its key",
        ),
        (
            {
                "url": rediss,
                "mode": "cluster",
                "tls_cert_file": tls_files.client_cert,
                "tls_key_password": "pw",
            },
            "TLS_KEY_PASSWORD is not supported with mode=cluster",
        ),
    ]
    for redis, expected in cases:
        with pytest.raises(SettingsError) as caught:
            _load(**redis)
        assert expected in str(caught.value), (redis, str(caught.value))


def test_tls_options_in_the_url_are_refused_without_echoing_them() -> None:
    # Tried: the options redis-py reads from a URL query; settings are the one way now, and
    # the key password given there must not show up in the error.
    url = "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_password=hunter2-url-secret"
    with pytest.raises(SettingsError) as caught:
        _load(url=url)
    text = str(caught.value)
    assert "ssl_cert_reqs in POLLER_REDIS__URL: set POLLER_REDIS__TLS_VERIFY instead" in text
    assert "ssl_password in POLLER_REDIS__URL: set POLLER_REDIS__TLS_KEY_PASSWORD" in text
    assert "hunter2-url-secret" not in text


def test_a_wrong_key_password_is_a_settings_error_that_does_not_print_it(
    tls_files: TLSFiles, tmp_path: Path
) -> None:
    key = encrypted_key(tls_files, tmp_path, "right-password-123")
    redis = {"url": "rediss://127.0.0.1:6380/0", "tls_cert_file": tls_files.client_cert}
    with pytest.raises(SettingsError) as caught:
        _load(**redis, tls_key_file=key, tls_key_password="wrong-password-456")
    assert "TLS_KEY_PASSWORD" in str(caught.value)
    assert "wrong-password-456" not in str(caught.value)
    # The right one loads, and stays out of the options' repr.
    _load(**redis, tls_key_file=key, tls_key_password="right-password-123")
    assert "right-password" not in repr(TLSOptions(key_password="right-password-123"))


def test_poller_exits_2_on_a_missing_ca_file_and_never_prints_the_key_password(
    configured_simulator: Simulator, tls_files: TLSFiles, tmp_path: Path, key_template: str
) -> None:
    configured_simulator.inject("app-alpha", 3)
    rediss = "rediss://127.0.0.1:6380/0"
    settings = make_settings(configured_simulator, rediss, tmp_path, key_template, apps=APPS)
    # Set after validation, as an environment variable naming a file that is gone would be.
    settings.redis.tls_ca_file = tmp_path / "gone.pem"
    done = run_poller(settings, "once", "--no-bootstrap")
    assert done.returncode == 2, done.stderr
    assert f"POLLER_REDIS__TLS_CA_FILE: cannot read {tmp_path / 'gone.pem'}" in done.stderr
    assert configured_simulator.inbox_depth == 3  # the start stopped before any pull

    secret = "key-password-never-shown"
    redis = tls_settings(tls_files, client_cert=True, tls_key_password=secret)
    redis["tls_key_file"] = encrypted_key(tls_files, tmp_path, secret)
    good = make_settings(configured_simulator, rediss, tmp_path, key_template, redis=redis)
    shown = run_poller(good, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert "redis.tls_key_password" in shown.stdout
    assert secret not in shown.stdout + shown.stderr


# -- standalone ----------------------------------------------------------------------------


async def test_once_writes_over_tls_with_a_private_ca(
    configured_simulator: Simulator,
    tls_redis: TLSRedis,
    tls_files: TLSFiles,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: the real pipeline (pull, spool, flush) into a server that speaks only TLS and
    # whose certificate only the test CA vouches for.
    assert_plain_port_off(tls_redis.port, tls_files)
    sent = {app: configured_simulator.inject(app, 20) for app in APPS}
    settings = make_settings(
        configured_simulator,
        tls_redis.url,
        tmp_path,
        key_template,
        apps=APPS,
        redis=tls_settings(tls_files),
    )
    assert await run_once(settings, bootstrap=False) == 0
    for app in APPS:
        assert await landed(tls_redis.port, tls_files, stream_of(settings, app)) == sent[app]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain-key", "encrypted-key"])
async def test_once_writes_with_a_client_certificate(
    configured_simulator: Simulator,
    mtls_redis: TLSRedis,
    tls_files: TLSFiles,
    key_template: str,
    tmp_path: Path,
    encrypted: bool,
) -> None:
    # Tried: a server with tls-auth-clients yes; the key file plain, then encrypted.
    sent = configured_simulator.inject("app-alpha", 10)
    redis = tls_settings(tls_files, client_cert=True)
    if encrypted:
        redis["tls_key_file"] = encrypted_key(tls_files, tmp_path, "s3cret-key-pass")
        redis["tls_key_password"] = "s3cret-key-pass"
    settings = make_settings(
        configured_simulator, mtls_redis.url, tmp_path, key_template, apps=APPS, redis=redis
    )
    assert await run_once(settings, bootstrap=False) == 0
    assert await landed(mtls_redis.port, tls_files, stream_of(settings, "app-alpha")) == sent


def sink_for(url: str, key_template: str, tls: TLSOptions | None, **kwargs: Any) -> RedisSink:
    return redis_sink(url=url, key_template=key_template, instance_id="tls", tls=tls, **kwargs)


async def test_a_server_that_wants_a_client_certificate_refuses_a_sink_without_one(
    tls_files: TLSFiles, key_template: str
) -> None:
    # Tried: no client certificate against a server that requires one. With TLS 1.2 the
    # server checks the certificate inside the handshake, so the refusal always arrives as
    # its alert (with TLS 1.3 it comes after the handshake, as the alert or, on a loaded
    # machine, as a reset of the connection, which the sink retries like an outage).
    with TLSRedis(tls_files, auth_clients=True, protocols="TLSv1.2") as server:
        sink = sink_for(server.url, key_template, TLSOptions(ca_file=tls_files.ca))
        try:
            with pytest.raises(SinkConfigError) as caught:
                await sink.connect()
        finally:
            await sink.close()
    assert "want a client certificate (set POLLER_REDIS__TLS_CERT_FILE" in str(caught.value)


async def test_the_wrong_ca_stops_the_start_at_once_and_pulls_nothing(
    configured_simulator: Simulator,
    tls_redis: TLSRedis,
    tls_files: TLSFiles,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: a CA that did not sign the server's certificate. The start is refused (exit 1,
    # a line that names the setting) within a second or so, not after retries, and no
    # message leaves the Infobip inbox.
    configured_simulator.inject("app-alpha", 5)
    settings = make_settings(
        configured_simulator,
        tls_redis.url,
        tmp_path,
        key_template,
        apps=APPS,
        redis={"tls_ca_file": tls_files.other_ca},
    )
    started = time.monotonic()
    done = run_poller(settings, "once", "--no-bootstrap", timeout=30)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("event") == "the sink cannot honour the settings"]
    assert refused, done.stderr
    assert "certificate verify failed" in refused[0]["error"]
    assert "POLLER_REDIS__TLS_CA_FILE must hold the CA" in refused[0]["error"]
    assert elapsed < 15
    assert configured_simulator.inbox_depth == 5


async def test_tls_true_encrypts_a_redis_url_and_without_it_the_tls_port_refuses(
    tls_redis: TLSRedis, tls_files: TLSFiles, key_template: str
) -> None:
    from poller.spool import SpoolEntry

    plain_url = f"redis://127.0.0.1:{tls_redis.port}/0"
    # Without TLS the TLS-only port does not answer a plain client.
    plain = sink_for(plain_url, key_template, None, socket_timeout=1.0)
    try:
        with pytest.raises(SinkError):
            await plain.connect()
    finally:
        await plain.close()
    # POLLER_REDIS__TLS=true: the same URL, encrypted.
    settings = load_settings(
        redis={"url": plain_url, "tls": True, "tls_ca_file": tls_files.ca},
    )
    options = settings.redis.tls_options()
    assert options is not None
    sink = sink_for(plain_url, key_template, options)
    try:
        await sink.connect()
        result = await sink.write([SpoolEntry(1, "app-alpha", "m1", "r", "p", "{}")])
    finally:
        await sink.close()
    assert result.written == {"app-alpha": 1}
    assert await landed(tls_redis.port, tls_files, sink.stream_key("app-alpha")) == ["m1"]
    # POLLER_REDIS__TLS_VERIFY=false: encrypted, though no CA vouches for the server.
    unverified = sink_for(tls_redis.url, key_template, TLSOptions(verify=False))
    try:
        assert (await unverified.connect()).startswith("redis ")
    finally:
        await unverified.close()


# -- sentinel ------------------------------------------------------------------------------


@pytest.fixture
def tls_master(tls_files: TLSFiles) -> Iterator[TLSRedis]:
    """A TLS-only master that wants client certificates."""
    with TLSRedis(tls_files, auth_clients=True) as server:
        yield server


@pytest.mark.parametrize("sentinels_tls", [True, False], ids=["tls-sentinel", "plain-sentinel"])
async def test_sentinel_mode_writes_to_a_tls_master(
    configured_simulator: Simulator,
    tls_master: TLSRedis,
    tls_files: TLSFiles,
    key_template: str,
    tmp_path: Path,
    sentinels_tls: bool,
) -> None:
    # Tried: the master found through a sentinel (on TLS, or on a plain port with
    # POLLER_REDIS__TLS_SENTINELS=false); the master has no plain port and wants a client
    # certificate, so a master connection without the TLS settings cannot write.
    assert_plain_port_off(tls_master.port, tls_files)
    with run_sentinel(
        tls_master.port, tmp_path, tls_master.binary, tls_files, listen_tls=sentinels_tls
    ) as port:
        sent = configured_simulator.inject("app-alpha", 10)
        redis = tls_settings(
            tls_files,
            client_cert=True,
            mode="sentinel",
            sentinels=[f"127.0.0.1:{port}"],
            url="rediss://mymaster/0",
        )
        if not sentinels_tls:
            redis["tls_sentinels"] = False
        settings = make_settings(
            configured_simulator, redis["url"], tmp_path, key_template, apps=APPS, redis=redis
        )
        assert await run_once(settings, bootstrap=False) == 0
    assert await landed(tls_master.port, tls_files, stream_of(settings, "app-alpha")) == sent


# -- cluster -------------------------------------------------------------------------------


@pytest.fixture
def tls_cluster(tls_files: TLSFiles) -> Iterator[list[EmbeddedRedis]]:
    """Three TLS-only primaries (cluster bus on TLS too) that want client certificates."""
    nodes = _start_cluster(3, tls_files)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.close()


async def test_cluster_mode_writes_and_waits_on_every_primary_over_tls(
    simulator_factory: SimulatorFactory,
    tls_cluster: list[EmbeddedRedis],
    tls_files: TLSFiles,
    key_template: str,
    tmp_path: Path,
) -> None:
    # Tried: three applications whose streams live on the three primaries, durability=wait:
    # the cluster client writes, and one per-node client per primary runs INFO and WAIT;
    # every one of them must carry the CA and the client certificate.
    apps = ["app-0", "app-2", "app-3"]
    with tls_client(tls_cluster[0].port, tls_files) as client:
        ranges = [(start, end, nodes[0][1]) for start, end, *nodes in client.cluster("slots")]
    owners = {}
    for app in apps:
        slot = key_slot(key_template.replace("${app}", app).encode())
        owners[app] = next(port for start, end, port in ranges if start <= slot <= end)
    assert len(set(owners.values())) == 3  # one application per primary
    sim = await simulator_factory(applications=apps, auto_configure=True)
    sent = {app: sim.inject(app, 8) for app in apps}
    redis = tls_settings(
        tls_files,
        client_cert=True,
        mode="cluster",
        url=f"rediss://127.0.0.1:{tls_cluster[0].port}/0",
        durability="wait",
        durability_replicas=0,
    )
    settings = make_settings(sim, redis["url"], tmp_path, key_template, apps=apps, redis=redis)
    assert await run_once(settings, bootstrap=False) == 0
    for app, port in owners.items():
        assert await landed(port, tls_files, stream_of(settings, app)) == sent[app]
        with tls_client(port, tls_files) as client:
            # The per-node client's WAIT reached this primary (over TLS: no plain port).
            assert client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0) >= 1
            assert client.config_get("port") == {"port": "0"}
