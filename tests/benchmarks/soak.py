"""Long soak: the chaos harness for half an hour or more, sampling what could slowly leak.

Run: python tests/benchmarks/soak.py [--minutes 30] [--rate 100] [--forward] [--out DIR]

The run is `soak_chaos.py` (simulator, Redis of its own, `poller run` as a subprocess, the
same accounting of every message: nothing lost, nothing twice) with a steady message rate and
two phases: kills and SIGTERMs happen only in the first part (`--kill-share`, default half
the run); Redis outages and fault windows go on over the whole run. The poller that runs
through the kill-free tail is the longest uninterrupted process, the one whose growth means
something: a process killed every minute never gets old enough to leak visibly.

Every `--sample-every` seconds (default 5) it records the poller's RSS, open file
descriptors (/proc/PID/fd), threads, the spool file and its -wal, the body journal
directory, the spool rows (from /metrics), and Redis `used_memory` beside the total stream
length and the streams' own memory (MEMORY USAGE). Samples go to soak-samples.csv, the report
(with every sample and a per-process summary) to soak.json, both in `--out` (default: the
work directory). Bounds checked at the end, each one a problem in the report when broken:

- RSS of the longest-lived process grows by less than `--rss-growth-mb` between the median
  of its first samples after `--warmup` seconds of its life and the median of its last ones;
  no process ever exceeds `--rss-max-mb`;
- open fds and threads of that process stay within a small margin of their level after its
  warm-up, and no process ever holds more than `--fd-max` fds;
- after the drain the spool holds no row and no journal file, and the spool file plus its
  -wal stay below `--spool-max-mb` through the whole run (SQLite reuses freed pages; the
  file keeps its largest size, it does not return to 0);
- Redis memory follows the stream length over the tail: a line fitted to `used_memory` by
  the number of entries strays less than `--redis-residual-mb` from any sample, its slope
  (bytes per entry) is at most 1.25 times the streams' own cost per entry (MEMORY USAGE;
  with `--forward` plus 150 bytes: the dedupe window remembers each forwarded id for an
  hour), and that cost per entry stays within 25 % of its median.

`--judge soak.json` checks the bounds again on a finished run's samples (no new run).

The exit status is 1 when the harness or a bound reports a problem.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from poller import logs
from tests.benchmarks import soak_chaos as chaos

# Slack on fds and threads of the longest-lived process: a reconnect after a Redis outage, an
# HTTP connection opened while another closes, the executor's threads started on demand.
FD_MARGIN = 16
THREAD_MARGIN = 8
EDGE_SAMPLES = 6  # samples in each median at the start and the end of a stretch
# Redis memory per id in a forward dedupe window (a sorted-set member and its score, with
# room to spare): in --forward runs, memory outside the streams may grow by this per message.
DEDUPE_BYTES_PER_ID = 150


@dataclass
class Sample:
    """One look at the poller, its spool and Redis."""

    t: float  # seconds since traffic started
    phase: str  # "kills" or "tail"
    pid: int | None
    process: int  # the poller process's start number (1 = first)
    age_s: float | None  # seconds since that process was seen first
    rss_mb: float | None
    fds: int | None
    threads: int | None
    spool_mb: float
    wal_mb: float
    journal_files: int
    journal_mb: float
    spool_rows: float | None
    redis_used_mb: float | None
    redis_streams_mb: float | None
    redis_other_mb: float | None
    stream_entries: int | None
    redis_keys: int | None
    handed_out: int


def _proc(pid: int) -> tuple[float, int, int] | None:
    """(RSS in MB, open fds, threads) of a live process, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields.get("VmRSS", "0 kB").split()[0])
    return rss_kb / 1024, fds, int(fields.get("Threads", "0"))


def _file_mb(path: Path) -> float:
    try:
        return path.stat().st_size / 2**20
    except OSError:
        return 0.0


def _journal(directory: Path) -> tuple[int, float]:
    try:
        sizes = [entry.stat().st_size for entry in os.scandir(directory) if entry.is_file()]
    except OSError:
        return 0, 0.0
    return len(sizes), sum(sizes) / 2**20


