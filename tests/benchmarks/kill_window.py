"""The SIGKILL window under load: messages lost when `poller run` is killed a fixed delay after
Infobip finished sending several answers at once, with both cores busy.

    python tests/benchmarks/kill_window.py [--runs 5] [--delays 0.05,0.2] [--messages 10000]
        [--burst 4] [--busy 2] [--out DIR]

Each run: Redis (poller.devtools.embedded), the simulator in a process of its own
(``python -m tests.pull_burst``: the project's simulator, plus a burst and a kill) with a
backlog of --messages, ``--busy`` processes spinning on the cores (``python -c 'while 1:
pass'``), and ``poller run`` (a subprocess, POLLER_* settings, default pull limit 1000 and
pulls in flight 4). The simulator answers the first --skip pulls as usual, then holds the
next --burst pull requests before they take any message, lets them out together (4 answers of
1,000 messages, about 2.4 MB, written at once) and SIGKILLs the poller --delay seconds after
the last of them was written in full (its write returned: every byte in the kernel's socket
buffers). Then the spinning stops, ``poller once`` drains the rest (its start spools what the
journal kept), and the simulator's ledger (every message handed out) is compared with the
streams. Lost: handed out, in no stream; a kill takes only what the poller had not read of
answers sent in full, since no other pull is answered from the burst to the kill.

Prints one line per run and a table; writes DIR/kill_window.json and DIR/kill_window.md.
Exit status 1 when a run could not be measured or a message was written twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from poller.devtools.embedded import EmbeddedRedis
from tests.pull_burst import BurstSimError, BurstSimProcess, busy_cores

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
APPS = ("kw-alpha", "kw-beta", "kw-gamma")
API_KEY = "sim-api-key"


class BenchError(Exception):
    """A run could not be measured."""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class Paths:
    work: Path

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def poller_env(sim: BurstSimProcess, redis_url: str, prefix: str, spool: Path) -> dict[str, str]:
    env = base_env()
    env.update(
        {
            "POLLER_INFOBIP__BASE_URL": sim.url,
            "POLLER_INFOBIP__API_KEY": API_KEY,
            "POLLER_INFOBIP__BOOTSTRAP": "false",
            "POLLER_REDIS__URL": redis_url,
            "POLLER_REDIS__STREAM_KEY_TEMPLATE": prefix + ":{${app}}:mo",
            "POLLER_SPOOL__PATH": str(spool),
            "POLLER_HEALTH__ENABLED": "false",
            "POLLER_INFOBIP__RATE_LIMIT_SCOPE": "local",
            "POLLER_REDIS__SOCKET_TIMEOUT": "15",
            "POLLER_LOG__FORMAT": "json",
        }
    )
    return env


def stream_ids(client: redis.Redis, prefix: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for app in APPS:
        for _id, fields in client.xrange(f"{prefix}:{{{app}}}:mo"):
            counts[fields[b"id"].decode()] += 1
    return counts


def dead_entries(client: redis.Redis, prefix: str) -> int:
    return sum(int(client.xlen(key)) for key in client.scan_iter(match=f"{prefix}:*:dead"))


def journal_bytes(spool: Path) -> tuple[int, int]:
    """(files, body bytes) in the spool's journal directory, header lines left out."""
    directory = spool.with_name(spool.name + ".journal")
    files = body = 0
    for path in directory.glob("*.body"):
        files += 1
        body += len(path.read_bytes().partition(b"\n")[2])
    return files, body


