"""Failover benchmark: what a Redis failover does to messages the poller had acknowledged.

Run: python tests/benchmarks/failover.py --case planned|kill-lagging|cluster-kill
         [--rate 1000] [--durability auto|none|wait] [--warmup 10] [--after 25] [--workdir DIR]

Cases (topologies from tests/topology.py, every process on loopback):

- ``planned``: a primary, a replica and three sentinels; SENTINEL FAILOVER.
- ``kill-lagging``: the same, with the replica ``--lag`` seconds behind (a ReplicationProxy
  holds the replication stream back); SIGKILL of the primary, started again
  ``--restart-after`` seconds after the promotion (it comes back as a replica).
- ``cluster-kill``: three primaries with a replica each, every stream on one primary (the key
  template has one hash tag); SIGKILL of that primary, started again ``--restart-after``
  seconds after its replica took over.

``poller simulate`` (a subprocess) generates ``--rate`` messages/s over three applications;
``poller run`` (a subprocess, settings in POLLER_* variables) pulls them. ``--warmup`` seconds
after generation starts comes the disruption; ``--after`` seconds later generation stops, the
poller drains (inbox and spool empty) and gets a SIGTERM. Then the simulator's ledger (every
message its pull endpoint handed out) is compared with the streams on the master at the end.

It prints one JSON document (also written to report.json in the work directory, with every
log): ``lost`` (handed out, in no stream), ``doubled`` (in a stream more than once),
``stall_s`` (the longest time, from the disruption to the end of generation, in which the
poller's poller_messages_written_total did not move: no flush confirmed, durability wait
included; ``baseline_stall_s`` is the same before the disruption), ``spool_rows_peak``,
``surviving_gap_s`` (the longest gap between the server times of consecutive entries left in
the streams, around the disruption), when the lost messages were handed out relative to the
disruption, and the poller's warning and error log events. For Sentinel: when the old
primary stopped saying it was a master (ROLE, polled), and how many writes the poller had
confirmed between the promotion and then. The exit status is 0 when the run completed (1
with ``--expect-no-loss`` and a message lost or doubled, 2 when the harness could not run
the case).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from poller.devtools.embedded import free_port
from tests.benchmarks.soak_chaos import parse_metrics
from tests.support import poller_command
from tests.topology import (
    Address,
    ClusterTopology,
    Node,
    SentinelTopology,
    TopologyError,
    address_text,
    role,
)

APPS = ("fo-alpha", "fo-beta", "fo-gamma")
SENTINEL_TEMPLATE = "failover:{${app}}:mo"
# One hash tag for every application: all streams (and their marks) in one slot.
CLUSTER_TEMPLATE = "failover:{one}:${app}:mo"
SAMPLE_EVERY = 0.1
XRANGE_PAGE = 5000


@dataclass
class Timeline:
    """Wall-clock (time.time()) and monotonic moments of the run."""

    generation_started: float = 0.0
    disruption: float = 0.0
    disruption_wall: float = 0.0
    promoted: float = 0.0
    restarted: float | None = None
    generation_stopped: float = 0.0
    drained: float | None = None
    old_primary_demoted: float | None = None


@dataclass
class Samples:
    """The poller's counters, sampled every SAMPLE_EVERY seconds (monotonic time)."""

    times: list[float] = field(default_factory=list)
    written: list[float] = field(default_factory=list)
    spool: list[float] = field(default_factory=list)

    def written_at(self, moment: float) -> float | None:
        """The last sampled written count at or before ``moment``."""
        value = None
        for at, count in zip(self.times, self.written, strict=True):
            if at > moment:
                break
            value = count
        return value

    def longest_flat(self, start: float, end: float) -> float:
        """The longest time within [start, end] in which the written count did not grow."""
        increases = [start]
        for i in range(1, len(self.times)):
            if start <= self.times[i] <= end and self.written[i] > self.written[i - 1]:
                increases.append(self.times[i])
        increases.append(end)
        return max(b - a for a, b in itertools.pairwise(increases))