async def _redis_memory(url: str) -> tuple[float, float, int, int] | None:
    """(used_memory, the streams' memory, total stream entries, keys), None while Redis is down."""
    client = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0)
    try:
        used = int((await client.info("memory"))["used_memory"])
        keys = int(await client.dbsize())
        streams = entries = 0
        async for key in client.scan_iter(_type="stream", count=1000):
            entries += int(await client.xlen(key))
            streams += int(await client.memory_usage(key, samples=0) or 0)
    except Exception:  # an outage or a restart in between: no sample this time
        return None
    finally:
        await client.aclose()
    return used / 2**20, streams / 2**20, entries, keys


class Sampler:
    """A chaos.Probe: samples every few seconds from the start of traffic to the drain."""

    def __init__(self, every: float, kill_until: float, csv_path: Path) -> None:
        self.every = every
        self.kill_until = kill_until
        self.csv_path = csv_path
        self.samples: list[Sample] = []
        self.first_seen: dict[int, float] = {}
        self._stage: chaos.Stage | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, stage: chaos.Stage) -> None:
        self._stage = stage
        self._task = asyncio.create_task(self._loop(), name="sampler")

    async def stop(self) -> None:
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.sample()  # the drained state

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            await self.sample()
            await asyncio.sleep(max(0.0, self.every - (time.monotonic() - started)))

    async def sample(self) -> None:
        stage = self._stage
        assert stage is not None
        t = time.time() - stage.t0
        proc = stage.poller.proc
        pid = proc.pid if proc is not None and proc.returncode is None else None
        seen = _proc(pid) if pid is not None else None
        if pid is not None and seen is not None:
            self.first_seen.setdefault(pid, time.monotonic())
        metrics = await stage.poller.metrics() or {}
        memory = await _redis_memory(stage.redis.url) if stage.redis.running else None
        spool = stage.settings.spool.path
        files, journal_mb = _journal(spool.with_name(spool.name + ".journal"))
        sample = Sample(
            t=round(t, 1),
            phase="kills" if t < self.kill_until else "tail",
            pid=pid if seen is not None else None,
            process=stage.poller.starts,
            age_s=None
            if seen is None or pid is None
            else round(time.monotonic() - self.first_seen[pid], 1),
            rss_mb=None if seen is None else round(seen[0], 2),
            fds=None if seen is None else seen[1],
            threads=None if seen is None else seen[2],
            spool_mb=round(_file_mb(spool), 3),
            wal_mb=round(_file_mb(spool.with_name(spool.name + "-wal")), 3),
            journal_files=files,
            journal_mb=round(journal_mb, 3),
            spool_rows=metrics.get("poller_spool_rows"),
            redis_used_mb=None if memory is None else round(memory[0], 2),
            redis_streams_mb=None if memory is None else round(memory[1], 2),
            redis_other_mb=None if memory is None else round(memory[0] - memory[1], 2),
            stream_entries=None if memory is None else memory[2],
            redis_keys=None if memory is None else memory[3],
            handed_out=stage.sim.ledger.handed_out,
        )
        self.samples.append(sample)
        self._write(sample)

    def _write(self, sample: Sample) -> None:
        row = asdict(sample)
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def lifetimes(samples: list[Sample]) -> list[dict[str, Any]]:
    """Per poller process: how long it was watched, its RSS, fds and threads."""
    by_pid: dict[int, list[Sample]] = {}
    for s in samples:
        if s.pid is not None and s.rss_mb is not None:
            by_pid.setdefault(s.pid, []).append(s)
    out = []
    for pid, own in by_pid.items():
        out.append(
            {
                "pid": pid,
                "process": own[0].process,
                "from_t": own[0].t,
                "to_t": own[-1].t,
                "watched_s": round(own[-1].t - own[0].t, 1),
                "samples": len(own),
                "rss_first_mb": own[0].rss_mb,
                "rss_last_mb": own[-1].rss_mb,
                "rss_max_mb": max(s.rss_mb or 0.0 for s in own),
                "fds_max": max(s.fds or 0 for s in own),
                "threads_max": max(s.threads or 0 for s in own),
            }
        )
    return out


