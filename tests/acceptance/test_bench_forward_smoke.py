"""The forward benchmark runs end to end (`bench_forward.py --quick`) and its numbers are sane.

No timing threshold: only that every case ran, every acknowledged message is in its stream
exactly once, and the results files were written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_forward.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_quick_forward_benchmark_accounts_for_every_acknowledged_message(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        cwd=BENCH.parent.parent.parent,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    results = json.loads((out / "forward.json").read_text())
    assert results["quick"] is True
    assert results["problems"] == []
    assert results["poller_exit_code"] == 0
    assert results["spool_rows_at_exit"] == 0
    assert set(results["cases"]) == {"single", "batch", "e2e"}
    for name, case in results["cases"].items():
        assert "error" not in case, name
        assert case["accounted"] is True, name
        assert case["dead_letter"] == 0, name
        assert case["poller_core_share"] > 0, name
        assert case["other_processes_cores"] >= 0, name

    for name, batch in (("single", 1), ("batch", 100)):
        case = results["cases"][name]
        assert case["messages_per_post"] == batch
        assert case["posts"] > 0
        assert case["posts_per_s"] > 0
        assert case["msg_per_s"] == pytest.approx(case["posts_per_s"] * batch)
        assert 0 < case["ack_ms"]["p50"] <= case["ack_ms"]["p99"] <= case["ack_ms"]["max"]
        # Every acknowledged message once in the stream; nothing unknown; nothing refused.
        assert case["acked_messages"] == case["posts"] * batch
        assert case["acked_lost"] == 0
        assert case["duplicates"] == 0
        assert case["unknown_ids"] == 0
        assert case["non_2xx"] == 0
        assert case["acked_messages"] <= case["in_stream"] <= case["sent_messages"]

    e2e = results["cases"]["e2e"]
    assert e2e["created"] > 0
    assert e2e["read"] == e2e["created"] == e2e["in_stream"] == e2e["delivered"]
    assert (e2e["missing"], e2e["duplicates"], e2e["unknown_ids"]) == (0, 0, 0)
    latency = e2e["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert len(e2e["percentiles_ms"]) == 101
    assert e2e["created_to_2xx_ms"]["p50"] > 0

    table = (out / "forward.md").read_text()
    assert "| case | result | target | met? |" in table
    assert len(results["table"]) == 3
    assert table.count("\n| ") >= 1 + 3
