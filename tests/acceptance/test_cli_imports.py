"""`poller --version` and `poller check` start quickly: they load neither the daemon, nor the
simulator, nor aiohttp's server (a probe runs them every few seconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [["--version"], ["check"]])
def test_quick_commands_load_neither_the_simulator_nor_aiohttp_server(argv: list[str]) -> None:
    # Run in a child with nothing listening: `check` fails (no daemon) after its imports.
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['poller', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('poller', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('poller', 'aiohttp'))))\n"
    )
    env = {"POLLER_HEALTH__PORT": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    loaded = result.stdout.strip().splitlines()[-1]
    assert "poller.devtools" not in loaded
    assert "aiohttp.web" not in loaded
    assert "poller.daemon" not in loaded
