"""Redis fails over under `poller run` with the default settings: nothing it acknowledged is
lost, nothing is written twice. Real redis-server and redis-sentinel processes on loopback
(tests/topology.py), the simulator and the poller as processes: tests/benchmarks/failover.py,
shortened (the benchmark's own runs are longer and faster)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "benchmarks" / "failover.py"


@pytest.mark.skipif(shutil.which("redis-sentinel") is None, reason="needs redis-sentinel")
@pytest.mark.parametrize("case", ["planned", "kill-lagging", "cluster-kill"])
@pytest.mark.timeout(420)
def test_a_failover_loses_and_doubles_nothing_with_the_default_settings(
    case: str, tmp_path: Path
) -> None:
    # Tried: SENTINEL FAILOVER (the old primary goes on accepting writes for ~10 s); a SIGKILL
    # of the primary while its replica lags 0.5 s behind (a replication proxy); a SIGKILL of
    # the Cluster primary that holds every stream. 300 msg/s pulled throughout.
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--case",
            case,
            "--rate",
            "300",
            "--warmup",
            "5",
            "--after",
            "15",
            "--expect-no-loss",
            "--workdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["durability"] == "auto"
    assert report["handed_out"] > 0
    assert (report["lost"], report["doubled"]) == (0, 0), report
    assert report["drained"], report
    assert report["poller_exit"] == 0, report
