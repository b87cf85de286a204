"""Soak and chaos run: the independent harness an operator would point at `poller run`.

Run: python tests/benchmarks/soak_chaos.py [--minutes 3] [--seed 7] [--rate 200] [--forward]

An in-process Infobip simulator generates messages steadily over four applications (the
poller is configured with three of them: the fourth must still reach its own stream), an
embedded Redis of its own, and `poller run` as a subprocess (settings from the environment,
health server on a free loopback port, a short schedule interval). During the run, at random
moments drawn from the seed and bounded in count:

- the poller is SIGKILLed and restarted, or SIGTERMed (must exit 0) and restarted;
- Redis is killed for a few seconds and restarted on the same port and data directory;
- the pull endpoint misbehaves for short windows, by rate: 429 with Retry-After, 500, 503,
  latency, truncated bodies, dropped connections, invalid JSON.

At the end generation stops, the poller drains, gets a SIGTERM, and the simulator's ledger is
compared with every stream of the key template (`id` field) and with the dead-letter streams.
A message that is not in a stream is put in one class, after the response it went out in:

  (a) the response was cut or corrupted by an injected fault: its whole items should be in
      the streams and the rest of what arrived in a dead-letter stream;
  (b) the response went out within --kill-window seconds before a SIGKILL, and what is missing
      of it is its end: the one window a destructive read leaves (bytes still in the socket,
      which never reached the process; every whole item that did is in the journal);
  (c) anything else: a real loss.

`--in-flight-kills N` adds N SIGKILLs aimed at that window (half of one pull's answer sent,
the rest held back by the simulator's stall fault): each must show up as one response in class
(b) whose first half is in the streams, which checks the harness as much as the poller.

`--forward` receives the four applications by HTTP forward instead of pulling them: bootstrap
gives the three configured ones an HTTP_FORWARD action to `poller run`'s receiver (public URL
on loopback, the token as a path segment), the fourth is pointed there by hand
(Simulator.configure_forward; the receiver writes any application's messages to its stream),
and the simulator POSTs every message there, retrying until a 2xx however long it takes. The
same kills and Redis outages; the fault windows are forward faults instead: forward_drop (the
request sent, its answer never read: the 2xx lost on the way back), forward_delay,
forward_duplicate (a delivered batch sent once more). The receiver answers 2xx only after the
fsync and nothing is read destructively, so there are no classes here: every message the
simulator created must be in its stream exactly once (a repeated delivery is skipped by the
dedupe window), the spool and the dead-letter streams empty, nothing given up.

The exit status is 1 on any problem the report lists: a message written twice or never handed
out, a class (c) loss, a spoiled body that left nothing in the dead-letter streams, rows left in
the spool, a drain that did not finish, a SIGTERM that did not end in exit 0, a poller that
exited by itself, an empty stream for the unconfigured application. Every log (one file per
poller process, the Redis log, events.jsonl, report.json) stays in the work directory, printed
at the start and the end. All traffic stays on loopback.

The poller subprocess runs the `poller` package this script imports (the report names it). To
soak one commit while the tree changes: `git archive COMMIT | tar -x -C DIR`, then run the
script with PYTHONPATH=DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from redis.asyncio import Redis

import poller as poller_package
from poller import logs
from poller.devtools.embedded import EmbeddedRedis, free_port
from poller.devtools.simulator import FAULT_KINDS as SIMULATOR_FAULT_KINDS
from poller.devtools.simulator import ForwarderSettings, LedgerEntry, Simulator
from poller.settings import Settings
from tests.support import make_settings, poller_command, settings_env

APPS = ("soak-alpha", "soak-beta", "soak-gamma", "soak-delta")
CONFIGURED = APPS[:3]  # soak-delta is routed to the inbox but not in the poller's settings
KEY_TEMPLATE = "infobip:push:{${app}}:mo"
INBOX_PATH = "/push/1/inbox/reports"
FAULT_KINDS = ("429", "500", "503", "latency", "truncated", "drop", "invalid_json")
# Faults that hand the messages out and then spoil the response (the simulator's SPOILING).
SPOILING = frozenset({"truncated", "drop", "invalid_json", "wrong_types", "oversized"})
WARMUP = 8.0  # seconds of plain traffic before the first disruption
COOLDOWN = 8.0  # and after the last one starts
STOP_TIMEOUT_MARGIN = 20.0  # beyond the poller's grace period, before a SIGTERM is given up
MAX_UNEXPECTED_RESTARTS = 10
XRANGE_PAGE = 5000


def now() -> float:
    return time.time()


async def sleep_until(at: float) -> None:
    delay = at - now()
    if delay > 0:
        await asyncio.sleep(delay)


class Journal:
    """What the harness did and when, kept in events.jsonl and in memory for the report."""

    def __init__(self, path: Path, verbose: bool) -> None:
        self.path = path
        self.verbose = verbose
        self.started = now()
        self.events: list[dict[str, Any]] = []

    def add(self, event: str, **fields: Any) -> dict[str, Any]:
        at = now()
        record = {"t": round(at - self.started, 3), "at": at, "event": event, **fields}
        self.events.append(record)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        if self.verbose:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            print(f"[{record['t']:8.1f}s] {event} {extra}".rstrip(), flush=True)
        return record


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> metric name -> sum over its samples."""
    out: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[head.split("{", 1)[0]] += float(value)
    return dict(out)


