"""Redis over TLS in every mode, against real TLS-only redis-servers and a throwaway CA.

Each server here has its plain port turned off (``--port 0``), so a connection that skipped
TLS, or lost the CA or the client certificate on the way (a sentinel's master, a cluster's
per-node client), fails instead of passing in clear."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from poller.daemon import run_once
from poller.devtools.embedded import EmbeddedRedis
from poller.devtools.simulator import Simulator
from poller.settings import load_settings
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
from tests.support import make_settings, redis_sink, stream_entries, stream_of
from tests.support.tls import encrypted_key, tls_settings

pytestmark = pytest.mark.skipif(not redis_has_tls(), reason="redis-server built without TLS")

APPS = ["app-alpha", "app-beta"]


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
