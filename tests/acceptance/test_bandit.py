"""bandit, as CI runs it, passes on the code and fails on a planted finding."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bandit(*targets: str | Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("bandit", path=str(Path(sys.executable).parent)) or shutil.which("bandit")
    if tool is None:
        pytest.skip("bandit is not installed (it is in deploy/requirements/dev.txt)")
    return subprocess.run(
        [tool, "-c", str(ROOT / "pyproject.toml"), "-q", "-f", "txt", "-r", *map(str, targets)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_the_code_has_no_unjustified_finding() -> None:
    result = bandit("poller")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_new_finding_fails_the_run(tmp_path: Path) -> None:
    # Tried: a shell=True subprocess call and an unannotated assert, as a new module would add.
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import subprocess\n\n\ndef run(cmd: str) -> None:\n"
        "    assert cmd\n    subprocess.call(cmd, shell=True)\n"
    )
    result = bandit(planted)
    assert result.returncode == 1
    assert "B602" in result.stdout
    assert "B101" in result.stdout
