"""The HTTP forward receiver under load: requests/s, time to acknowledge, end-to-end latency.

    python tests/benchmarks/bench_forward.py [--seconds 20] [--quick] [--out DIR]
        [--senders 32] [--batch-senders 16] [--generator auto|wrk|asyncio] [--keep]

One Redis/Valkey server (poller.devtools.embedded; AOF on, appendfsync everysec) and
`poller run` as its own process, configured forward-only (POLLER_FORWARD__APPLICATIONS, a
token, a free loopback
port, health server off, a spool in the work directory): it pulls nothing and, with no public
URL, bootstraps nothing, so it talks to nobody but its senders and Redis. Then, one at a time:

  single   single-message POSTs from --senders concurrent connections for --seconds:
           POSTs/s, and p50/p99 time to acknowledge (request sent -> 2xx received)
  batch    100-message POSTs (the pull envelope {"results": [...]}) from --batch-senders
           connections: messages/s, p50/p99 time to acknowledge
  e2e      `poller simulate --forward APP=URL` generating a steady 100 msg/s, forwarding them
           (batch size 100, what is waiting at each moment) to the receiver, a reader on XREAD
           BLOCK: p50/p99 from a message's creation at the simulator (its ledger's creation
           time, CLOCK_MONOTONIC, which is system-wide) to its entry being read

Load comes from wrk (with a generated Lua script giving every message a unique messageId) when
it is on PATH, else from an asyncio/aiohttp generator in a process of its own (this script with
`--generate`). Every case reports the CPU each process used over its measured window as a share
of one core (the poller's from psutil), the machine's load average before it, and how many
cores other processes kept busy meanwhile (the machine's busy time minus ours), since other
work on the machine disturbs the figures.

Accounting, after each case, once the poller's spool is empty: the case's stream is read whole.
No messageId may appear twice or be one nobody sent, and every acknowledged message must be in
it. The asyncio generator waits for every answer, so it knows each acknowledged id (exact).
wrk abandons the requests in flight when its time is up (at most one per connection); their
messages are stored or not, unanswered. Its ids run 1..n per wrk thread (the first request of
the first thread is made only to check the script, and never sent), so when the stream holds
every id sent, every acknowledged one is in it (exact); otherwise the check is by count (at
least as many in the stream as acknowledged).

Writes DIR/forward.json and DIR/forward.md (result beside target). Exit status 1 when a case
failed or a message was lost, duplicated or unknown; the targets are reported, not enforced.
Every wait is bounded; every child is killed on exit; all traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOKEN = "bench-forward-token-0123456789abcdef"
PATH = "/infobip/forward"
APP_SINGLE = "bench-fwd-single"
APP_BATCH = "bench-fwd-batch"
APP_E2E = "bench-fwd-e2e"
APPS = (APP_SINGLE, APP_BATCH, APP_E2E)
KEY_TEMPLATE = "bench:fwd:{${app}}:mo"
BATCH = 100
E2E_RATE = 100.0
E2E_FORWARD_BATCH = 100
CASES = ("single", "batch", "e2e")
XRANGE_PAGE = 10_000
MARK = "@@ID@@"

# Targets, printed beside the results.
T_SINGLE_RPS = 2_000.0
T_SINGLE_P99_MS = 100.0
T_BATCH_MPS = 20_000.0
T_E2E_P99_MS = 250.0


def message_template(app: str) -> str:
    """One forwarded message as JSON text, MARK where its messageId goes (a realistic size:
    about 400 bytes, non-ASCII text, a nested custom payload)."""
    message = {
        "messageId": MARK,
        "from": "38c0c8fd-8712-48bc-876f-3787b9d179e0",
        "to": app,
        "applicationCode": app,
        "receivedAt": "2026-11-30T13:50:14.533+0000",
        "text": "Où est ma commande ? Merci beaucoup 🙏",
        "cleanText": "Où est ma commande ? Merci beaucoup 🙏",
        "customPayload": {
            "order": {
                "id": "ORD-868360",
                "items": [{"sku": "SKU-30", "qty": 4}],
                "total": {"amount": 22.7, "currency": "EUR"},
            }
        },
    }
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def envelope(items: list[str]) -> str:
    """The pull answer's envelope around message JSON texts."""
    return f'{{"results":[{",".join(items)}],"messageCount":{len(items)},"pendingMessageCount":0}}'


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks; q in [0, 100]."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _die_with_parent() -> None:
    # Linux: the child gets SIGKILL when this process dies, even by SIGKILL.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class BenchError(Exception):
    """A case could not be measured."""


# -- the asyncio load generator (its own process) ---------------------------------------------