def stretch(samples: list[Sample], pid: int, warmup: float) -> dict[str, Any]:
    """Growth of one process over its life after ``warmup`` seconds: the median of its first
    samples against the median of its last ones (medians, so one sample taken while a big
    answer is parsed does not decide)."""
    own = [s for s in samples if s.pid == pid and s.rss_mb is not None]
    warm = [s for s in own if (s.age_s or 0.0) >= warmup] or own
    head, tail = warm[:EDGE_SAMPLES], warm[-EDGE_SAMPLES:]

    def med(part: list[Sample], name: str) -> float:
        return _median([float(getattr(s, name)) for s in part])

    return {
        "pid": pid,
        "warm_from_t": warm[0].t,
        "to_t": warm[-1].t,
        "seconds": round(warm[-1].t - warm[0].t, 1),
        "rss_start_mb": med(head, "rss_mb"),
        "rss_end_mb": med(tail, "rss_mb"),
        "rss_growth_mb": round(med(tail, "rss_mb") - med(head, "rss_mb"), 2),
        "rss_max_mb": max(s.rss_mb or 0.0 for s in warm),
        "fds_start": med(head, "fds"),
        "fds_max": max(s.fds or 0 for s in warm),
        "threads_start": med(head, "threads"),
        "threads_max": max(s.threads or 0 for s in warm),
    }


def redis_tail(samples: list[Sample], forward: bool) -> dict[str, Any]:
    """Redis memory over the tail against the stream length: a straight line fitted to
    used_memory by entries (its slope, the bytes each entry costs, near the streams' own cost
    per entry; its residuals small) says the memory follows the streams and nothing else."""
    tail = [
        s
        for s in samples
        if s.phase == "tail" and s.redis_used_mb is not None and (s.stream_entries or 0) > 0
    ]
    xs = [float(s.stream_entries or 0) for s in tail]
    if len(tail) < 3 or max(xs) == min(xs):
        return {"samples": len(tail)}
    ys = [(s.redis_used_mb or 0.0) * 2**20 for s in tail]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    intercept = my - slope * mx
    residual = max(abs(y - intercept - slope * x) for x, y in zip(xs, ys, strict=True))
    per_entry = [(s.redis_streams_mb or 0.0) * 2**20 / (s.stream_entries or 1) for s in tail]
    mid = statistics.median(per_entry)
    return {
        "samples": len(tail),
        "from_t": tail[0].t,
        "to_t": tail[-1].t,
        "entries_start": tail[0].stream_entries,
        "entries_end": tail[-1].stream_entries,
        "used_start_mb": tail[0].redis_used_mb,
        "used_end_mb": tail[-1].redis_used_mb,
        "used_bytes_per_entry": round(slope, 1),
        "used_at_zero_entries_mb": round(intercept / 2**20, 2),
        "fit_max_residual_mb": round(residual / 2**20, 3),
        "slope_bound": round(1.25 * mid + (DEDUPE_BYTES_PER_ID if forward else 0), 1),
        "stream_bytes_per_entry_median": round(mid, 1),
        "stream_bytes_per_entry_spread": round((max(per_entry) - min(per_entry)) / mid, 3),
        "keys_max": max(s.redis_keys or 0 for s in tail),
    }