class Harness:
    """The simulator and poller subprocesses, and what is sampled from them."""

    def __init__(self, args: argparse.Namespace, workdir: Path, redis_env: dict[str, str]):
        self.args = args
        self.workdir = workdir
        self.sim_port = free_port()
        self.health_port = free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        self.env.update(
            {
                "POLLER_INFOBIP__BASE_URL": self.sim_url,
                "POLLER_INFOBIP__API_KEY": "sim-api-key",
                "POLLER_INFOBIP__APPLICATIONS": ",".join(APPS),
                "POLLER_INFOBIP__BOOTSTRAP": "false",  # the simulator configures them
                "POLLER_INFOBIP__BACKOFF_BASE": "0.1",
                "POLLER_INFOBIP__BACKOFF_MAX": "1",
                "POLLER_REDIS__DURABILITY": args.durability,
                "POLLER_REDIS__DURABILITY_TIMEOUT_MS": "1000",
                "POLLER_REDIS__NO_REPLICA": args.no_replica,
                **({"POLLER_REDIS__DURABILITY_REPLICAS": "1"} if args.durability == "wait" else {}),
                "POLLER_SPOOL__PATH": str(workdir / "spool.db"),
                "POLLER_SCHEDULE__INTERVAL": "1",
                "POLLER_SCHEDULE__JITTER": "0",
                "POLLER_SCHEDULE__GRACE_PERIOD": "30",
                "POLLER_HEALTH__ENABLED": "true",
                "POLLER_HEALTH__PORT": str(self.health_port),
                "POLLER_LOG__FORMAT": "json",
                **redis_env,
            }
        )
        self.sim: asyncio.subprocess.Process | None = None
        self.poller: asyncio.subprocess.Process | None = None
        self.http = httpx.AsyncClient(timeout=5.0, trust_env=False)
        self.samples = Samples()
        self.poller_exit: int | None = None

    @property
    def poller_log(self) -> Path:
        return self.workdir / "poller.log"

    async def start(self) -> None:
        with (self.workdir / "simulator.log").open("ab") as log:
            self.sim = await asyncio.create_subprocess_exec(
                *poller_command("simulate"),
                "--port",
                str(self.sim_port),
                "--rate",
                "0",
                "--applications",
                ",".join(APPS),
                "--auto-configure",
                "--seed",
                "1",
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        await self._until("the simulator answers", self._sim_up, 30)
        with self.poller_log.open("ab") as log:
            self.poller = await asyncio.create_subprocess_exec(
                *poller_command("run"),
                env=self.env,
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        await self._until("the poller is ready", self._poller_ready, 60)

    async def _until(self, what: str, probe: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await probe():
            if time.monotonic() > deadline:
                raise TopologyError(f"timed out waiting for {what}")
            if self.poller is not None and self.poller.returncode is not None:
                raise TopologyError(f"the poller exited with {self.poller.returncode}")
            await asyncio.sleep(0.1)

    async def _sim_up(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return (await self.http.get(f"{self.sim_url}/_sim/state")).status_code == 200
        return False

    async def _poller_ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            return (await self.http.get(url)).status_code == 200
        return False

    async def set_rate(self, rate: float) -> None:
        await self.http.post(f"{self.sim_url}/_sim/generator", json={"rate": rate})

    async def sim_state(self) -> dict[str, Any]:
        reply: dict[str, Any] = (await self.http.get(f"{self.sim_url}/_sim/state")).json()
        return reply

    async def ledger(self) -> dict[str, Any]:
        reply: dict[str, Any] = (await self.http.get(f"{self.sim_url}/_sim/ledger")).json()
        return reply

    async def sample(self, stop: asyncio.Event) -> None:
        url = f"http://127.0.0.1:{self.health_port}/metrics"
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                response = await self.http.get(url)
                if response.status_code == 200:
                    metrics = parse_metrics(response.text)
                    self.samples.times.append(time.monotonic())
                    self.samples.written.append(metrics.get("poller_messages_written_total", 0))
                    self.samples.spool.append(metrics.get("poller_spool_rows", 0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)

    async def drained(self, timeout: float) -> bool:
        """True once the inbox and the spool are empty (three samples in a row)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            state = await self.sim_state()
            spool = self.samples.spool[-1] if self.samples.spool else None
            quiet = quiet + 1 if state["inboxDepth"] == 0 and spool == 0 else 0
            if quiet >= 3:
                return True
            await asyncio.sleep(0.3)
        return False

    async def stop(self) -> None:
        if self.http.is_closed:
            return
        for name, proc in (("poller", self.poller), ("simulator", self.sim)):
            if proc is None or proc.returncode is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    code = await proc.wait()
            except TimeoutError:
                proc.kill()
                code = await proc.wait()
            if name == "poller":
                self.poller_exit = code
        await self.http.aclose()

    def log_events(self) -> dict[str, int]:
        """Warning and error events of the poller's log, counted by level and event."""
        counts: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in self.poller_log.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                level = str(record.get("level", ""))
                if level in ("warning", "error", "critical"):
                    counts[f"{level}: {record.get('event')}"] += 1
        return dict(counts.most_common())


def read_streams(address: Address) -> tuple[Counter[str], list[int]]:
    """Message id -> entries carrying it, and every entry's server time (ms), over the
    benchmark's message streams on the server at ``address``."""
    counts: Counter[str] = Counter()
    times: list[int] = []
    with Redis(host=address[0], port=address[1], socket_timeout=30) as client:
        for key in client.scan_iter(match="failover:*", count=1000, _type="stream"):
            if key.endswith(b":dead"):
                continue
            start = "-"
            while True:
                page = client.xrange(key, min=start, count=XRANGE_PAGE)
                for entry_id, fields in page:
                    counts[fields[b"id"].decode()] += 1
                    times.append(int(entry_id.split(b"-")[0]))
                if len(page) < XRANGE_PAGE:
                    break
                start = "(" + page[-1][0].decode()
    times.sort()
    return counts, times


def watch_demotion(address: Address, stop: threading.Event) -> float | None:
    """Poll ROLE at ``address`` until it is no longer a master; the monotonic time then."""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            if role(address)[0] != "master":
                return time.monotonic()
        stop.wait(0.05)
    return None


class Case:
    """One disruption on one topology."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.sentinel: SentinelTopology | None = None
        self.cluster: ClusterTopology | None = None
        self.victim: Node | None = None
        self.details: dict[str, Any] = {}

    def start(self) -> dict[str, str]:
        """Start the topology (in this, the main, thread); the poller's Redis settings."""
        if self.args.case == "cluster-kill":
            self.cluster = ClusterTopology(3, 1, workdir=self.workdir / "redis").start()
            self.victim = self.cluster.primary_for(self.stream_key(APPS[0]))
            entry = next(n for n in self.cluster.primaries() if n is not self.victim)
            return {
                "POLLER_REDIS__MODE": "cluster",
                "POLLER_REDIS__URL": self.cluster.url(entry),
                "POLLER_REDIS__STREAM_KEY_TEMPLATE": CLUSTER_TEMPLATE,
            }
        delay = self.args.lag if self.args.case == "kill-lagging" else None
        self.sentinel = SentinelTopology(
            replicas=1, sentinels=3, replication_delay=delay, workdir=self.workdir / "redis"
        ).start()
        return {
            "POLLER_REDIS__MODE": "sentinel",
            "POLLER_REDIS__URL": "redis://127.0.0.1/0",
            "POLLER_REDIS__SENTINELS": ",".join(self.sentinel.sentinel_addresses()),
            "POLLER_REDIS__SENTINEL_MASTER": self.sentinel.master_name,
            "POLLER_REDIS__STREAM_KEY_TEMPLATE": SENTINEL_TEMPLATE,
        }

    def stream_key(self, app: str) -> str:
        template = CLUSTER_TEMPLATE if self.args.case == "cluster-kill" else SENTINEL_TEMPLATE
        return template.replace("${app}", app)

    def close(self) -> None:
        for topology in (self.sentinel, self.cluster):
            if topology is not None:
                topology.close()

    def server_version(self) -> str:
        node = (self.sentinel or self.cluster).nodes[0]  # type: ignore[union-attr]
        return node.version

    async def disrupt(self, timeline: Timeline) -> Address:
        """Fail over; returns the address of the master that took over."""
        timeline.disruption = time.monotonic()
        timeline.disruption_wall = time.time()
        if self.sentinel is not None:
            old = self.sentinel.master_address()
            self.details["old_master"] = address_text(old)
            if self.args.case == "planned":
                new = await asyncio.to_thread(self.sentinel.failover)
            else:
                self.details["replica_behind_bytes"] = self._behind()
                self.victim = await asyncio.to_thread(self.sentinel.kill_primary)
                new = await asyncio.to_thread(self.sentinel.wait_for_master_change, old)
        else:
            assert self.cluster is not None
            assert self.victim is not None
            self.details["old_master"] = address_text(self.victim.address)
            await asyncio.to_thread(self.cluster.kill, self.victim)
            new = (await asyncio.to_thread(self.cluster.wait_for_takeover, self.victim)).address
        timeline.promoted = time.monotonic()
        self.details["new_master"] = address_text(new)
        return new

    def _behind(self) -> int | None:
        assert self.sentinel is not None
        with contextlib.suppress(Exception):
            offsets = self.sentinel.replica_offsets()
            return self.sentinel.master_offset() - min(offsets.values())
        return None

    def restart_victim(self, timeline: Timeline) -> None:
        """Start the killed primary again (in the main thread: it must outlive the call)."""
        if self.victim is None or self.victim.running:
            return
        topology = self.sentinel or self.cluster
        assert topology is not None
        topology.restart(self.victim)
        timeline.restarted = time.monotonic()

    def final_master(self) -> Address:
        if self.sentinel is not None:
            return self.sentinel.master_address()
        assert self.cluster is not None
        return self.cluster.primary_for(self.stream_key(APPS[0])).address


async def run(args: argparse.Namespace, case: Case, harness: Harness) -> dict[str, Any]:
    timeline = Timeline()
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(harness.sample(stop_sampling))
    demotion_stop = threading.Event()
    demotion: asyncio.Future[float | None] | None = None
    try:
        await harness.set_rate(args.rate)
        timeline.generation_started = time.monotonic()
        await asyncio.sleep(args.warmup)
        old = case.sentinel.master_address() if case.sentinel is not None else None
        if args.case == "planned" and old is not None:
            demotion = asyncio.ensure_future(asyncio.to_thread(watch_demotion, old, demotion_stop))
        await case.disrupt(timeline)
        if args.case != "planned":
            await asyncio.sleep(max(0.0, timeline.promoted + args.restart_after - time.monotonic()))
            case.restart_victim(timeline)
        await asyncio.sleep(max(0.0, timeline.disruption + args.after - time.monotonic()))
        await harness.set_rate(0)
        timeline.generation_stopped = time.monotonic()
        if await harness.drained(args.drain_timeout):
            timeline.drained = time.monotonic()
        if demotion is not None:
            demotion_stop.set()
            timeline.old_primary_demoted = await demotion
    finally:
        demotion_stop.set()
        stop_sampling.set()
        await sampler
    state = await harness.sim_state()
    ledger = await harness.ledger()
    await harness.stop()
    master = case.final_master()
    counts, times = await asyncio.to_thread(read_streams, master)
    return report(args, case, harness, timeline, ledger, state, counts, times)


def report(
    args: argparse.Namespace,
    case: Case,
    harness: Harness,
    t: Timeline,
    ledger: dict[str, Any],
    state: dict[str, Any],
    counts: Counter[str],
    times: list[int],
) -> dict[str, Any]:
    handed_out: dict[str, float] = {}
    for response in ledger["responses"]:
        for message_id in response["messageIds"]:
            handed_out[message_id] = response["at"]
    lost = [m for m in handed_out if m not in counts]
    doubled = sum(1 for n in counts.values() if n > 1)
    lost_at = sorted(handed_out[m] - t.disruption_wall for m in lost)
    window = (t.disruption_wall - 5) * 1000, t.disruption_wall * 1000 + args.after * 1000
    inside = [ms for ms in times if window[0] <= ms <= window[1]]
    gap = max((b - a for a, b in itertools.pairwise(inside)), default=0) / 1000
    s = harness.samples

    def since(moment: float | None) -> float | None:
        return None if moment is None else round(moment - t.disruption, 2)

    result: dict[str, Any] = {
        "case": args.case,
        "rate": args.rate,
        "durability": args.durability,
        "no_replica": args.no_replica,
        "server": case.server_version(),
        "handed_out": len(handed_out),
        "in_streams": len(counts),
        "lost": len(lost),
        "doubled": doubled,
        "not_handed_out_but_in_streams": sum(1 for m in counts if m not in handed_out),
        "stall_s": round(s.longest_flat(t.disruption, t.generation_stopped), 2),
        "baseline_stall_s": round(s.longest_flat(t.generation_started + 2, t.disruption), 2),
        "surviving_gap_s": round(gap, 2),
        "lost_handed_out_s": [round(lost_at[0], 2), round(lost_at[-1], 2)] if lost else None,
        "promoted_after_s": since(t.promoted),
        "restarted_after_s": since(t.restarted),
        "drained": t.drained is not None,
        "drain_s": None if t.drained is None else round(t.drained - t.generation_stopped, 2),
        "inbox_left": state["inboxDepth"],
        "spool_rows_left": s.spool[-1] if s.spool else None,
        "spool_rows_peak": max(s.spool, default=None),
        "poller_exit": harness.poller_exit,
        "poller_warnings": harness.log_events(),
        **case.details,
        "workdir": str(case.workdir),
    }
    if args.case == "planned":
        result["old_primary_demoted_after_s"] = since(t.old_primary_demoted)
        before = s.written_at(t.promoted)
        after = s.written_at(t.old_primary_demoted) if t.old_primary_demoted else None
        result["written_between_promotion_and_demotion"] = (
            None if before is None or after is None else int(after - before)
        )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--case", choices=("planned", "kill-lagging", "cluster-kill"), required=True
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="messages/s (default 1000)")
    parser.add_argument("--durability", choices=("auto", "none", "wait"), default="auto")
    parser.add_argument(
        "--no-replica",
        choices=("wait", "degrade"),
        default="wait",
        help="POLLER_REDIS__NO_REPLICA (durability=auto with no replica left)",
    )
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the disruption")
    parser.add_argument(
        "--after", type=float, default=25.0, help="seconds of generation after the disruption"
    )
    parser.add_argument("--lag", type=float, default=0.5, help="replica delay (kill-lagging), s")
    parser.add_argument(
        "--restart-after",
        type=float,
        default=5.0,
        help="seconds after the promotion before the killed primary is started again",
    )
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept; default: a temp dir")
    parser.add_argument(
        "--expect-no-loss", action="store_true", help="exit 1 when a message is lost or doubled"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"failover-{args.case}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {workdir}", file=sys.stderr, flush=True)
    case = Case(args, workdir)
    try:
        redis_env = case.start()
        harness = Harness(args, workdir, redis_env)

        async def go() -> dict[str, Any]:
            try:
                await harness.start()
                return await run(args, case, harness)
            finally:
                await harness.stop()

        result = asyncio.run(go())
    except TopologyError as exc:
        print(f"failover: {exc}", file=sys.stderr)
        return 2
    finally:
        case.close()
    text = json.dumps(result, indent=2)
    (workdir / "report.json").write_text(text + "\n")
    print(text)
    if args.expect_no_loss and (result["lost"] or result["doubled"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
