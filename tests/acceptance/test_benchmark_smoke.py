"""The benchmark command runs end to end (`run.py --quick`) and its numbers are sane.

No timing threshold: only that every case ran, every drain put each of its messages in the
streams exactly once, and the results files were written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def drained(run: dict[str, Any]) -> None:
    """A drain's run: positive throughput, every message in the streams, none dead."""
    assert run["exit_code"] == 0
    assert run["msg_per_s"] > 0
    assert run["in_streams"] == run["messages"] == run["handed_out"]
    assert run["dead_letter"] == 0
    assert run["accounted"] is True
    assert run["cpu_s"] > 0


def test_quick_benchmark_runs_every_case(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out)],
        cwd=RUN.parent.parent.parent,
        capture_output=True,
        text=True,
        timeout=560,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    results = json.loads((out / "latest.json").read_text())
    assert results["quick"] is True
    assert results["problems"] == []
    assert set(results["cases"]) == set(CASES)
    for name, case in results["cases"].items():
        assert "error" not in case, name
    machine = results["machine"]
    assert machine["cores"] >= 1
    assert machine["redis_server"]
    assert machine["python"]

    cases = results["cases"]
    for name in ("throttled", "throttled_rtt"):
        assert cases[name]["runs"]
        for run in cases[name]["runs"]:
            drained(run)
            assert run["pulls"] >= run["messages"] / 1000
        assert cases[name]["median"]["msg_per_s"] > 0
        assert cases[name]["median"]["core_share"] >= 0
    assert cases["throttled_rtt"]["pull_delay_s"] == pytest.approx(0.15)

    for run in cases["open_ingest"]["runs"]:
        drained(run["poller"])
        assert run["naive"]["in_streams"] == run["naive"]["messages"]
        assert run["raw_xadd"]["messages"] == run["poller"]["messages"]
        assert run["raw_xadd"]["accounted"] is True
        for key in ("msg_per_s", "naive_msg_per_s", "raw_msg_per_s", "x_naive", "share_of_raw"):
            assert run[key] > 0, key

    for run in cases["spool_replay"]["runs"]:
        assert run["fills"]
        assert run["fills"][0]["exit_code"] == 1  # Redis was unreachable: rows stayed
        assert run["exit_code"] == 0
        assert run["in_streams"] == run["rows"]
        assert run["msg_per_s"] > 0

    for run in cases["latency"]["runs"]:
        assert run["generated"] > 0
        assert run["read"] == run["generated"]
        assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert len(run["percentiles_ms"]) == 101
        assert run["exit_code"] == 0

    for run in cases["footprint"]["runs"]:
        assert run["rss_start_mb"] > 0
        assert run["rss_idle_mb"] > 0
        assert run["idle_cpu_pct"] >= 0
        assert run["exit_code"] == 0

    sizes = cases["scaling"]["sizes"]
    assert [s["messages"] for s in sizes] == results["sizes"]["scaling"]
    for size in sizes:
        for run in size["runs"]:
            drained(run)
        assert size["median"]["cpu_s_per_100k"] >= 0

    for name, config in cases["replicas"].items():
        if not isinstance(config, dict) or "runs" not in config:
            continue
        for run in config["runs"]:
            assert run["accounted"] is True, name
            assert run["exit_codes"] == [0] * run["replicas"], name
            assert run["msg_per_s"] > 0, name

    table = (out / "latest.md").read_text()
    assert "| case | result | target | met? |" in table
    assert len(results["table"]) == len(CASES)
    assert table.count("\n| ") >= 1 + len(CASES)
    assert (out / "latest.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
