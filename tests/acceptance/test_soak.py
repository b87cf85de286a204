"""The soak script, two minutes of it: kills, Redis outages and faults at a steady rate, with
the poller's RSS, fds, threads, spool files and Redis memory sampled and bounded.

The 30-minute run is the same command without `--minutes` (tests/benchmarks/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


def test_two_minute_soak_loses_nothing_and_grows_within_its_bounds(tmp_path: Path) -> None:
    # Tried: 2 minutes at 100 msg/s, kills and SIGTERMs in the first minute only, Redis
    # outages and fault windows throughout, a sample every 2 s.
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--minutes",
            "2",
            "--warmup",
            "20",
            "--sample-every",
            "2",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        cwd=SOAK.parent.parent.parent,
        capture_output=True,
        text=True,
        timeout=450,
        check=False,
    )
    report = json.loads((out / "soak.json").read_text())
    assert done.returncode == 0, (report["problems"], done.stdout[-3000:], done.stderr[-3000:])
    assert report["ok"] is True

    # The harness's accounting: nothing twice, nothing lost but what a fault spoiled.
    assert report["duplicates"] == 0
    assert report["missing_by_class"]["c_real_loss"] == 0
    assert report["poller"]["sigkills"] >= 1
    assert report["redis_kills"] >= 1

    soak = report["soak"]
    assert soak["poller_processes"] >= 3
    longest = soak["longest_process"]
    # The kill-free tail gives one process at least a minute: its growth is measured there.
    assert longest["seconds"] >= 30
    assert longest["rss_growth_mb"] < soak["bounds"]["rss_growth_mb"]
    assert longest["fds_max"] <= longest["fds_start"] + soak["bounds"]["fd_margin"]
    assert soak["at_the_end"]["spool_rows"] == 0
    assert soak["at_the_end"]["journal_files"] == 0
    memory = soak["redis_tail"]
    assert memory["stream_bytes_per_entry_spread"] <= 0.25
    assert memory["fit_max_residual_mb"] < soak["bounds"]["redis_fit_residual_mb"]
    assert 0 < memory["used_bytes_per_entry"] <= memory["slope_bound"]

    samples = report["samples"]
    assert len(samples) >= 40
    assert {s["phase"] for s in samples} == {"kills", "tail"}
    lines = (out / "soak-samples.csv").read_text().splitlines()
    assert lines[0].startswith("t,phase,pid,process,age_s,rss_mb,fds,threads")
    assert len(lines) == len(samples) + 1