class PollerProcess:
    """`poller run` as a subprocess; every start, stop and kill goes through its lock."""

    def __init__(self, settings: Settings, workdir: Path, journal: Journal) -> None:
        self.settings = settings
        self.env = settings_env(settings)
        self.workdir = workdir
        self.journal = journal
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()
        self.starts = 0
        self.restarts: Counter[str] = Counter()
        self.kill_times: list[float] = []
        self.term_times: list[float] = []
        self.sigterm_results: list[dict[str, Any]] = []
        self.unexpected_exits: list[dict[str, Any]] = []
        self.gave_up = False
        self.base = f"http://127.0.0.1:{settings.health.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_path(self, n: int) -> Path:
        return self.workdir / f"poller-{n:02d}.log"

    async def start(self, reason: str) -> None:
        self.starts += 1
        if reason != "initial":
            self.restarts[reason] += 1
        with self.log_path(self.starts).open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *poller_command("run"),
                env=self.env,
                cwd=self.workdir,  # no stray .env from the caller's directory
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.journal.add("poller start", n=self.starts, pid=self.proc.pid, reason=reason)

    async def _wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            async with asyncio.timeout(timeout):
                return await self.proc.wait()
        except TimeoutError:
            return None

    async def get(self, path: str) -> httpx.Response | None:
        try:
            async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
                return await client.get(self.base + path)
        except httpx.HTTPError:
            return None

    async def wait_live(self, timeout: float) -> bool:
        """True once /livez answers 200 (the signal handlers are installed by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            response = await self.get("/livez")
            if response is not None and response.status_code == 200:
                return True
            await asyncio.sleep(0.1)
        return False

    async def metrics(self) -> dict[str, float] | None:
        response = await self.get("/metrics")
        if response is None or response.status_code != 200:
            return None
        return parse_metrics(response.text)

    async def sigkill(self, downtime: float) -> None:
        async with self.lock:
            if self.running:
                assert self.proc is not None
                self.kill_times.append(now())
                self.proc.send_signal(signal.SIGKILL)
                self.journal.add("poller SIGKILL", pid=self.proc.pid)
                await self._wait_exit(10.0)
            await asyncio.sleep(downtime)
            await self.start("sigkill")

    async def sigterm(self, downtime: float | None) -> int | None:
        """SIGTERM and wait; restart after downtime unless it is None. Returns the exit code."""
        async with self.lock:
            code: int | None = None
            if self.running:
                assert self.proc is not None
                live = await self.wait_live(30.0)
                started = now()
                self.term_times.append(started)
                self.proc.send_signal(signal.SIGTERM)
                self.journal.add("poller SIGTERM", pid=self.proc.pid, live_before=live)
                code = await self._wait_exit(self.settings.schedule.grace_period + 20.0)
                seconds = round(now() - started, 3)
                if code is None:
                    # Given up: from here on this is a SIGKILL, with the same loss window.
                    self.kill_times.append(now())
                    self.proc.kill()
                    await self._wait_exit(10.0)
                self.sigterm_results.append({"exit_code": code, "seconds": seconds})
                self.journal.add("poller exited", exit_code=code, seconds=seconds)
            if downtime is not None:
                await asyncio.sleep(downtime)
                await self.start("sigterm")
            return code

    async def revive(self) -> bool:
        """Restart a poller that exited on its own, and record it; False once given up."""
        async with self.lock:
            if self.running or self.proc is None:
                return True
            if self.gave_up:
                return False
            code = self.proc.returncode
            self.unexpected_exits.append({"at": now(), "exit_code": code, "n": self.starts})
            self.journal.add("poller exited by itself", exit_code=code, n=self.starts)
            if len(self.unexpected_exits) > MAX_UNEXPECTED_RESTARTS:
                self.gave_up = True
                self.journal.add(
                    "giving up restarting the poller", log=str(self.log_path(self.starts))
                )
                return False
            await asyncio.sleep(1.0)
            await self.start("unexpected-exit")
            return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Revive the poller whenever it exited without being told to (bounded in count)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
            if not stop.is_set() and not await self.revive():
                return

    async def kill_quietly(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            await self._wait_exit(10.0)


@dataclass
class FaultWindow:
    kind: str
    start: float  # offset from the start of traffic, seconds
    length: float
    rate: float
    params: dict[str, Any] = field(default_factory=dict)
    began_at: float = 0.0
    ended_at: float = 0.0
    fired: int = 0


@dataclass
class Plan:
    """Every disruption of the run, drawn from the seed before traffic starts."""

    process: list[tuple[str, float, float]]  # (sigkill|sigterm, offset, downtime)
    redis: list[tuple[float, float]]  # (offset, downtime)
    faults: list[FaultWindow]


def _slots(
    rng: random.Random, n: int, begin: float, end: float, lo: float, hi: float
) -> list[tuple[float, float]]:
    """n non-overlapping (start, length) windows, one in each equal slice of [begin, end)."""
    if n <= 0 or end <= begin:
        return []
    width = (end - begin) / n
    out = []
    for i in range(n):
        length = min(rng.uniform(lo, hi), width * 0.8)
        out.append((begin + i * width + rng.uniform(0.0, width - length), length))
    return out


def fault_params(rng: random.Random, kind: str) -> tuple[float, dict[str, Any]]:
    """A rate and parameters for one fault window of that kind."""
    if kind == "429":
        params: dict[str, Any] = {"retry_after": rng.randint(1, 2)}
        if rng.random() < 0.3:
            params["retry_after_date"] = True
        return rng.uniform(0.3, 0.7), params
    if kind == "503":
        return rng.uniform(0.3, 0.6), {"retry_after": 1} if rng.random() < 0.5 else {}
    if kind == "500":
        return rng.uniform(0.3, 0.6), {}
    if kind == "latency":
        # Below the read timeout (5 s): a slow answer, not a timed-out one.
        return rng.uniform(0.3, 0.8), {"delay": round(rng.uniform(0.2, 3.0), 2)}
    if kind == "forward_drop":
        # The POST goes out, its answer is never read: at once, or while the receiver works.
        drop: dict[str, Any] = {}
        if rng.random() < 0.5:
            drop["delay"] = round(rng.uniform(0.0, 0.05), 3)
        return rng.uniform(0.1, 0.3), drop
    if kind == "forward_delay":
        return rng.uniform(0.3, 0.8), {"delay": round(rng.uniform(0.2, 3.0), 2)}
    if kind == "forward_duplicate":
        return rng.uniform(0.2, 0.5), {}
    return rng.uniform(0.1, 0.3), {}  # truncated, drop, invalid_json: each one quarantines


def make_plan(
    args: argparse.Namespace,
    rng: random.Random,
    seconds: float,
    fault_set: tuple[str, ...] = FAULT_KINDS,
    kill_until: float | None = None,
) -> Plan:
    """Draw the run's disruptions; ``kill_until`` (an offset, s) ends the kills and SIGTERMs
    there, leaving the rest of the run to one poller process (Redis outages and faults go on)."""

    def count(explicit: int | None, per_minute: float, cap: int, least: int = 1) -> int:
        if explicit is not None:
            return max(0, explicit)
        return int(min(cap, max(least, round(per_minute * args.minutes))))

    kills = count(args.sigkills, 1.5, 20)
    terms = count(args.sigterms, 0.75, 10)
    outages = count(args.redis_kills, 0.75, 10)
    windows = count(args.fault_windows, 4.0, 40, least=len(fault_set))
    begin, end = WARMUP, max(WARMUP + 1.0, seconds - COOLDOWN)
    kill_end = end if kill_until is None else max(begin + 1.0, min(end, kill_until))
    kinds = ["sigkill"] * kills + ["sigterm"] * terms + ["sigkill-in-flight"] * args.in_flight_kills
    rng.shuffle(kinds)
    process = [
        (kind, start, length)
        for kind, (start, length) in zip(
            kinds, _slots(rng, len(kinds), begin, kill_end, 0.2, 2.0), strict=True
        )
    ]
    redis = _slots(rng, outages, begin, end, 2.0, 6.0)
    # Every kind once before any repeats, in a seeded order.
    fault_kinds: list[str] = []
    while len(fault_kinds) < windows:
        batch = list(fault_set)
        rng.shuffle(batch)
        fault_kinds.extend(batch)
    faults = []
    for kind, (start, length) in zip(
        fault_kinds, _slots(rng, windows, begin, end, 3.0, 10.0), strict=False
    ):
        rate, params = fault_params(rng, kind)
        faults.append(FaultWindow(kind, start, length, round(rate, 3), params))
    return Plan(process, redis, faults)


async def kill_in_flight(sim: Simulator, poller: PollerProcess, downtime: float) -> None:
    """Provoke the window (b) describes: send half of one pull's answer, hold the rest (the
    simulator's stall fault), and SIGKILL the poller while it waits for it. The half that
    arrived must be found in the streams after the restart; only the tail may be missing."""
    before = len(sim.ledger.entries)
    sim.add_fault("stall", count=1, path=INBOX_PATH, delay=5.0)
    poller.journal.add("stall armed for an in-flight SIGKILL")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        entries = sim.ledger.entries
        if len(entries) > before and entries[-1].written is None:
            poller.journal.add("answer held", response=entries[-1].n)
            await asyncio.sleep(0.3)
            break
        await asyncio.sleep(0.02)
    await poller.sigkill(downtime)


async def process_chaos(sim: Simulator, poller: PollerProcess, plan: Plan, t0: float) -> None:
    for kind, start, downtime in plan.process:
        await sleep_until(t0 + start)
        if kind == "sigkill":
            await poller.sigkill(downtime)
        elif kind == "sigkill-in-flight":
            await kill_in_flight(sim, poller, downtime)
        else:
            await poller.sigterm(downtime)


async def redis_chaos(redis: EmbeddedRedis, plan: Plan, t0: float, journal: Journal) -> None:
    for start, downtime in plan.redis:
        await sleep_until(t0 + start)
        await asyncio.to_thread(redis.kill)
        journal.add("redis SIGKILL", down_for=round(downtime, 2))
        await asyncio.sleep(downtime)
        await asyncio.to_thread(redis.restart)
        journal.add("redis up", port=redis.port)


async def fault_chaos(
    sim: Simulator, plan: Plan, t0: float, journal: Journal, path: str = INBOX_PATH
) -> None:
    for window in plan.faults:
        await sleep_until(t0 + window.start)
        sim.add_fault(window.kind, rate=window.rate, path=path, **window.params)
        window.began_at = now()
        journal.add("fault on", kind=window.kind, rate=window.rate, **window.params)
        try:
            await asyncio.sleep(window.length)
        finally:
            window.fired = sum(int(f["fired"]) for f in sim.faults.snapshot())
            sim.clear_faults()
            window.ended_at = now()
        journal.add("fault off", kind=window.kind, fired=window.fired)


async def progress(
    sim: Simulator, poller: PollerProcess, journal: Journal, every: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()
        if stop.is_set():
            return
        m = await poller.metrics() or {}
        spool = m.get("poller_spool_rows")
        print(
            f"[{now() - journal.started:8.1f}s] handed out {sim.ledger.handed_out}, inbox "
            f"{sim.inbox_depth}, spool {'-' if spool is None else int(spool)}, poller #"
            f"{poller.starts} {'up' if poller.running else 'down'}",
            flush=True,
        )


async def drain(
    sim: Simulator, poller: PollerProcess, timeout: float
) -> tuple[bool, float, dict[str, Any]]:
    """Wait until the inbox is empty, the ledger settled, and a good cycle after the last pull
    left the spool empty. Returns (drained, seconds, last observation)."""
    started = now()
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        entries = sim.ledger.entries
        last_at = entries[-1].at if entries else 0.0
        m = await poller.metrics()
        seen = {
            "inbox": sim.inbox_depth,
            "ledger_settled": sim.ledger.settled(),
            "spool_rows": None if m is None else m.get("poller_spool_rows"),
            "last_good_poll_after_last_pull": None
            if m is None
            else m.get("poller_last_successful_poll_timestamp_seconds", 0.0) > last_at,
        }
        if (
            seen["inbox"] == 0
            and seen["ledger_settled"]
            and seen["spool_rows"] == 0
            and seen["last_good_poll_after_last_pull"]
        ):
            return True, now() - started, seen
        if not poller.running and not await poller.revive():
            break
        await asyncio.sleep(0.2)
    return False, now() - started, seen


async def read_streams(url: str) -> tuple[Counter[str], Counter[str], list[dict[str, Any]]]:
    """(id -> entries carrying it, app -> entries, dead-letter entries) over the template."""
    counts: Counter[str] = Counter()
    per_app: Counter[str] = Counter()
    dead: list[dict[str, Any]] = []
    pattern = KEY_TEMPLATE.replace("${app}", "*")
    redis = Redis.from_url(url)
    try:
        for match, is_dead in ((pattern, False), (pattern + ":dead", True)):
            async for raw_key in redis.scan_iter(match=match, _type="stream", count=1000):
                key = raw_key.decode()
                if key.endswith(":dead") != is_dead:
                    continue
                pages = int(await redis.xlen(key)) // XRANGE_PAGE + 2
                start = "-"
                for _ in range(pages):
                    batch: list[Any] = list(
                        await redis.xrange(key, min=start, count=XRANGE_PAGE) or []
                    )
                    for _entry_id, fields in batch:
                        values = {_decode(k): v for k, v in fields.items()}
                        if is_dead:
                            dead.append({"key": key, **values})
                        else:
                            counts[_decode(values["id"])] += 1
                            per_app[_decode(values["app"])] += 1
                    if len(batch) < XRANGE_PAGE:
                        break
                    start = "(" + _decode(batch[-1][0])
    finally:
        await redis.aclose()
    return counts, per_app, dead


def read_spool(path: Path) -> dict[str, Any]:
    """Rows left in the spool file (read-only; the poller has exited) and quarantined raws."""
    if not path.exists():
        return {"messages": None, "quarantine_total": None, "quarantine_pending": None, "raw": []}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        total, pending = conn.execute(
            "SELECT count(*), coalesce(sum(dead_lettered = 0), 0) FROM quarantine"
        ).fetchone()
        raws = [bytes(row[0]) for row in conn.execute("SELECT raw FROM quarantine")]
    finally:
        conn.close()
    return {
        "messages": messages,
        "quarantine_total": total,
        "quarantine_pending": pending,
        "raw": raws,
    }


def nearest(times: list[float], at: float) -> float | None:
    """Seconds from at to the first of times at or after it (None when none is)."""
    after = [t - at for t in times if t >= at]
    return round(min(after), 3) if after else None


def _is_tail(lost: list[str], ids: list[str]) -> bool:
    """True when ``lost`` is the end of ``ids``: what a cut at one point leaves out."""
    return bool(lost) and ids[len(ids) - len(lost) :] == lost


def classify(
    entries: list[LedgerEntry],
    counts: Counter[str],
    kill_times: list[float],
    term_times: list[float],
    window: float,
    dead_text: str,
    quarantine_text: str,
    t0: float,
) -> dict[str, Any]:
    """Put every missing message in class a, b or c after the response it went out in."""
    a: list[dict[str, Any]] = []
    b: list[dict[str, Any]] = []
    c: list[dict[str, Any]] = []
    for entry in entries:
        lost = [mid for mid in entry.message_ids if mid not in counts]
        if not lost:
            continue
        near_kill = nearest(kill_times, entry.at)
        record: dict[str, Any] = {
            "response": entry.n,
            "t": round(entry.at - t0, 3),
            "messages": len(entry.message_ids),
            "missing": len(lost),
            "fault": entry.fault,
            "written": entry.written,
            "next_sigkill_after_s": near_kill,
            "next_sigterm_after_s": nearest(term_times, entry.at),
        }
        if entry.fault in SPOILING:
            in_dead = sum(1 for mid in lost if mid in dead_text)
            in_quarantine = sum(1 for mid in lost if mid in quarantine_text)
            record.update(raw_in_dead_letter=in_dead, raw_in_quarantine=in_quarantine)
            a.append(record)
        elif near_kill is not None and near_kill < window and _is_tail(lost, entry.message_ids):
            # A kill takes what had not reached the process: the end of an answer, never
            # items in its middle (the journal keeps every whole item that arrived).
            record["kept_of_it"] = len(entry.message_ids) - len(lost)
            b.append(record)
        else:
            if len(lost) < len(entry.message_ids):
                record["note"] = "lost in the middle of an answer: a kill cannot explain that"
            record["missing_ids"] = lost[:20]
            c.append(record)
    # A spoiled body of which nothing reached a stream (its whole items are kept) or a
    # dead-letter stream (the rest), with no kill to explain it.
    untraced = [
        r
        for r in a
        if r["fault"] in ("truncated", "invalid_json")
        and r["missing"] == r["messages"]
        and r["raw_in_dead_letter"] == 0
        and not (r["next_sigkill_after_s"] is not None and r["next_sigkill_after_s"] < window)
    ]
    by_fault: Counter[str] = Counter()
    for r in a:
        by_fault[str(r["fault"])] += r["missing"]
    return {
        "a_fault": {
            "messages": sum(r["missing"] for r in a),
            "responses": len(a),
            "by_fault": dict(by_fault),
            "raw_in_dead_letter": sum(r["raw_in_dead_letter"] for r in a),
            "raw_in_quarantine": sum(r["raw_in_quarantine"] for r in a),
            "cut_away": sum(r["missing"] - r["raw_in_dead_letter"] for r in a),
            "untraced_responses": untraced,
        },
        "b_sigkill_window": {
            "messages": sum(r["missing"] for r in b),
            "responses": len(b),
            "kept_of_them": sum(r["kept_of_it"] for r in b),
            "details": b,
        },
        "c_real_loss": {
            "messages": sum(r["missing"] for r in c),
            "responses": len(c),
            "details": c,
        },
    }


@dataclass
class Stage:
    """What a probe may watch while traffic flows."""

    sim: Simulator
    redis: EmbeddedRedis
    poller: PollerProcess
    settings: Settings
    t0: float


class Probe(Protocol):
    """Watches a run (soak.py samples the poller's resources): started once traffic is on,
    stopped after the drain and before the final SIGTERM (and again, harmlessly, on an error)."""

    async def start(self, stage: Stage) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Observed:
    """Everything the run saw, for the report."""

    sim: Simulator
    redis_version: str
    poller: PollerProcess
    plan: Plan
    journal: Journal
    handed: list[str]
    counts: Counter[str]
    per_app: Counter[str]
    dead: list[dict[str, Any]]
    spool: dict[str, Any]
    classes: dict[str, Any]
    drained: bool
    drain_seconds: float
    drain_seen: dict[str, Any]
    backlog: int
    final_code: int | None
    t0: float
    stopped_at: float


def _decode(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def run(
    args: argparse.Namespace, workdir: Path, probe: Probe | None = None
) -> dict[str, Any]:
    journal = Journal(workdir / "events.jsonl", args.verbose)
    rng = random.Random(args.seed)
    seconds = args.minutes * 60.0
    plan = make_plan(args, rng, seconds, kill_until=getattr(args, "kill_until", None))
    sim = Simulator(
        applications=APPS,
        auto_configure=True,
        rate=0.0,
        throttle_rps=args.throttle_rps,
        seed=args.seed,
    )
    redis = EmbeddedRedis(data_dir=workdir / "redis")
    poller: PollerProcess | None = None
    stop = asyncio.Event()
    helpers: list[asyncio.Task[None]] = []
    try:
        await sim.start()
        await asyncio.to_thread(redis.start)
        settings = make_settings(
            sim,
            redis.url,
            workdir,
            KEY_TEMPLATE,
            apps=list(CONFIGURED),
            infobip={"pull_limit": args.pull_limit},
            redis={"socket_timeout": 1.0},
            schedule={"interval": args.interval, "jitter": 0.1},
            health={"enabled": True, "port": free_port()},
        )
        journal.add(
            "setup",
            simulator=sim.base_url,
            redis=redis.url,
            redis_server=redis.version,
            health_port=settings.health.port,
        )
        poller = PollerProcess(settings, workdir, journal)
        await poller.start("initial")
        if not await poller.wait_live(30.0):
            raise RuntimeError(f"poller did not come up; see {poller.log_path(1)}")
        sim.set_rate(args.rate)
        t0 = now()
        journal.add("traffic on", rate=args.rate, seconds=seconds)
        if probe is not None:
            await probe.start(Stage(sim, redis, poller, settings, t0))
        helpers = [
            asyncio.create_task(poller.watch(stop), name="watch"),
            asyncio.create_task(progress(sim, poller, journal, args.progress, stop)),
        ]
        chaos: list[Awaitable[None]] = [
            process_chaos(sim, poller, plan, t0),
            redis_chaos(redis, plan, t0, journal),
            fault_chaos(sim, plan, t0, journal),
            sleep_until(t0 + seconds),
        ]
        # Each disruption is bounded; the whole act gets a generous ceiling all the same.
        async with asyncio.timeout(seconds + 300.0):
            await asyncio.gather(*chaos)
        stop.set()
        await asyncio.gather(*helpers, return_exceptions=True)

        sim.set_rate(0.0)
        sim.clear_faults()
        stopped_at = now()
        backlog = sim.inbox_depth
        journal.add("traffic off", inbox=backlog, handed_out=sim.ledger.handed_out)
        if not redis.running:
            await asyncio.to_thread(redis.restart)
        drained, drain_seconds, seen = await drain(sim, poller, args.drain_timeout)
        journal.add("drain", drained=drained, seconds=round(drain_seconds, 2), **seen)
        if probe is not None:
            await probe.stop()
        final_code = await poller.sigterm(None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                await sim.ledger.wait_settled()

        counts, per_app, dead = await read_streams(redis.url)
        spool = read_spool(settings.spool.path)
        entries = sim.ledger.entries
        handed = sim.ledger.ids()
        dead_text = "\n".join(_decode(d.get("raw", b"")) for d in dead)
        quarantine_text = "\n".join(r.decode("utf-8", "replace") for r in spool.pop("raw"))
        classes = classify(
            entries,
            counts,
            poller.kill_times,
            poller.term_times,
            args.kill_window,
            dead_text,
            quarantine_text,
            t0,
        )
        return build_report(
            args,
            workdir,
            Observed(
                sim=sim,
                redis_version=redis.version,
                poller=poller,
                plan=plan,
                journal=journal,
                handed=handed,
                counts=counts,
                per_app=per_app,
                dead=dead,
                spool=spool,
                classes=classes,
                drained=drained,
                drain_seconds=drain_seconds,
                drain_seen=seen,
                backlog=backlog,
                final_code=final_code,
                t0=t0,
                stopped_at=stopped_at,
            ),
        )
    finally:
        stop.set()
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if probe is not None:
            await probe.stop()
        if poller is not None:
            await poller.kill_quietly()
        await asyncio.to_thread(redis.stop)
        await sim.stop()


def _disruptions(o: Observed | ForwardObserved, redis_down: list[dict[str, Any]]) -> dict[str, Any]:
    """What the run did to the poller and Redis, and the fault windows: both reports' part."""
    return {
        "poller": {
            "starts": o.poller.starts,
            "restarts": sum(o.poller.restarts.values()),
            "restarts_by_reason": dict(o.poller.restarts),
            "sigkills": len(o.poller.kill_times),
            "sigterms": len(o.poller.term_times),
            "sigterm_results": o.poller.sigterm_results,
            "unexpected_exits": o.poller.unexpected_exits,
            "final_exit_code": o.final_code,
        },
        "redis_kills": len(redis_down),
        "redis_downtime_s": round(sum(e["down_for"] for e in redis_down), 2),
        "fault_windows": [
            {k: v for k, v in asdict(w).items() if k not in ("began_at", "ended_at")}
            | {"start": round(w.start, 1), "length": round(w.length, 1)}
            for w in o.plan.faults
        ],
    }


def build_report(args: argparse.Namespace, workdir: Path, o: Observed) -> dict[str, Any]:
    handed_set = set(o.handed)
    duplicates = {mid: n for mid, n in o.counts.items() if n > 1}
    unexpected = [mid for mid in o.counts if mid not in handed_set]
    missing = handed_set - set(o.counts)
    dead_reasons: Counter[str] = Counter()
    for d in o.dead:
        # "connection ended after 123 bytes (...)" -> "connection ended after N bytes"
        reason = _decode(d.get("reason", b"")).split(" (", 1)[0]
        dead_reasons[re.sub(r"[0-9]+", "N", reason)] += 1
    sigterms_mid_run = o.poller.sigterm_results[:-1] if o.final_code is not None else []
    events = o.journal.events
    redis_down = [e for e in events if e["event"] == "redis SIGKILL"]
    report: dict[str, Any] = {
        "seed": args.seed,
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "applications": list(APPS),
        "configured_applications": list(CONFIGURED),
        "pull_limit": args.pull_limit,
        "redis_server": o.redis_version,
        "poller_version": poller_package.__version__,
        "poller_package": str(Path(poller_package.__file__).parent),
        "workdir": str(workdir),
        "handed_out": len(o.handed),
        "handed_out_unique": len(handed_set),
        "responses_with_messages": len(o.sim.ledger.entries),
        "in_streams": len(o.counts),
        "stream_entries": sum(o.counts.values()),
        "per_app_in_streams": dict(sorted(o.per_app.items())),
        "duplicates": len(duplicates),
        "duplicate_entries": sum(n - 1 for n in duplicates.values()),
        "duplicate_ids": sorted(duplicates)[:20],
        "unexpected_ids": len(unexpected),
        "missing": len(missing),
        "missing_by_class": {
            "a_fault": o.classes["a_fault"]["messages"],
            "b_sigkill_window": o.classes["b_sigkill_window"]["messages"],
            "c_real_loss": o.classes["c_real_loss"]["messages"],
        },
        "classes": o.classes,
        "dead_letter": {"entries": len(o.dead), "by_reason": dict(dead_reasons)},
        **_disruptions(o, redis_down),
        "backlog_at_stop": o.backlog,
        "drained": o.drained,
        "time_to_drain_s": round(o.drain_seconds, 2),
        "drain_last_seen": o.drain_seen,
        "spool_left": o.spool,
        "simulator": {
            k: v
            for k, v in o.sim.state().items()
            if k in ("generated", "notRouted", "throttled", "requests", "faultsFired")
        },
    }
    problems = []
    if duplicates:
        problems.append(f"{len(duplicates)} message(s) written more than once")
    if unexpected:
        problems.append(f"{len(unexpected)} id(s) in the streams that were never handed out")
    if o.classes["c_real_loss"]["messages"]:
        problems.append(f"{o.classes['c_real_loss']['messages']} message(s) lost (class c)")
    if o.classes["a_fault"]["untraced_responses"]:
        problems.append("a spoiled response left nothing in the dead-letter streams")
    if not o.drained:
        problems.append(f"the poller did not drain within {args.drain_timeout:g} s")
    if o.spool["messages"] or o.spool["quarantine_pending"]:
        problems.append("rows left in the spool after the final stop")
    if o.final_code != 0:
        problems.append(f"final SIGTERM: exit code {o.final_code}")
    bad_terms = [r for r in sigterms_mid_run if r["exit_code"] != 0]
    if bad_terms:
        problems.append(f"{len(bad_terms)} SIGTERM(s) did not end in exit 0")
    if o.poller.unexpected_exits:
        problems.append(f"the poller exited by itself {len(o.poller.unexpected_exits)} time(s)")
    if CONFIGURED and not o.per_app.get(APPS[-1]):
        problems.append(f"nothing reached the stream of the unconfigured {APPS[-1]}")
    report["problems"] = problems
    report["ok"] = not problems
    return report


def summary(r: dict[str, Any]) -> str:
    c = r["classes"]
    a = c["a_fault"]
    p = r["poller"]
    lines = [
        f"soak/chaos: {r['minutes']:g} min at {r['rate_per_s']:g} msg/s, seed {r['seed']}, "
        f"{r['redis_server']}, poller {r['poller_version']} from {r['poller_package']}",
        f"  work dir        {r['workdir']}",
        f"  handed out      {r['handed_out']} messages in {r['responses_with_messages']} responses",
        f"  in streams      {r['in_streams']} ({r['stream_entries']} entries; per app "
        + ", ".join(f"{k} {v}" for k, v in r["per_app_in_streams"].items())
        + ")",
        f"  duplicates      {r['duplicates']}   unexpected ids {r['unexpected_ids']}",
        f"  missing         {r['missing']}",
        f"    (a) fault     {a['messages']} in {a['responses']} responses "
        f"{a['by_fault']}; raw in dead letters {a['raw_in_dead_letter']}, "
        f"cut away {a['cut_away']}",
        f"    (b) SIGKILL   {c['b_sigkill_window']['messages']} in "
        f"{c['b_sigkill_window']['responses']} responses (their first "
        f"{c['b_sigkill_window']['kept_of_them']} items, which had arrived, are in the streams)",
        f"    (c) LOSS      {c['c_real_loss']['messages']} in "
        f"{c['c_real_loss']['responses']} responses",
        f"  dead letters    {r['dead_letter']['entries']} {r['dead_letter']['by_reason']}",
        f"  poller          {p['starts']} starts, {p['restarts']} restarts "
        f"{p['restarts_by_reason']}, SIGTERM exits "
        f"{[t['exit_code'] for t in p['sigterm_results']]}, "
        f"unexpected exits {len(p['unexpected_exits'])}",
        f"  redis           {r['redis_kills']} kills, {r['redis_downtime_s']} s down",
        f"  faults          {len(r['fault_windows'])} windows: "
        + ", ".join(f"{w['kind']}@{w['rate']:.2f}x{w['fired']}" for w in r["fault_windows"]),
        f"  drain           {'done' if r['drained'] else 'NOT DONE'} in "
        f"{r['time_to_drain_s']} s (backlog at stop {r['backlog_at_stop']})",
        f"  spool left      {r['spool_left']['messages']} rows, "
        f"{r['spool_left']['quarantine_pending']} quarantined not dead-lettered",
        "  result          " + ("OK" if r["ok"] else "FAIL: " + "; ".join(r["problems"])),
    ]
    return "\n".join(lines)


# -- forward mode ------------------------------------------------------------------------------

FORWARD_FAULT_KINDS = ("forward_drop", "forward_delay", "forward_duplicate")
FORWARD_PATH = "/infobip/forward"
FORWARD_TOKEN = "soak-forward-token-0123456789abcdef"  # a loopback test token


async def wait_forward_actions(sim: Simulator, apps: tuple[str, ...], timeout: float) -> bool:
    """True once bootstrap gave every application its HTTP_FORWARD action."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(sim.account.applications[app].forward_action() is not None for app in apps):
            return True
        await asyncio.sleep(0.05)
    return False


async def progress_forward(
    sim: Simulator, poller: PollerProcess, journal: Journal, every: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()
        if stop.is_set():
            return
        m = await poller.metrics() or {}
        spool = m.get("poller_spool_rows")
        counts = sim.ledger.forward_counts()
        print(
            f"[{now() - journal.started:8.1f}s] created {counts['routed']}, acknowledged "
            f"{counts['delivered']}, waiting {counts['pending']}, POSTs {counts['attempts']}, "
            f"spool {'-' if spool is None else int(spool)}, poller #{poller.starts} "
            f"{'up' if poller.running else 'down'}",
            flush=True,
        )


async def drain_forward(
    sim: Simulator, poller: PollerProcess, timeout: float
) -> tuple[bool, float, dict[str, Any]]:
    """Wait until every forwarded message was acknowledged (2xx), no POST is open, and the
    spool is empty after that. Returns (drained, seconds, last observation)."""
    started = now()
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        settled = sim.ledger.forward_settled()
        m = await poller.metrics()
        seen = {
            "forward_queued": sim.forward_depth,
            "forward_settled": settled,
            **sim.ledger.forward_counts(),
            "spool_rows": None if m is None else m.get("poller_spool_rows"),
        }
        if settled and seen["forward_queued"] == 0 and seen["spool_rows"] == 0:
            return True, now() - started, seen
        if not poller.running and not await poller.revive():
            break
        await asyncio.sleep(0.2)
    return False, now() - started, seen


@dataclass
class ForwardObserved:
    """Everything a forward run saw, for the report."""

    sim: Simulator
    redis_version: str
    poller: PollerProcess
    plan: Plan
    journal: Journal
    counts: Counter[str]
    per_app: Counter[str]
    dead: list[dict[str, Any]]
    spool: dict[str, Any]
    drained: bool
    drain_seconds: float
    drain_seen: dict[str, Any]
    backlog: int
    final_code: int | None


async def run_forward(
    args: argparse.Namespace, workdir: Path, probe: Probe | None = None
) -> dict[str, Any]:
    """The forward mode: the simulator POSTs every message to `poller run`'s receiver."""
    journal = Journal(workdir / "events.jsonl", args.verbose)
    rng = random.Random(args.seed)
    seconds = args.minutes * 60.0
    plan = make_plan(
        args, rng, seconds, FORWARD_FAULT_KINDS, kill_until=getattr(args, "kill_until", None)
    )
    # Retried until a 2xx, however long the poller or its receiver is away.
    sim = Simulator(
        applications=APPS,
        auto_configure=False,
        rate=0.0,
        throttle_rps=args.throttle_rps,
        forward=ForwarderSettings(max_attempts=None),
        seed=args.seed,
    )
    redis = EmbeddedRedis(data_dir=workdir / "redis")
    poller: PollerProcess | None = None
    stop = asyncio.Event()
    helpers: list[asyncio.Task[None]] = []
    try:
        await sim.start()
        await asyncio.to_thread(redis.start)
        port = free_port()
        public_url = f"http://127.0.0.1:{port}{FORWARD_PATH}"
        settings = make_settings(
            sim,
            redis.url,
            workdir,
            KEY_TEMPLATE,
            apps=[],
            redis={"socket_timeout": 1.0},
            schedule={"interval": args.interval, "jitter": 0.1},
            health={"enabled": True, "port": free_port()},
            forward={
                "applications": list(CONFIGURED),
                "token": FORWARD_TOKEN,
                "token_in": "path",
                "port": port,
                "public_url": public_url,
            },
        )
        journal.add(
            "setup",
            mode="forward",
            simulator=sim.base_url,
            redis=redis.url,
            redis_server=redis.version,
            health_port=settings.health.port,
            receiver_port=port,
        )
        poller = PollerProcess(settings, workdir, journal)
        await poller.start("initial")
        if not await poller.wait_live(30.0):
            raise RuntimeError(f"poller did not come up; see {poller.log_path(1)}")
        # Bootstrap points the configured applications at the receiver (token as a path
        # segment); the fourth, which the poller does not know, is pointed there by hand.
        if not await wait_forward_actions(sim, CONFIGURED, 30.0):
            raise RuntimeError(f"bootstrap made no HTTP_FORWARD actions; see {poller.log_path(1)}")
        sim.configure_forward(APPS[-1], f"{public_url}/{FORWARD_TOKEN}")
        sim.set_rate(args.rate)
        t0 = now()
        journal.add("traffic on", rate=args.rate, seconds=seconds)
        if probe is not None:
            await probe.start(Stage(sim, redis, poller, settings, t0))
        helpers = [
            asyncio.create_task(poller.watch(stop), name="watch"),
            asyncio.create_task(progress_forward(sim, poller, journal, args.progress, stop)),
        ]
        chaos: list[Awaitable[None]] = [
            process_chaos(sim, poller, plan, t0),
            redis_chaos(redis, plan, t0, journal),
            fault_chaos(sim, plan, t0, journal, FORWARD_PATH),
            sleep_until(t0 + seconds),
        ]
        async with asyncio.timeout(seconds + 300.0):
            await asyncio.gather(*chaos)
        stop.set()
        await asyncio.gather(*helpers, return_exceptions=True)

        sim.set_rate(0.0)
        sim.clear_faults()
        counts_at_stop = sim.ledger.forward_counts()
        backlog = counts_at_stop["pending"]
        journal.add("traffic off", waiting=backlog, created=counts_at_stop["routed"])
        if not redis.running:
            await asyncio.to_thread(redis.restart)
        drained, drain_seconds, seen = await drain_forward(sim, poller, args.drain_timeout)
        journal.add("drain", drained=drained, seconds=round(drain_seconds, 2), **seen)
        if probe is not None:
            await probe.stop()
        final_code = await poller.sigterm(None)

        counts, per_app, dead = await read_streams(redis.url)
        spool = read_spool(settings.spool.path)
        spool.pop("raw")
        return build_forward_report(
            args,
            workdir,
            ForwardObserved(
                sim=sim,
                redis_version=redis.version,
                poller=poller,
                plan=plan,
                journal=journal,
                counts=counts,
                per_app=per_app,
                dead=dead,
                spool=spool,
                drained=drained,
                drain_seconds=drain_seconds,
                drain_seen=seen,
                backlog=backlog,
                final_code=final_code,
            ),
        )
    finally:
        stop.set()
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if probe is not None:
            await probe.stop()
        if poller is not None:
            await poller.kill_quietly()
        await asyncio.to_thread(redis.stop)
        await sim.stop()


def _ms_summary(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p99": None, "max": None}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 1)}


def build_forward_report(
    args: argparse.Namespace, workdir: Path, o: ForwardObserved
) -> dict[str, Any]:
    ledger = o.sim.ledger
    records = ledger.forward_records
    created = set(records)
    duplicates = {mid: n for mid, n in o.counts.items() if n > 1}
    unexpected = [mid for mid in o.counts if mid not in created]
    missing = created - set(o.counts)
    lost_after_ack = sorted(mid for mid in missing if records[mid].delivered)
    never_acked = sorted(mid for mid in missing if not records[mid].delivered)
    attempts = ledger.forward_attempts
    outcomes: Counter[str] = Counter()
    for attempt in attempts:
        if attempt.status is not None:
            outcomes[str(attempt.status)] += 1
        else:
            outcomes[(attempt.error or "open").split(":", 1)[0]] += 1
    acked_posts: Counter[str] = Counter()
    for attempt in attempts:
        if attempt.delivered:
            for mid in attempt.message_ids:
                acked_posts[mid] += 1
    ack_ms = []
    for mid, record in records.items():
        made = ledger.created_at(mid)
        if made is not None and record.acked_monotonic is not None:
            ack_ms.append((record.acked_monotonic - made[0]) * 1000)
    sigterms_mid_run = o.poller.sigterm_results[:-1] if o.final_code is not None else []
    events = o.journal.events
    redis_down = [e for e in events if e["event"] == "redis SIGKILL"]
    counts = ledger.forward_counts()
    report: dict[str, Any] = {
        "mode": "forward",
        "seed": args.seed,
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "applications": list(APPS),
        "forward_applications": list(CONFIGURED),
        "redis_server": o.redis_version,
        "poller_version": poller_package.__version__,
        "poller_package": str(Path(poller_package.__file__).parent),
        "workdir": str(workdir),
        "created": len(created),
        "acknowledged": counts["delivered"],
        "given_up": counts["givenUp"],
        "waiting_at_stop": o.backlog,
        "forward_posts": len(attempts),
        "post_outcomes": dict(outcomes.most_common()),
        "messages_sent_more_than_once": sum(1 for r in records.values() if r.sends > 1),
        "messages_acknowledged_more_than_once": sum(1 for n in acked_posts.values() if n > 1),
        "creation_to_2xx_ms": _ms_summary(ack_ms),
        "in_streams": len(o.counts),
        "stream_entries": sum(o.counts.values()),
        "per_app_in_streams": dict(sorted(o.per_app.items())),
        "duplicates": len(duplicates),
        "duplicate_entries": sum(n - 1 for n in duplicates.values()),
        "duplicate_ids": sorted(duplicates)[:20],
        "unexpected_ids": len(unexpected),
        "missing": len(missing),
        "missing_after_2xx": len(lost_after_ack),
        "missing_after_2xx_ids": lost_after_ack[:20],
        "missing_never_acknowledged": len(never_acked),
        "dead_letter": {"entries": len(o.dead)},
        **_disruptions(o, redis_down),
        "drained": o.drained,
        "time_to_drain_s": round(o.drain_seconds, 2),
        "drain_last_seen": o.drain_seen,
        "spool_left": o.spool,
        "simulator": {
            k: v
            for k, v in o.sim.state().items()
            if k in ("generated", "notRouted", "requests", "faultsFired")
        },
    }
    problems = []
    if duplicates:
        problems.append(f"{len(duplicates)} message(s) written more than once")
    if unexpected:
        problems.append(f"{len(unexpected)} id(s) in the streams that were never created")
    if lost_after_ack:
        problems.append(f"{len(lost_after_ack)} message(s) acknowledged (2xx) and then lost")
    if never_acked:
        problems.append(f"{len(never_acked)} message(s) never acknowledged by the receiver")
    if counts["givenUp"]:
        problems.append(f"the simulator gave up on {counts['givenUp']} message(s)")
    if report["simulator"].get("notRouted"):
        problems.append(f"{report['simulator']['notRouted']} message(s) were not routed")
    if o.dead:
        problems.append(f"{len(o.dead)} dead-letter entries (nothing forwarded is malformed)")
    if not o.drained:
        problems.append(f"the forward did not settle within {args.drain_timeout:g} s")
    if o.spool["messages"] or o.spool["quarantine_pending"]:
        problems.append("rows left in the spool after the final stop")
    if o.final_code != 0:
        problems.append(f"final SIGTERM: exit code {o.final_code}")
    bad_terms = [r for r in sigterms_mid_run if r["exit_code"] != 0]
    if bad_terms:
        problems.append(f"{len(bad_terms)} SIGTERM(s) did not end in exit 0")
    if o.poller.unexpected_exits:
        problems.append(f"the poller exited by itself {len(o.poller.unexpected_exits)} time(s)")
    if not o.per_app.get(APPS[-1]):
        problems.append(f"nothing reached the stream of the unconfigured {APPS[-1]}")
    report["problems"] = problems
    report["ok"] = not problems
    return report


def summary_forward(r: dict[str, Any]) -> str:
    p = r["poller"]
    ack = r["creation_to_2xx_ms"]
    lines = [
        f"soak/chaos (forward): {r['minutes']:g} min at {r['rate_per_s']:g} msg/s, seed "
        f"{r['seed']}, {r['redis_server']}, poller {r['poller_version']} from "
        f"{r['poller_package']}",
        f"  work dir        {r['workdir']}",
        f"  created         {r['created']} messages, acknowledged {r['acknowledged']}, "
        f"given up {r['given_up']} (waiting at the stop {r['waiting_at_stop']})",
        f"  POSTs           {r['forward_posts']} {r['post_outcomes']}",
        f"  repeated        {r['messages_sent_more_than_once']} messages sent more than once, "
        f"{r['messages_acknowledged_more_than_once']} acknowledged more than once",
        f"  creation->2xx   p50 {ack['p50']} ms, p99 {ack['p99']} ms, max {ack['max']} ms",
        f"  in streams      {r['in_streams']} ({r['stream_entries']} entries; per app "
        + ", ".join(f"{k} {v}" for k, v in r["per_app_in_streams"].items())
        + ")",
        f"  duplicates      {r['duplicates']}   unexpected ids {r['unexpected_ids']}",
        f"  missing         {r['missing']} (after a 2xx {r['missing_after_2xx']}, never "
        f"acknowledged {r['missing_never_acknowledged']})",
        f"  dead letters    {r['dead_letter']['entries']}",
        f"  poller          {p['starts']} starts, {p['restarts']} restarts "
        f"{p['restarts_by_reason']}, SIGTERM exits "
        f"{[t['exit_code'] for t in p['sigterm_results']]}, "
        f"unexpected exits {len(p['unexpected_exits'])}",
        f"  redis           {r['redis_kills']} kills, {r['redis_downtime_s']} s down",
        f"  faults          {len(r['fault_windows'])} windows: "
        + ", ".join(f"{w['kind']}@{w['rate']:.2f}x{w['fired']}" for w in r["fault_windows"]),
        f"  drain           {'done' if r['drained'] else 'NOT DONE'} in "
        f"{r['time_to_drain_s']} s (waiting at stop {r['waiting_at_stop']})",
        f"  spool left      {r['spool_left']['messages']} rows, "
        f"{r['spool_left']['quarantine_pending']} quarantined not dead-lettered",
        "  result          " + ("OK" if r["ok"] else "FAIL: " + "; ".join(r["problems"])),
    ]
    return "\n".join(lines)


def build_parser(description: str = __doc__.split("\n", 1)[0]) -> argparse.ArgumentParser:
    """The harness's options (soak.py adds its own and changes some defaults)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--minutes", type=float, default=3.0, help="traffic time (default 3)")
    parser.add_argument("--seed", type=int, default=7, help="draws every disruption")
    parser.add_argument("--rate", type=float, default=200.0, help="messages/s (default 200)")
    parser.add_argument("--pull-limit", type=int, default=100, help="POLLER_INFOBIP__PULL_LIMIT")
    parser.add_argument("--interval", type=float, default=0.5, help="schedule interval, s")
    parser.add_argument("--throttle-rps", type=float, default=10.0, help="simulator throttle")
    parser.add_argument("--sigkills", type=int, help="default 1.5 per minute")
    parser.add_argument("--sigterms", type=int, help="default 0.75 per minute")
    parser.add_argument("--redis-kills", type=int, help="default 0.75 per minute")
    parser.add_argument(
        "--fault-windows", type=int, help="default 4 per minute, at least one of each kind"
    )
    parser.add_argument(
        "--in-flight-kills",
        type=int,
        default=0,
        help="extra SIGKILLs while a pull's answer is held (slow_answer): provoke class (b)",
    )
    parser.add_argument("--kill-window", type=float, default=2.0, help="class (b) window, s")
    parser.add_argument(
        "--forward",
        action="store_true",
        help="the applications are received by HTTP forward instead of pulled",
    )
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds")
    parser.add_argument("--progress", type=float, default=15.0, help="seconds between lines")
    parser.add_argument("--workdir", type=Path, help="default: a new temp directory (kept)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--quiet", dest="verbose", action="store_false", help="no event lines")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Refuse option values the run cannot use (through ``parser.error``)."""
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be in (0, 1440]")
    if args.rate < 0:
        parser.error("--rate must not be negative")
    if args.in_flight_kills < 0:
        parser.error("--in-flight-kills must not be negative")
    if args.in_flight_kills and args.forward:
        parser.error("--in-flight-kills applies to the pull mode")
    if args.in_flight_kills and "slow_answer" not in SIMULATOR_FAULT_KINDS:
        parser.error("--in-flight-kills needs a simulator with the slow_answer fault")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    return check_args(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure("WARNING", "console")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work dir (logs, events.jsonl, report.json): {workdir}", flush=True)
    report = asyncio.run(run_forward(args, workdir) if args.forward else run(args, workdir))
    text = json.dumps(report, indent=2, default=str)
    (workdir / "report.json").write_text(text + "\n", encoding="utf-8")
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(summary_forward(report) if args.forward else summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