async def _generate(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    head, tail = message_template(args.app).split(MARK)
    latencies: list[float] = []
    acked: dict[int, list[int]] = {}
    sent: dict[int, int] = {}
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.monotonic() + args.seconds

        async def worker(lane: int) -> None:
            n = 0
            acked[lane] = []
            lane_prefix = f"{args.prefix}-{lane}-"
            while time.monotonic() < deadline:
                first = n + 1
                n += args.batch
                items = [head + lane_prefix + str(i) + tail for i in range(first, n + 1)]
                body = (items[0] if args.batch == 1 else envelope(items)).encode()
                began = time.perf_counter()
                try:
                    async with session.post(args.url, data=body, headers=headers) as answer:
                        await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                statuses[str(status)] += 1
                if 200 <= status < 300:
                    latencies.append((time.perf_counter() - began) * 1e6)
                    acked[lane].append(first)
            sent[lane] = n

        started = time.monotonic()
        await asyncio.gather(*(worker(lane) for lane in range(1, args.connections + 1)))
        duration = time.monotonic() - started
    ordered = sorted(latencies)
    ok = len(latencies)
    return {
        "tool": f"asyncio (aiohttp {aiohttp.__version__})",
        "duration_s": duration,
        "requests": sum(statuses.values()),
        "requests_ok": ok,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "latency_ms": _latency_summary(ordered, 1e-3),
        "lanes": [{"lane": lane, "sent": n} for lane, n in sorted(sent.items())],
        "acked_first_ids": {str(lane): firsts for lane, firsts in acked.items()},
        "exact_acks": True,
    }


def _latency_summary(ordered: list[float], scale: float) -> dict[str, float]:
    if not ordered:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "p50": percentile(ordered, 50) * scale,
        "p90": percentile(ordered, 90) * scale,
        "p99": percentile(ordered, 99) * scale,
        "p999": percentile(ordered, 99.9) * scale,
        "max": ordered[-1] * scale,
        "mean": statistics.fmean(ordered) * scale,
    }


def generator_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="asyncio load generator for bench_forward.py")
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--url", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(_generate(args))
    args.result.write_text(json.dumps(result) + "\n")
    return 0


# -- wrk ---------------------------------------------------------------------------------------

WRK_SCRIPT = """\
-- Written by bench_forward.py: unique messageIds, <prefix>-<thread>-<n>, n = 1, 2, ...
local prefix = [==[%(prefix)s]==]
local batch = %(batch)d
local head = [==[%(head)s]==]
local tail = [==[%(tail)s]==]
local threads = {}
local next_tid = 0

function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  lane = prefix .. "-" .. tid .. "-"
  headers = {["Content-Type"] = "application/json"}
end

function request()
  if batch == 1 then
    counter = counter + 1
    return wrk.format("POST", nil, headers, head .. lane .. counter .. tail)
  end
  local parts = {}
  for i = 1, batch do
    counter = counter + 1
    parts[i] = head .. lane .. counter .. tail
  end
  local body = '{"results":[' .. table.concat(parts, ",") .. '],"messageCount":' .. batch
    .. ',"pendingMessageCount":0}'
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local lanes = {}
  for _, t in ipairs(threads) do
    table.insert(lanes, string.format('{"lane":%%d,"sent":%%d}', t:get("tid"), t:get("counter")))
  end
  local q = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do
    table.insert(q, string.format('"%%s":%%.1f', tostring(p), latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK-RESULT {"duration_us":%%.0f,"requests":%%.0f,"bytes":%%.0f,'
      .. '"errors":{"connect":%%.0f,"read":%%.0f,"write":%%.0f,"status":%%.0f,"timeout":%%.0f},'
      .. '"latency_us":{"min":%%.1f,"max":%%.1f,"mean":%%.1f,"percentiles":{%%s}},'
      .. '"lanes":[%%s]}\\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.min, latency.max, latency.mean, table.concat(q, ","),
    table.concat(lanes, ",")))
end
"""


def wrk_script(prefix: str, app: str, batch: int) -> str:
    head, tail = message_template(app).split(MARK)
    for text in (prefix, head, tail):
        if "]==]" in text:
            raise ValueError("text does not fit a Lua long string")
    return WRK_SCRIPT % {"prefix": prefix, "batch": batch, "head": head, "tail": tail}


