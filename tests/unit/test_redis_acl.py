"""deploy/OPERATIONS.md states the ACL additions a server with WAITAOF needs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_states_the_waitaof_additions() -> None:
    assert "`+waitaof '+config|get'`" in (ROOT / "deploy" / "OPERATIONS.md").read_text()
