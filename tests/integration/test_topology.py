"""The topologies of tests/topology.py do what they claim: sentinels agree on a primary and
move it on SENTINEL FAILOVER or a SIGKILL, the replication proxy makes a replica lag by its
delay, a cluster replica takes over a killed primary, and servers die with their starter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.topology import (
    ClusterTopology,
    SentinelTopology,
    connect,
    role,
    wait_for,
)

DELAY = 0.5
ROOT = Path(__file__).resolve().parents[2]
# Faster sentinel periods than the defaults (2000 and 10000 ms): a demoted primary is turned
# into a replica about 2 s after the switch instead of 8-18 s.
FAST_SENTINELS = {"publish-period": 500, "info-period": 1000}


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelTopology]:
    """One primary behind a 0.5 s replication proxy, one replica, three sentinels."""
    with SentinelTopology(
        replicas=1, sentinels=3, replication_delay=DELAY, sentinel_debug=FAST_SENTINELS
    ) as topology:
        yield topology


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterTopology]:
    """Three primaries with a replica each."""
    with ClusterTopology(primaries=3, replicas_per_primary=1) as topology:
        yield topology


def test_sentinels_agree_on_the_primary_and_see_its_replica(sentinel: SentinelTopology) -> None:
    assert sentinel.proxy is not None
    assert sentinel.primary is not None
    assert sentinel.master_addresses() == [sentinel.proxy.address] * 3
    assert sentinel.master() is sentinel.primary
    assert len(sentinel.sentinel_addresses()) == 3
    replica = sentinel.replicas[0]
    with connect(sentinel.proxy.address) as client:
        listed = [(r[0], int(r[1])) for r in client.execute_command("ROLE")[2]]
    assert listed == [replica.address]  # at its own port, so sentinels reach it directly
    assert role(replica.address)[1:3] == ["127.0.0.1", sentinel.proxy.port]


def test_the_proxy_makes_the_replica_lag_by_its_delay(sentinel: SentinelTopology) -> None:
    assert sentinel.proxy is not None
    replica = sentinel.replicas[0]
    key = f"lag:{uuid.uuid4().hex}"
    with connect(sentinel.master_address()) as primary, connect(replica.address) as copy:
        before = time.monotonic()
        primary.set(key, "1")
        wait_for("the key on the replica", lambda: copy.get(key), 20, interval=0.005)
        lag = time.monotonic() - before
        assert DELAY <= lag < DELAY + 10

        # While writes go on, the replica's offset stays behind the primary's.
        behind = []
        for i in range(40):
            primary.set(f"{key}:{i}", "x" * 1000)
            behind.append(sentinel.master_offset() - sentinel.replica_offsets()[replica.address])
            time.sleep(0.02)
        last_write = time.monotonic()
        primary.set(f"{key}:last", "x")
        target = sentinel.master_offset()
    assert min(behind[5:]) > 0
    wait_for(
        "the replica to catch up",
        lambda: sentinel.replica_offsets()[replica.address] >= target or None,
        20,
        interval=0.005,
    )
    assert time.monotonic() - last_write >= DELAY


def test_a_dropped_replication_link_is_picked_up_again(sentinel: SentinelTopology) -> None:
    assert sentinel.proxy is not None
    replica = sentinel.replicas[0]
    assert sentinel.proxy.drop() == 1
    key = f"drop:{uuid.uuid4().hex}"
    with connect(sentinel.master_address()) as primary, connect(replica.address) as copy:
        primary.set(key, "after the drop")
        wait_for("the key on the replica", lambda: copy.get(key), 30)
    assert sentinel.proxy.replication_links == 1


def test_failover_promotes_the_replica_and_demotes_the_primary(
    sentinel: SentinelTopology,
) -> None:
    assert sentinel.primary is not None
    old = sentinel.master_address()
    new = sentinel.failover()
    assert new != old
    assert new == sentinel.replicas[0].address
    assert role(new)[0] == "master"
    assert sentinel.wait_ready() == new
    assert role(sentinel.primary.address)[:3] == ["slave", new[0], new[1]]


def test_a_killed_primary_is_replaced_and_comes_back_as_a_replica(
    sentinel: SentinelTopology,
) -> None:
    victim = sentinel.kill_primary()
    old = sentinel.announced(victim)
    new = sentinel.wait_for_master_change(old)
    survivors = {sentinel.announced(n) for n in sentinel.nodes if n is not victim}
    assert new in survivors
    sentinel.restart(victim)
    assert sentinel.wait_ready() == new
    assert role(victim.address)[0] == "slave"


def test_a_cluster_replica_takes_over_a_killed_primary(cluster: ClusterTopology) -> None:
    key = f"{{slot}}:{uuid.uuid4().hex}"
    victim = cluster.primary_for(key)
    (replica,) = cluster.replicas_of(victim)
    with connect(victim.address) as client:
        client.set(key, "kept")
        assert client.execute_command("WAIT", 1, 5000) == 1
    assert len(cluster.primaries()) == 3
    cluster.kill(victim)
    new = cluster.wait_for_takeover(victim)
    assert new is replica
    assert cluster.primary_for(key) is replica
    with connect(replica.address) as client:
        assert client.get(key) == "kept"
    cluster.restart(victim)
    cluster.wait_ready()
    assert role(victim.address)[:3] == ["slave", "127.0.0.1", replica.port]


_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.topology import Node
node = Node(data_dir=sys.argv[2]).start()
print(node.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ROOT), str(tmp_path / "node")],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            pid = int(child.stdout.readline())
            assert not _gone(pid)
        finally:
            child.send_signal(signal.SIGKILL)
    wait_for("the server to die", lambda: _gone(pid) or None, 20)
    if not _gone(pid):  # pragma: no cover - only if the kernel did not do it
        os.kill(pid, signal.SIGKILL)