def wrk_version() -> str:
    found = shutil.which("wrk")
    if found is None:
        return ""
    out = subprocess.run(
        [found, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" [")[0].strip() if first else "wrk"


def parse_wrk(stdout: str) -> dict[str, Any]:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK-RESULT ")), None)
    if line is None:
        raise BenchError("wrk printed no result line (see its log)")
    raw: dict[str, Any] = json.loads(line.removeprefix("WRK-RESULT "))
    errors = raw["errors"]
    requests = int(raw["requests"])
    status_errors = int(errors["status"])
    q = raw["latency_us"]["percentiles"]
    return {
        "duration_s": raw["duration_us"] / 1e6,
        "requests": requests,
        # wrk counts an answer >= 400 as a status error; nothing answers 1xx or 3xx here.
        "requests_ok": requests - status_errors,
        "statuses": {"non-2xx": status_errors} if status_errors else {},
        "errors": {k: int(v) for k, v in errors.items() if k != "status" and v},
        "latency_ms": {
            "p50": q["50"] / 1e3,
            "p90": q["90"] / 1e3,
            "p99": q["99"] / 1e3,
            "p999": q["99.9"] / 1e3,
            "max": raw["latency_us"]["max"] / 1e3,
            "mean": raw["latency_us"]["mean"] / 1e3,
        },
        "lanes": raw["lanes"],
        # wrk calls request() once before the run to check the script (on its first thread)
        # and never sends what it returned: the first request's ids of lane 1.
        "unsent_first_request_of_lane": 1,
        "exact_acks": False,
    }


# -- processes and measurements ---------------------------------------------------------------


@dataclass
class Usage:
    """CPU seconds of the processes we started, and of the whole machine, at one moment."""

    at: float
    poller: float
    redis: float
    machine_busy: tuple[float, float]
    load: tuple[float, float, float]
    extra: dict[str, float] = field(default_factory=dict)


def _cpu_of(pid: int | None) -> float:
    import psutil

    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _machine_busy() -> tuple[float, float]:
    """CPU seconds the machine spent in processes (user, nice, system) and in interrupts
    (irq, softirq: loopback networking is mostly there), summed over every core."""
    import psutil

    t = psutil.cpu_times()
    interrupts = getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return float(t.user + t.nice + t.system), float(interrupts)


class Bench:
    """The Redis server, the poller, the work directory and the children."""

    def __init__(self, args: argparse.Namespace) -> None:
        from poller.devtools.embedded import EmbeddedRedis, free_port

        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="poller-bench-forward-"))
        (self.workdir / "logs").mkdir()
        self.redis_server = EmbeddedRedis(
            data_dir=self.workdir / "redis",
            appendonly=True,
            appendfsync="everysec",
            extra_args=["--auto-aof-rewrite-percentage", "0"],
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PATH}/{TOKEN}"
        self.spool_path = self.workdir / "spool.db"
        self.poller: subprocess.Popen[bytes] | None = None
        self.children: list[subprocess.Popen[bytes]] = []
        self.run_id = uuid.uuid4().hex[:6]
        self._names: Counter[str] = Counter()

    def log_path(self, name: str) -> Path:
        self._names[name] += 1
        return self.workdir / "logs" / f"{name}-{self._names[name]:02d}.log"

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def poller_env(self) -> dict[str, str]:
        env = self.base_env()
        env.update(
            {
                # Forward-only: nothing is pulled, and with no public URL nothing is
                # bootstrapped, so the Infobip settings are never used (an API key is still
                # required by the settings model).
                "POLLER_INFOBIP__BASE_URL": "http://127.0.0.1:9",
                "POLLER_INFOBIP__API_KEY": "unused-by-a-forward-only-poller",
                "POLLER_FORWARD__APPLICATIONS": ",".join(APPS),
                "POLLER_FORWARD__TOKEN": TOKEN,
                "POLLER_FORWARD__HOST": "127.0.0.1",
                "POLLER_FORWARD__PORT": str(self.port),
                "POLLER_HEALTH__ENABLED": "false",
                "POLLER_REDIS__URL": self.redis_server.url,
                "POLLER_REDIS__STREAM_KEY_TEMPLATE": KEY_TEMPLATE,
                "POLLER_SPOOL__PATH": str(self.spool_path),
                "POLLER_LOG__FORMAT": "json",
            }
        )
        return env

    def spawn(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Any:
        with self.log_path(name).open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env or self.base_env(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.children.append(proc)
        return proc

    def wait_child(self, proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
        """Reap proc (os.wait4): its exit code and CPU seconds; killed past timeout."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                self.children.remove(proc)
                raise BenchError(f"{proc.args!r} did not finish within {timeout:.0f} s")
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.children.remove(proc)
        return proc.returncode, usage.ru_utime + usage.ru_stime

    def stop_child(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL past timeout; the exit code (None when it had to be killed)."""
        code: int | None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                code = None
        else:
            code = proc.returncode
        with contextlib.suppress(ValueError):
            self.children.remove(proc)
        return code

    def kill_all(self) -> None:
        for proc in list(self.children):
            with contextlib.suppress(Exception):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
        self.children.clear()

    def start_poller(self) -> None:
        import socket

        argv = [sys.executable, "-m", "poller", "run"]
        self.poller = self.spawn(argv, "poller", self.poller_env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.poller.poll() is not None:
                raise BenchError(f"`poller run` exited {self.poller.returncode} while starting")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            time.sleep(0.05)
        raise BenchError("the forward receiver did not listen within 60 s")

    def usage(self, **extra: float) -> Usage:
        assert self.poller is not None
        return Usage(
            at=time.monotonic(),
            poller=_cpu_of(self.poller.pid),
            redis=_cpu_of(self.redis_server.pid),
            machine_busy=_machine_busy(),
            load=os.getloadavg(),
            extra=dict(extra),
        )

    def spool_rows(self) -> int | None:
        """Messages and quarantined rows not yet in Redis (read-only; None: not readable)."""
        try:
            conn = sqlite3.connect(f"file:{self.spool_path}?mode=ro", uri=True, timeout=2)
        except sqlite3.Error:
            return None
        try:
            messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            pending = conn.execute(
                "SELECT count(*) FROM quarantine WHERE dead_lettered = 0"
            ).fetchone()[0]
            return int(messages) + int(pending)
        except sqlite3.Error:
            return None
        finally:
            conn.close()

    def wait_spool_empty(self, timeout: float) -> float:
        """Seconds until the spool held nothing more; BenchError past timeout."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.spool_rows() == 0:
                return time.monotonic() - started
            time.sleep(0.05)
        raise BenchError(f"the spool still held rows {timeout:.0f} s after the load")

    def stream_ids(self, app: str) -> tuple[Counter[str], int]:
        """messageId -> entries carrying it, over the application's whole stream; and the
        entries of its dead-letter stream (nothing sent here is malformed: 0)."""
        import redis

        key = KEY_TEMPLATE.replace("${app}", app)
        client = redis.Redis.from_url(self.redis_server.url)
        counts: Counter[str] = Counter()
        try:
            start = "-"
            pages = int(client.xlen(key)) // XRANGE_PAGE + 2
            for _ in range(pages):
                batch: Any = client.xrange(key, min=start, count=XRANGE_PAGE)
                for _entry_id, fields in batch:
                    counts[fields[b"id"].decode()] += 1
                if len(batch) < XRANGE_PAGE:
                    break
                start = "(" + batch[-1][0].decode()
            dead = int(client.xlen(key + ":dead"))
        finally:
            client.close()
        return counts, dead

    def forget(self, app: str) -> None:
        """Drop an application's stream, marks and seen set (memory and disk stay bounded)."""
        import redis

        client = redis.Redis.from_url(self.redis_server.url)
        try:
            keys = list(client.scan_iter(match=f"*{{{app}}}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            if client.dbsize() == 0:
                with contextlib.suppress(redis.ResponseError):
                    client.bgrewriteaof()
        finally:
            client.close()


def cpu_shares(before: Usage, after: Usage, ours_extra: float = 0.0) -> dict[str, float]:
    """Each process's CPU over the window as a share of one core, and the cores the rest of
    the machine's processes kept busy meanwhile (other work disturbs the figures)."""
    wall = max(after.at - before.at, 1e-6)
    poller = after.poller - before.poller
    redis_cpu = after.redis - before.redis
    busy = after.machine_busy[0] - before.machine_busy[0]
    interrupts = after.machine_busy[1] - before.machine_busy[1]
    others = max(busy - poller - redis_cpu - ours_extra, 0.0)
    return {
        "poller_core_share": poller / wall,
        "redis_core_share": redis_cpu / wall,
        "generator_core_share": ours_extra / wall,
        "machine_process_cores": busy / wall,
        "machine_interrupt_cores": interrupts / wall,
        "other_processes_cores": others / wall,
        "load_average_before": round(before.load[0], 2),
    }


# -- the cases ---------------------------------------------------------------------------------


def account(
    result: dict[str, Any], prefix: str, batch: int, stream: Counter[str]
) -> dict[str, Any]:
    """Compare what was sent and acknowledged with the stream (see the module docstring)."""
    unsent_lane = result.get("unsent_first_request_of_lane")
    sent_ids = {
        f"{prefix}-{lane['lane']}-{n}"
        for lane in result["lanes"]
        for n in range(1 + (batch if lane["lane"] == unsent_lane else 0), int(lane["sent"]) + 1)
    }
    duplicates = {mid: n for mid, n in stream.items() if n > 1}
    unknown = [mid for mid in stream if mid not in sent_ids]
    missing = len(sent_ids) - (len(stream) - len(unknown))
    acked_messages = int(result["requests_ok"]) * batch
    in_stream = len(stream) - len(unknown)
    out: dict[str, Any] = {
        "sent_messages": len(sent_ids),
        "acked_messages": acked_messages,
        "in_stream": in_stream,
        "duplicates": len(duplicates),
        "unknown_ids": len(unknown),
        "missing_of_sent": missing,
        "stored_without_a_seen_ack": in_stream - acked_messages,
    }
    if result.get("exact_acks"):
        acked_ids = {
            f"{prefix}-{lane}-{first + i}"
            for lane, firsts in result["acked_first_ids"].items()
            for first in firsts
            for i in range(batch)
        }
        lost = [mid for mid in acked_ids if mid not in stream]
        out["accounting"] = "exact (every answer awaited)"
        out["acked_lost"] = len(lost)
    elif missing == 0:
        # Every id sent is in the stream, so every acknowledged one is.
        out["accounting"] = "exact (every message sent is in the stream)"
        out["acked_lost"] = 0
    else:
        out["accounting"] = "by count (some requests were cut when wrk stopped)"
        out["acked_lost"] = max(0, acked_messages - in_stream)
    non_2xx = sum(int(n) for status, n in result["statuses"].items() if not status.startswith("2"))
    out["non_2xx"] = non_2xx
    out["accounted"] = (
        not duplicates and not unknown and out["acked_lost"] == 0 and acked_messages > 0
    )
    return out


def load_case(bench: Bench, name: str, app: str, connections: int, batch: int) -> dict[str, Any]:
    """POSTs of batch messages from connections senders for the case's seconds."""
    seconds = bench.args.seconds
    prefix = f"{bench.run_id}-{name}"
    use_wrk = bench.args.generator_tool == "wrk"
    result_path = bench.workdir / f"{name}-generator.json"
    if use_wrk:
        script = bench.workdir / f"{name}.lua"
        script.write_text(wrk_script(prefix, app, batch), encoding="utf-8")
        threads = max(1, min(bench.args.wrk_threads, connections))
        argv = [
            shutil.which("wrk") or "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            bench.url,
        ]
    else:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--generate",
            "--url",
            bench.url,
            "--app",
            app,
            "--prefix",
            prefix,
            "--connections",
            str(connections),
            "--batch",
            str(batch),
            "--seconds",
            str(seconds),
            "--result",
            str(result_path),
        ]
    log_path = bench.log_path(f"generator-{name}")
    before = bench.usage()
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            argv,
            env=bench.base_env(),
            cwd=bench.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    bench.children.append(proc)
    code, generator_cpu = bench.wait_child(proc, seconds + 60)
    after = bench.usage()
    if code != 0:
        raise BenchError(f"the load generator exited {code} (see {log_path})")
    if use_wrk:
        result = parse_wrk(log_path.read_text(encoding="utf-8", errors="replace"))
        result["tool"] = f"{wrk_version()} ({threads} thread(s))"
    else:
        result = json.loads(result_path.read_text())
    drain_s = bench.wait_spool_empty(120)
    stream, dead = bench.stream_ids(app)
    accounting = account(result, prefix, batch, stream)
    bench.forget(app)
    duration = result["duration_s"]
    requests_ok = int(result["requests_ok"])
    import psutil

    assert bench.poller is not None
    out = {
        "senders": connections,
        "messages_per_post": batch,
        "generator": result["tool"],
        "seconds": duration,
        "posts": requests_ok,
        "posts_per_s": requests_ok / duration,
        "msg_per_s": requests_ok * batch / duration,
        "ack_ms": result["latency_ms"],
        "statuses": result["statuses"],
        "errors": result["errors"],
        "drain_after_load_s": drain_s,
        # From the first request to the spool's last row reaching Redis: what the whole
        # pipeline carried, the burst the spool absorbed included.
        "msg_per_s_to_stream": accounting["in_stream"] / (duration + drain_s),
        "poller_rss_mb": psutil.Process(bench.poller.pid).memory_info().rss / 1e6,
        **cpu_shares(before, after, generator_cpu),
        **accounting,
    }
    out["dead_letter"] = dead
    if result["errors"] or dead:
        out["accounted"] = False
    log(
        f"{name}: {out['posts_per_s']:,.0f} POSTs/s, {out['msg_per_s']:,.0f} msg/s, ack p50 "
        f"{result['latency_ms']['p50']:.1f} ms, p99 {result['latency_ms']['p99']:.1f} ms, poller "
        f"{out['poller_core_share']:.2f} of a core; {accounting['accounting']}, "
        f"acked lost {accounting['acked_lost']}, duplicates {accounting['duplicates']}"
    )
    return out


def e2e_case(bench: Bench) -> dict[str, Any]:
    """The simulator forwarding a steady 100 msg/s; creation -> readable by XREAD."""
    import httpx
    import redis

    from poller.devtools.embedded import free_port

    seconds = bench.args.e2e_seconds
    key = KEY_TEMPLATE.replace("${app}", APP_E2E)
    sim_port = free_port()
    argv = [
        sys.executable,
        "-m",
        "poller",
        "simulate",
        "--port",
        str(sim_port),
        "--applications",
        APP_E2E,
        "--forward",
        f"{APP_E2E}={bench.url}",
        "--forward-batch",
        str(E2E_FORWARD_BATCH),
        "--throttle-rps",
        "0",
        "--rate",
        "0",
        "--seed",
        "1",
    ]
    sim = bench.spawn(argv, "simulator")
    base = f"http://127.0.0.1:{sim_port}"
    http = httpx.Client(base_url=base, timeout=60, trust_env=False)
    read_at: dict[str, float] = {}
    counts: Counter[str] = Counter()
    stop_reading = threading.Event()
    errors: list[str] = []

    def read() -> None:
        client = redis.Redis.from_url(bench.redis_server.url)
        last = "0-0"
        try:
            while not stop_reading.is_set():
                answer: Any = client.xread({key: last}, count=1000, block=200)
                now = time.monotonic()
                for _key, entries in answer or []:
                    for entry_id, fields in entries:
                        last = entry_id.decode()
                        message_id = fields[b"id"].decode()
                        counts[message_id] += 1
                        read_at.setdefault(message_id, now)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    reader = threading.Thread(target=read, name="xread", daemon=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            if sim.poll() is not None or time.monotonic() > deadline:
                raise BenchError("the simulator did not start (see its log)")
            with contextlib.suppress(httpx.HTTPError):
                if http.get("/_sim/state").status_code == 200:
                    break
            time.sleep(0.05)
        reader.start()
        before = bench.usage(sim=_cpu_of(sim.pid))
        http.post("/_sim/generator", json={"rate": E2E_RATE}).raise_for_status()
        time.sleep(seconds)
        http.post("/_sim/generator", json={"rate": 0}).raise_for_status()
        after = bench.usage(sim=_cpu_of(sim.pid))
        deadline = time.monotonic() + 60
        state: dict[str, Any] = {}
        while time.monotonic() < deadline and not errors:
            state = http.get("/_sim/state").json()
            forward = state["forward"]
            settled = forward["pending"] == 0 and forward["openAttempts"] == 0
            if settled and len(read_at) >= forward["routed"]:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # anything written twice would show up by now
        ledger = http.get("/_sim/ledger", params={"created": "1"}).json()
    finally:
        stop_reading.set()
        if reader.is_alive():
            reader.join(5)
        http.close()
        bench.stop_child(sim)
    if errors:
        raise BenchError(f"reader: {errors[0]}")
    created: dict[str, list[float]] = ledger["created"]
    acked_at: dict[str, float] = {}
    for attempt in ledger["forward"]["attempts"]:
        if attempt["delivered"]:
            for mid in attempt["messageIds"]:
                acked_at.setdefault(mid, attempt["ackedMonotonic"])
    to_read = sorted((read_at[m] - c[0]) * 1e3 for m, c in created.items() if m in read_at)
    to_ack = sorted((acked_at[m] - c[0]) * 1e3 for m, c in created.items() if m in acked_at)
    ack_to_read = sorted(
        (read_at[m] - acked_at[m]) * 1e3 for m in created if m in read_at and m in acked_at
    )
    missing = [m for m in created if m not in counts]
    duplicates = [m for m, n in counts.items() if n > 1]
    unknown = [m for m in counts if m not in created]
    stream, dead = bench.stream_ids(APP_E2E)
    bench.forget(APP_E2E)
    sim_cpu = after.extra["sim"] - before.extra["sim"]
    attempts = ledger["forward"]["attempts"]
    out = {
        "rate": E2E_RATE,
        "seconds": seconds,
        "forward_batch_size": E2E_FORWARD_BATCH,
        "created": len(created),
        "read": len(read_at),
        "forward_posts": len(attempts),
        "messages_per_post": len(created) / max(len(attempts), 1),
        "delivered": len(ledger["forward"]["deliveredIds"]),
        "missing": len(missing),
        "duplicates": len(duplicates) + sum(1 for n in stream.values() if n > 1),
        "unknown_ids": len(unknown),
        "in_stream": len(stream),
        "dead_letter": dead,
        "latency_ms": _latency_summary(to_read, 1.0),
        "created_to_2xx_ms": _latency_summary(to_ack, 1.0),
        "2xx_to_read_ms": _latency_summary(ack_to_read, 1.0),
        "percentiles_ms": [round(percentile(to_read, q), 2) for q in range(101)],
        **cpu_shares(before, after, sim_cpu),
    }
    out["simulator_core_share"] = out.pop("generator_core_share")
    out["accounted"] = (
        bool(created)
        and not missing
        and not out["duplicates"]
        and not unknown
        and len(stream) == len(created)
        and not dead
    )
    lat = out["latency_ms"]
    log(
        f"e2e: {len(created)} created, {len(read_at)} read; creation -> readable p50 "
        f"{lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms; poller {out['poller_core_share']:.3f} of"
        f" a core"
    )
    return out


# -- the report --------------------------------------------------------------------------------


def machine_info(bench: Bench) -> dict[str, Any]:
    import psutil

    def git(*args: str) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20, check=True
            ).stdout.strip()
        return ""

    import poller

    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu_model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": bench.redis_server.version,
        "redis_config": "appendonly yes, appendfsync everysec",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_poller": bool(git("status", "--porcelain", "--", "poller")),
        "poller_version": poller.__version__,
        "poller_package": str(Path(poller.__file__).parent),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _n(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _cpu(case: dict[str, Any]) -> str:
    return (
        f"poller CPU {case['poller_core_share']:.2f} of a core (Redis "
        f"{case['redis_core_share']:.2f}, other processes {case['other_processes_cores']:.2f}"
        " cores)"
    )


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cases = results["cases"]

    def failed(name: str, title: str) -> bool:
        data = cases.get(name)
        if data is None:
            return True
        if "error" in data:
            rows.append({"case": title, "result": data["error"], "target": "", "met": None})
            return True
        return False

    single = cases.get("single", {})
    title = f"single-message POSTs, {single.get('senders', results['senders'])} senders"
    if not failed("single", title):
        ack = single["ack_ms"]
        rows.append(
            {
                "case": title,
                "result": f"{_n(single['posts_per_s'])} POSTs/s; ack p50 {_n(ack['p50'], 1)} ms,"
                f" p99 {_n(ack['p99'], 1)} ms; {_cpu(single)}",
                "target": f">= {T_SINGLE_RPS:,.0f} POSTs/s with p99 <= {T_SINGLE_P99_MS:g} ms",
                "met": single["posts_per_s"] >= T_SINGLE_RPS and ack["p99"] <= T_SINGLE_P99_MS,
            }
        )
    batch = cases.get("batch", {})
    title = f"{BATCH}-message POSTs, {batch.get('senders', results['batch_senders'])} senders"
    if not failed("batch", title):
        ack = batch["ack_ms"]
        rows.append(
            {
                "case": title,
                "result": f"{_n(batch['msg_per_s'])} msg/s acknowledged"
                f" ({_n(batch['posts_per_s'])} POSTs/s); ack p50 {_n(ack['p50'], 1)} ms, p99"
                f" {_n(ack['p99'], 1)} ms; spool empty {_n(batch['drain_after_load_s'], 1)} s"
                f" after the load ({_n(batch['msg_per_s_to_stream'])} msg/s into the stream);"
                f" {_cpu(batch)}",
                "target": f">= {T_BATCH_MPS:,.0f} msg/s",
                "met": batch["msg_per_s"] >= T_BATCH_MPS,
            }
        )
    e2e = cases.get("e2e", {})
    title = f"end to end at {E2E_RATE:g} msg/s, simulator forwarding (batch {E2E_FORWARD_BATCH})"
    if not failed("e2e", title):
        lat, ack = e2e["latency_ms"], e2e["created_to_2xx_ms"]
        rows.append(
            {
                "case": title,
                "result": f"creation -> readable p50 {_n(lat['p50'], 1)} ms, p99"
                f" {_n(lat['p99'], 1)} ms (creation -> 2xx p50 {_n(ack['p50'], 1)} ms, p99"
                f" {_n(ack['p99'], 1)} ms); {_cpu(e2e)}",
                "target": f"p99 <= {T_E2E_P99_MS:g} ms",
                "met": lat["p99"] <= T_E2E_P99_MS,
            }
        )
    return rows


def markdown(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = results["machine"]
    lines = [
        f"Forward receiver benchmark of {m['date']} (`python tests/benchmarks/bench_forward.py"
        f"{' --quick' if results['quick'] else ''} --seconds {results['seconds']:g}`),"
        f" load from {results['generator']}.",
        "",
        f"Machine: {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), {m['memory_gb']} GB,"
        f" Python {m['python']}, {m['redis_server']} ({m['redis_config']}),"
        f" commit {m['git_commit'][:12] or 'unknown'}"
        f"{' with uncommitted poller changes' if m['git_dirty_poller'] else ''};"
        f" load average at the start {m['load_average_at_start'][0]}.",
        "",
        "| case | result | target | met? |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['case']} | {row['result']} | {row['target']} | {met} |")
    lines += ["", "Accounting (each case's stream read whole once the spool was empty):", ""]
    for name in ("single", "batch"):
        case = results["cases"].get(name)
        if case is None or "error" in case:
            continue
        lines.append(
            f"- {name}: {case['sent_messages']:,} messages sent, {case['acked_messages']:,}"
            f" acknowledged, {case['in_stream']:,} in the stream ({case['accounting']});"
            f" acknowledged but missing {case['acked_lost']}, twice {case['duplicates']},"
            f" unknown {case['unknown_ids']}; non-2xx {case['non_2xx']}."
        )
    e2e = results["cases"].get("e2e")
    if e2e is not None and "error" not in e2e:
        lines.append(
            f"- e2e: {e2e['created']:,} messages created by the simulator in"
            f" {e2e['forward_posts']:,} POSTs ({e2e['messages_per_post']:.1f} per POST),"
            f" {e2e['in_stream']:,} in the stream; missing {e2e['missing']}, twice"
            f" {e2e['duplicates']}, unknown {e2e['unknown_ids']}."
        )
    lines += [
        "",
        "Time to acknowledge: from the request's send to its 2xx, as the load generator sees it."
        " CPU: each process's CPU time over the case's window divided by the window; other"
        " processes: the machine's busy time minus ours (other work on the machine disturbs the"
        " figures).",
    ]
    if results["problems"]:
        lines += ["", "Problems:", *(f"- {p}" for p in results["problems"])]
    return "\n".join(lines) + "\n"


def problems_of(results: dict[str, Any]) -> list[str]:
    out = []
    for name, case in results["cases"].items():
        if "error" in case:
            out.append(f"{name}: {case['error']}")
        elif not case.get("accounted"):
            out.append(f"{name}: not every acknowledged message is in the stream exactly once")
    if results.get("poller_exit_code") != 0:
        out.append(f"`poller run` exited {results.get('poller_exit_code')} at the SIGTERM")
    if results.get("spool_rows_at_exit"):
        out.append(f"{results['spool_rows_at_exit']} rows left in the spool")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per load case (default 20)")
    parser.add_argument(
        "--e2e-seconds", type=float, default=None, help="end-to-end case (default --seconds)"
    )
    parser.add_argument("--quick", action="store_true", help="3 s per case (for a smoke test)")
    parser.add_argument("--senders", type=int, default=32, help="single-message case")
    parser.add_argument("--batch-senders", type=int, default=16, help="100-message case")
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "asyncio"),
        default="auto",
        help="load generator (auto: wrk when on PATH)",
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 3.0)
    if args.e2e_seconds is None:
        args.e2e_seconds = 5.0 if args.quick else args.seconds
    if not 1 <= args.seconds <= 3600 or not 1 <= args.e2e_seconds <= 3600:
        parser.error("--seconds and --e2e-seconds must be in [1, 3600]")
    if args.senders < 1 or args.batch_senders < 1 or args.wrk_threads < 1:
        parser.error("--senders, --batch-senders and --wrk-threads must be at least 1")
    args.chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    if set(args.chosen) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(set(args.chosen) - set(CASES)))}")
    if args.generator == "wrk" and shutil.which("wrk") is None:
        parser.error("--generator wrk: wrk is not on PATH")
    args.generator_tool = (
        "wrk"
        if args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
        else "asyncio"
    )
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--generate"]:
        return generator_main(argv)
    args = parse_args(argv)
    limit = 600.0 + 3 * args.seconds + args.e2e_seconds

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise TimeoutError(f"the benchmark passed its time limit of {limit:.0f} s")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    bench = Bench(args)
    started = time.time()
    generator = (
        f"{wrk_version()} ({args.wrk_threads} thread(s))"
        if args.generator_tool == "wrk"
        else "an asyncio/aiohttp generator in its own process"
    )
    results: dict[str, Any] = {
        "quick": args.quick,
        "seconds": args.seconds,
        "e2e_seconds": args.e2e_seconds,
        "senders": args.senders,
        "batch_senders": args.batch_senders,
        "generator": generator,
        "targets": {
            "single_posts_per_s": T_SINGLE_RPS,
            "single_ack_p99_ms": T_SINGLE_P99_MS,
            "batch_msg_per_s": T_BATCH_MPS,
            "e2e_p99_ms": T_E2E_P99_MS,
        },
        "cases": {},
    }
    failed = False
    try:
        log(f"work directory {bench.workdir}")
        bench.redis_server.start()
        results["machine"] = machine_info(bench)
        log(f"{bench.redis_server.version} on port {bench.redis_server.port}; load by {generator}")
        bench.start_poller()
        log(f"`poller run` (forward only) listening on 127.0.0.1:{bench.port}")
        steps = {
            "single": lambda: load_case(bench, "single", APP_SINGLE, args.senders, 1),
            "batch": lambda: load_case(bench, "batch", APP_BATCH, args.batch_senders, BATCH),
            "e2e": lambda: e2e_case(bench),
        }
        for name in CASES:
            if name not in args.chosen:
                continue
            log(f"{name}: {args.e2e_seconds if name == 'e2e' else args.seconds:g} s")
            try:
                results["cases"][name] = steps[name]()
            except (BenchError, OSError, ValueError) as exc:
                log(f"{name} failed: {exc}")
                traceback.print_exc()
                results["cases"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        assert bench.poller is not None
        results["poller_exit_code"] = bench.stop_child(bench.poller, 40)
        results["spool_rows_at_exit"] = bench.spool_rows()
    except BaseException:
        failed = True
        traceback.print_exc()
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        bench.kill_all()
        bench.redis_server.stop()
        if failed:
            log(f"work directory kept: {bench.workdir}")
    results["duration_s"] = time.time() - started
    results["problems"] = problems_of(results)
    if results["problems"] or args.keep:
        log(f"work directory (logs) kept: {bench.workdir}")
    else:
        shutil.rmtree(bench.workdir, ignore_errors=True)
    rows = table(results)
    results["table"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "forward.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results, rows)
    (args.out / "forward.md").write_text(text)
    print(text)
    log(f"done in {results['duration_s']:.0f} s; results in {args.out}")
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