def judge(args: argparse.Namespace, samples: list[Sample]) -> tuple[dict[str, Any], list[str]]:
    """The resource summary of a run and the bounds it broke."""
    problems: list[str] = []
    lives = lifetimes(samples)
    if not lives:
        return {"lifetimes": []}, ["no sample of the poller process was taken"]
    longest = max(lives, key=lambda life: life["watched_s"])
    grown = stretch(samples, longest["pid"], args.warmup)
    spool_max = max(s.spool_mb + s.wal_mb for s in samples)
    last = samples[-1]
    memory = redis_tail(samples, args.forward)
    summary = {
        "sample_every_s": args.sample_every,
        "samples": len(samples),
        "kill_until_s": args.kill_until,
        "poller_processes": len(lives),
        "rss_max_mb": max(life["rss_max_mb"] for life in lives),
        "fds_max": max(life["fds_max"] for life in lives),
        "threads_max": max(life["threads_max"] for life in lives),
        "longest_process": grown,
        "spool_plus_wal_max_mb": round(spool_max, 3),
        "at_the_end": {
            "spool_rows": last.spool_rows,
            "spool_mb": last.spool_mb,
            "wal_mb": last.wal_mb,
            "journal_files": last.journal_files,
        },
        "redis_tail": memory,
        "bounds": {
            "rss_growth_mb": args.rss_growth_mb,
            "rss_max_mb": args.rss_max_mb,
            "fd_max": args.fd_max,
            "fd_margin": FD_MARGIN,
            "thread_margin": THREAD_MARGIN,
            "spool_max_mb": args.spool_max_mb,
            "redis_fit_residual_mb": args.redis_residual_mb,
            "stream_bytes_per_entry_spread": 0.25,
        },
        "lifetimes": lives,
    }
    if grown["seconds"] < args.warmup:
        problems.append(f"the longest process was watched only {grown['seconds']} s after warm-up")
    if grown["rss_growth_mb"] >= args.rss_growth_mb:
        problems.append(
            f"RSS of the longest-lived poller grew {grown['rss_growth_mb']} MB in "
            f"{grown['seconds']} s (bound {args.rss_growth_mb} MB)"
        )
    if summary["rss_max_mb"] >= args.rss_max_mb:
        problems.append(f"a poller reached {summary['rss_max_mb']} MB RSS")
    if grown["fds_max"] > grown["fds_start"] + FD_MARGIN or summary["fds_max"] > args.fd_max:
        problems.append(
            f"open fds: {grown['fds_start']} after warm-up, up to {grown['fds_max']} later, "
            f"{summary['fds_max']} at most in any process"
        )
    if grown["threads_max"] > grown["threads_start"] + THREAD_MARGIN:
        problems.append(
            f"threads: {grown['threads_start']} after warm-up, up to {grown['threads_max']}"
        )
    if spool_max >= args.spool_max_mb:
        problems.append(f"spool file plus -wal reached {spool_max:.1f} MB")
    if last.spool_rows != 0 or last.journal_files != 0:
        problems.append(
            f"after the drain: {last.spool_rows} spool rows, {last.journal_files} journal files"
        )
    if memory.get("samples", 0) >= 3:
        if memory["fit_max_residual_mb"] >= args.redis_residual_mb:
            problems.append(
                f"Redis memory strays {memory['fit_max_residual_mb']} MB from a line in the "
                "stream length"
            )
        if memory["used_bytes_per_entry"] > memory["slope_bound"]:
            problems.append(
                f"Redis grows {memory['used_bytes_per_entry']} B per stream entry, more than "
                f"its streams ({memory['stream_bytes_per_entry_median']} B per entry)"
            )
        if memory["stream_bytes_per_entry_spread"] > 0.25:
            problems.append(
                "Redis stream memory per entry varied by "
                f"{memory['stream_bytes_per_entry_spread']:.0%} in the tail"
            )
    else:
        problems.append("no Redis sample in the tail")
    return summary, problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = chaos.build_parser(__doc__.split("\n", 1)[0])
    parser.set_defaults(minutes=30.0, rate=100.0, progress=60.0, verbose=False)
    parser.add_argument("--verbose", dest="verbose", action="store_true", help="event lines")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument(
        "--kill-share",
        type=float,
        default=0.5,
        help="share of the run with kills and SIGTERMs; the rest is one process (default 0.5)",
    )
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds of a process's life before RSS counts"
    )
    parser.add_argument("--rss-growth-mb", type=float, default=10.0, help="bound (default 10)")
    parser.add_argument("--rss-max-mb", type=float, default=150.0, help="bound (default 150)")
    parser.add_argument("--fd-max", type=int, default=128, help="bound (default 128)")
    parser.add_argument("--spool-max-mb", type=float, default=64.0, help="bound (default 64)")
    parser.add_argument("--redis-residual-mb", type=float, default=4.0, help="bound (default 4)")
    parser.add_argument(
        "--judge", type=Path, help="no run: check the bounds again on a soak.json's samples"
    )
    parser.add_argument(
        "--out", type=Path, help="soak.json and soak-samples.csv (default: work dir)"
    )
    args = chaos.check_args(parser, parser.parse_args(argv))
    if not 0.0 < args.kill_share < 1.0:
        parser.error("--kill-share must be between 0 and 1")
    if args.sample_every <= 0:
        parser.error("--sample-every must be positive")
    args.kill_until = args.minutes * 60.0 * args.kill_share
    return args


