"""The spool seen from other processes: files this process may not read or write, and the lock
that keeps a second process off an open spool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from poller.spool import Spool, SpoolError
from tests.support.spool import spool_message as msg

BIG = 10**9


def _without_dac_override(code: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` where file permissions bite: as root, with the capabilities that bypass
    them dropped (setpriv), else as the current user."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is not installed")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run(
        [*prefix, sys.executable, "-c", code],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


_OPEN = (
    "import sys\n"
    "from poller.spool import Spool, SpoolError\n"
    "try:\n"
    "    Spool.open({path!r}, max_rows=10, max_bytes=10**6)\n"
    "except SpoolError as exc:\n"
    "    print('SpoolError:', exc)\n"
    "    sys.exit(3)\n"
)


def test_unreadable_file_is_refused_and_kept(tmp_path: Path) -> None:
    # Tried: a spool file the process may not read (mode 000, owned by someone else).
    path = tmp_path / "spool.db"
    Spool.open(path, max_rows=BIG, max_bytes=BIG).close()
    before = path.read_bytes()
    path.chmod(0)
    done = _without_dac_override(_OPEN.format(path=str(path)), tmp_path)
    assert done.returncode == 3, done.stderr
    assert "spool.db" in done.stdout
    path.chmod(0o600)
    assert path.read_bytes() == before


def test_read_only_directory_is_refused(tmp_path: Path) -> None:
    # Tried: a spool path in a directory the process may not write to.
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    done = _without_dac_override(_OPEN.format(path=str(ro / "spool.db")), tmp_path)
    assert done.returncode == 3, done.stderr
    assert "spool.db" in done.stdout
    assert not (ro / "spool.db").exists()


_HOLD = (
    "import sys, time\n"
    "from poller.spool import Spool\n"
    "s = Spool.open({path!r}, max_rows=10, max_bytes=10**6)\n"
    "print('open', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_second_open_is_refused_while_the_first_is_open(tmp_path: Path) -> None:
    # Tried: two processes on one spool file; each kept its own counters (phantom backpressure).
    path = tmp_path / "spool.db"
    first = Spool.open(path, max_rows=BIG, max_bytes=BIG)
    first.append([msg(0)])
    with pytest.raises(SpoolError, match=rf"in use by another process \(pid {os.getpid()}\)"):
        Spool.open(path, max_rows=BIG, max_bytes=BIG)
    first.close()
    first.close()
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as again:
        assert again.stats().rows == 1

    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD.format(path=str(path))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(SpoolError, match=rf"spool\.db is in use .*\(pid {holder.pid}\)"):
            Spool.open(path, max_rows=BIG, max_bytes=BIG)
    finally:
        holder.communicate("", timeout=30)
    # The lock goes with the process, however it ends.
    Spool.open(path, max_rows=BIG, max_bytes=BIG).close()