def one_run(
    args: argparse.Namespace, paths: Paths, server: EmbeddedRedis, delay: float, n: int
) -> dict[str, Any]:
    tag = f"d{int(delay * 1000)}-{n}"
    prefix = f"kw:{uuid.uuid4().hex[:8]}"
    spool_dir = paths.work / "spools" / tag
    spool_dir.mkdir(parents=True)
    spool = spool_dir / "spool.db"
    client = redis.Redis.from_url(server.url)
    sim = BurstSimProcess(
        APPS, paths.log(f"sim-{tag}"), env=base_env(), send_buffer=args.send_buffer
    )
    try:
        sim.backlog(args.messages)
        env = poller_env(sim, server.url, prefix, spool)
        with busy_cores(args.busy):
            load = os.getloadavg()[0]
            held = False
            if args.hold_flush:
                client.client_pause(int(args.timeout * 1000), all=False)
                held = True
            with paths.log(f"run-{tag}").open("ab") as out:
                poller = subprocess.Popen(  # this interpreter, the project's own command
                    [sys.executable, "-m", "poller", "run"],
                    env=env,
                    cwd=REPO,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            sim.arm(pid=poller.pid, skip=args.skip, size=args.burst, delay=delay)
            deadline = time.monotonic() + args.timeout
            while True:
                burst = sim.report()
                if held and burst["state"] in args.unpause_when:
                    client.client_unpause()
                    held = False
                if burst["state"] == "killed":
                    break
                if poller.poll() is not None:
                    raise BenchError(f"poller run exited {poller.returncode} before the kill")
                if time.monotonic() > deadline:
                    poller.kill()
                    raise BenchError(f"no kill within {args.timeout} s: {burst['state']}")
                time.sleep(0.02)
            poller.wait(30)
        files, journaled = journal_bytes(spool)
        drain = subprocess.run(  # this interpreter, the project's own command
            [sys.executable, "-m", "poller", "once"],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=paths.log(f"once-{tag}").open("ab"),
            stderr=subprocess.STDOUT,
            timeout=args.timeout,
            check=False,
        )
        if drain.returncode != 0:
            raise BenchError(f"poller once exited {drain.returncode} (see its log)")
        handed = sim.handed_out()
        state = sim.state()
        found = stream_ids(client, prefix)
        dead = dead_entries(client, prefix)
    finally:
        sim.close()
        with contextlib.suppress(redis.RedisError):
            keys = list(client.scan_iter(match=f"*{prefix}*"))
            if keys:
                client.delete(*keys)
        client.close()
        shutil.rmtree(spool_dir, ignore_errors=True)
    lost = set(handed) - set(found)
    answers = []
    for answer in burst["answers"]:
        answers.append(
            {
                "messages": len(answer["ids"]),
                "bytes": answer["bytes"],
                "written_before_kill_s": round(burst["killedAt"] - answer["writtenAt"], 4)
                if answer["writtenAt"] is not None
                else None,
                "lost": len(lost & set(answer["ids"])),
                "written_at": answer["writtenAt"],
            }
        )
    return {
        "delay_s": delay,
        "messages": args.messages,
        "handed_out": len(handed),
        "in_streams": len(found),
        "lost": len(lost),
        "lost_in_burst": len(lost & {i for a in burst["answers"] for i in a["ids"]}),
        "doubled": sum(1 for c in found.values() if c > 1),
        "dead_letters": dead,
        "inbox_left": state["inboxDepth"],
        "burst_answers": answers,
        "kill_after_last_write_s": round(burst["killedAt"] - burst["writtenAt"], 4),
        "released_at": burst["releasedAt"],
        "killed_at": burst["killedAt"],
        "journal_at_kill": {"files": files, "body_bytes": journaled},
        "burst_bytes": sum(a["bytes"] for a in burst["answers"]),
        "load_1m_before": load,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Kill-window run of {results['at']} (`{results['command']}`), commit"
        f" {results['commit']}, {results['machine']}.",
        "",
        "| kill after the last answer | runs | lost of 10,000, each run | median | doubled |",
        "| --- | --- | --- | --- | --- |",
    ]
    for delay, runs in results["by_delay"].items():
        lost = [r["lost"] * 10_000 // max(1, r["handed_out"]) for r in runs]
        lines.append(
            f"| {float(delay) * 1000:.0f} ms | {len(runs)} | {', '.join(map(str, lost))} |"
            f" {statistics.median(lost):g} | {sum(r['doubled'] for r in runs)} |"
        )
    return "\n".join(lines) + "\n"


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(  # git, to name the commit measured
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per delay")
    parser.add_argument("--delays", default="0.05,0.2", help="seconds, comma-separated")
    parser.add_argument("--messages", type=int, default=10_000, help="backlog per run")
    parser.add_argument("--skip", type=int, default=6, help="pulls answered before the burst")
    parser.add_argument("--burst", type=int, default=4, help="answers let out at once")
    parser.add_argument(
        "--hold-flush",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Redis holds writes (CLIENT PAUSE WRITE) until the burst gathers, so the flusher"
        " works through the rows of the skipped pulls while the burst arrives",
    )
    parser.add_argument(
        "--unpause",
        choices=("gathering", "released"),
        default="gathering",
        help="when Redis takes writes again: as the burst's requests gather, or once they"
        " are let out",
    )
    parser.add_argument(
        "--send-buffer",
        type=int,
        default=0,
        help="the simulator's SO_SNDBUF, bytes (0: the kernel's, which grows only as fast as"
        " the poller reads; 4194304 holds the whole burst, as a network would)",
    )
    parser.add_argument("--busy", type=int, default=2, help="processes spinning on the cores")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per step")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.unpause_when = ("gathering", "released", "killed")
    if args.unpause == "released":
        args.unpause_when = ("released", "killed")
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    paths = Paths(Path(tempfile.mkdtemp(prefix="poller-killwin-")))
    (paths.work / "logs").mkdir()
    log(f"work directory {paths.work}")
    results: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python tests/benchmarks/kill_window.py " + " ".join(sys.argv[1:]),
        "commit": _commit(),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "by_delay": {},
    }
    failed = False
    server = EmbeddedRedis(data_dir=paths.work / "redis", appendonly=True, appendfsync="everysec")
    with server.start():
        for delay in delays:
            runs = results["by_delay"].setdefault(str(delay), [])
            for n in range(1, args.runs + 1):
                try:
                    run = one_run(args, paths, server, delay, n)
                except (BenchError, BurstSimError) as exc:
                    log(f"delay {delay * 1000:.0f} ms, run {n}: not measured: {exc}")
                    failed = True
                    continue
                runs.append(run)
                failed = failed or run["doubled"] > 0
                log(
                    f"delay {delay * 1000:.0f} ms, run {n}: lost {run['lost']} of"
                    f" {run['handed_out']} (kill {run['kill_after_last_write_s'] * 1000:.0f} ms"
                    f" after the last write; journal held {run['journal_at_kill']['body_bytes']:,}"
                    f" of {run['burst_bytes']:,} burst bytes; per answer lost"
                    f" {[a['lost'] for a in run['burst_answers']]}), doubled {run['doubled']}"
                )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kill_window.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "kill_window.md").write_text(markdown(results))
    print(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
