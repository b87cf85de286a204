"""An API key that is a common word: Infobip's 401 reaches the operator with the project's
hint whole (a real `poller` process against the simulator)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from poller.devtools.simulator import Simulator

pytestmark = pytest.mark.timeout(60)

HINT = "the credentials were refused: a wrong or revoked key, or the wrong auth scheme"


@pytest.mark.parametrize(
    "args",
    [("infobip", "configurations", "list", "app-alpha"), ("bootstrap", "--dry-run")],
    ids=["infobip", "bootstrap"],
)
async def test_a_key_that_is_a_word_of_the_hint_leaves_the_hint_whole(
    args: tuple[str, ...], configured_simulator: Simulator, tmp_path: Path
) -> None:
    """Tried: the key "wrong" refused by the simulator (401) under `poller infobip` and
    `poller bootstrap`; the hint used to read "a *** or revoked key, or the *** auth
    scheme"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(
        POLLER_INFOBIP__BASE_URL=configured_simulator.base_url,
        POLLER_INFOBIP__API_KEY="wrong",
        POLLER_INFOBIP__APPLICATIONS="app-alpha",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "poller",
        *args,
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 1
    (line,) = err.decode().splitlines()
    assert line.startswith("poller: error: "), line
    assert "HTTP 401" in line
    assert HINT in line, line