def summary(report: dict[str, Any]) -> str:
    s = report["soak"]
    grown = s["longest_process"]
    memory = s["redis_tail"]
    end = s["at_the_end"]
    lines = [
        "resources:",
        f"  samples         {s['samples']} every {s['sample_every_s']:g} s, "
        f"{s['poller_processes']} poller processes, kills until t={s['kill_until_s']:g} s",
        f"  longest process {grown['seconds']} s after warm-up: RSS {grown['rss_start_mb']} -> "
        f"{grown['rss_end_mb']} MB ({grown['rss_growth_mb']:+} MB), fds {grown['fds_start']} "
        f"-> max {grown['fds_max']}, threads {grown['threads_start']} -> max "
        f"{grown['threads_max']}",
        f"  any process     RSS max {s['rss_max_mb']} MB, fds max {s['fds_max']}, threads max "
        f"{s['threads_max']}",
        f"  spool           file+wal max {s['spool_plus_wal_max_mb']} MB; at the end "
        f"{end['spool_rows']} rows, file {end['spool_mb']} MB, wal {end['wal_mb']} MB, "
        f"{end['journal_files']} journal files",
    ]
    if memory.get("samples", 0) >= 3:
        lines.append(
            f"  redis (tail)    {memory['entries_start']} -> {memory['entries_end']} entries, "
            f"used {memory['used_start_mb']} -> {memory['used_end_mb']} MB = "
            f"{memory['used_at_zero_entries_mb']} MB + {memory['used_bytes_per_entry']} B per "
            f"entry (residual <= {memory['fit_max_residual_mb']} MB); streams "
            f"{memory['stream_bytes_per_entry_median']} B per entry (spread "
            f"{memory['stream_bytes_per_entry_spread']:.1%}); {memory['keys_max']} keys"
        )
    return "\n".join(lines)


def rejudge(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """A finished run's report with its bounds checked again (the harness's own problems
    kept): the samples stay as they were measured."""
    report: dict[str, Any] = json.loads(path.read_text())
    samples = [Sample(**row) for row in report["samples"]]
    resources, problems = judge(args, samples)
    own = {p for p in report["problems"] if p not in report.get("soak_problems", [])}
    report["soak"] = resources
    report["soak_problems"] = problems
    report["problems"] = [*sorted(own), *problems]
    report["ok"] = not report["problems"]
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.judge is not None:
        report = rejudge(args, args.judge)
        args.judge.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(summary(report))
        return 0 if report["ok"] else 1
    logs.configure("WARNING", "console")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = args.out or workdir
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "soak-samples.csv"
    csv_path.unlink(missing_ok=True)
    print(f"work dir (logs, events.jsonl, soak-samples.csv, soak.json): {workdir}", flush=True)
    sampler = Sampler(args.sample_every, args.kill_until, csv_path)
    run = chaos.run_forward if args.forward else chaos.run
    report = asyncio.run(run(args, workdir, sampler))
    resources, problems = judge(args, sampler.samples)
    report["command"] = "python tests/benchmarks/soak.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    report["soak"] = resources
    report["soak_problems"] = problems
    report["problems"] = [*report["problems"], *problems]
    report["ok"] = not report["problems"]
    report["samples"] = [asdict(s) for s in sampler.samples]
    (out / "soak.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print((chaos.summary_forward if args.forward else chaos.summary)(report))
    print(summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
