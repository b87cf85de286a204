"""`poller tail APP` for a stream that does not exist says so and exits 1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from poller.cli import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The memory sink (empty: it lives in this process), no POLLER_* from outside."""
    for name in [n for n in os.environ if n.upper().startswith("POLLER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLLER_SINK__KIND", "memory")


@pytest.mark.parametrize(
    ("extra", "kind", "stream"),
    [
        ([], "stream", "memory:no-such-app"),
        (["--dead"], "dead-letter stream", "memory:no-such-app:dead"),
        (["--group", "g1"], "stream", "memory:no-such-app"),
    ],
)
def test_tail_of_a_stream_that_does_not_exist(
    extra: list[str], kind: str, stream: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tried: `poller tail no-such-app` (a misspelt application), with --dead and through a
    group; it used to print nothing and exit 0, like an empty stream."""
    assert main(["tail", "no-such-app", *extra]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"poller: error: {kind} {stream} of no-such-app does not exist (nothing was written to"
        " it)\n"
    )
