"""`poller config check`'s local checks: the settings, the spool, the disk and the ports.

Each test builds the situation for real (a missing directory, a spool held by an open Spool,
a file that is no spool, a port some socket listens on) and reads the line the check returns:
its status, and that it names the setting to change. The checks must change nothing: a
missing directory stays missing, a held lock stays held.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from poller import preflight
from poller.preflight import Check
from poller.settings import Settings
from poller.spool import Spool, SpoolError


def settings(tmp_path: Path, **sections: Any) -> Settings:
    """Settings that `run` accepts, the spool under tmp_path."""
    base: dict[str, Any] = {
        "infobip": {"base_url": "http://127.0.0.1:9", "api_key": "k", "applications": ["a"]},
        "spool": {"path": tmp_path / "spool.db"},
        "health": {"enabled": False},
        "redis": {"url": "redis://127.0.0.1:6379/0"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings(**base)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_settings_run_would_refuse_fail_and_name_their_variable(tmp_path: Path) -> None:
    # Tried: no base URL and a grace period too short for a pull in flight.
    s = settings(tmp_path, infobip={"base_url": None}, schedule={"grace_period": 3.0})
    checks = preflight.check_settings(s)
    assert {c.status for c in checks} == {"fail"}
    text = "\n".join(c.detail for c in checks)
    assert "POLLER_INFOBIP__BASE_URL" in text
    assert "POLLER_SCHEDULE__GRACE_PERIOD" in text
    assert preflight.Report(checks).settings_invalid
    assert preflight.exit_code(preflight.Report(checks)) == 2

    (ok,) = preflight.check_settings(settings(tmp_path))
    assert ok.status == "ok"
    assert "pulled: a" in ok.detail


def test_a_missing_spool_directory_that_can_be_made_is_ok_and_not_made(tmp_path: Path) -> None:
    # Tried: a spool two directories below one that does not exist yet.
    path = tmp_path / "not" / "yet" / "spool.db"
    checks, holder = preflight.check_spool(settings(tmp_path, spool={"path": path}))
    assert holder is None
    assert [c.status for c in checks] == ["ok"]
    assert "creates it" in checks[0].detail
    assert not (tmp_path / "not").exists()
    assert os.listdir(tmp_path) == []  # the probe file is gone too


def test_a_spool_held_by_a_running_poller_is_a_note_and_stays_held(tmp_path: Path) -> None:
    # Tried: a spool opened (and so locked) in this process, as a running poller holds it.
    s = settings(tmp_path)
    with Spool.open(s.spool.path, max_rows=10, max_bytes=2**20):
        checks, holder = preflight.check_spool(s)
        found = by_name(checks)
        assert holder == str(os.getpid())
        assert found["spool"].status == "ok"
        assert found["spool lock"].status == "note"
        assert f"pid {os.getpid()}" in found["spool lock"].detail
        with pytest.raises(SpoolError, match="in use"):
            Spool.open(s.spool.path, max_rows=10, max_bytes=2**20)
    checks, holder = preflight.check_spool(s)
    assert holder is None
    assert by_name(checks)["spool lock"].status == "ok"
    # The lock is free again: the check did not keep it.
    Spool.open(s.spool.path, max_rows=10, max_bytes=2**20).close()


def test_a_file_that_is_no_spool_fails_naming_the_setting(tmp_path: Path) -> None:
    # Tried: a text file where the spool should be, then a directory.
    path = tmp_path / "spool.db"
    path.write_text("not sqlite")
    (check, *_rest), _holder = preflight.check_spool(settings(tmp_path))
    assert check.status == "fail"
    assert "not an SQLite file" in check.detail
    assert "POLLER_SPOOL__PATH" in check.detail
    assert path.read_text() == "not sqlite"

    folder = tmp_path / "folder"
    folder.mkdir()
    checks, _holder = preflight.check_spool(settings(tmp_path, spool={"path": folder}))
    assert [c.status for c in checks] == ["fail"]
    assert "POLLER_SPOOL__PATH" in checks[0].detail


def test_a_spool_with_rows_says_how_many(tmp_path: Path) -> None:
    # Tried: a real spool file left with no rows by a run that ended.
    s = settings(tmp_path)
    Spool.open(s.spool.path, max_rows=10, max_bytes=2**20).close()
    checks, _holder = preflight.check_spool(s)
    assert by_name(checks)["spool"].detail.endswith(
        "0 rows waiting for the sink, 0 quarantined not dead-lettered"
    )


def test_a_spool_directory_under_a_file_fails(tmp_path: Path) -> None:
    # Tried: a spool path whose parent "directory" is a plain file.
    (tmp_path / "file").write_text("")
    s = settings(tmp_path, spool={"path": tmp_path / "file" / "sub" / "spool.db"})
    checks, _holder = preflight.check_spool(s)
    assert [c.status for c in checks] == ["fail"]
    assert "POLLER_SPOOL__PATH" in checks[0].detail


def test_disk_room_is_compared_with_what_a_pull_needs(tmp_path: Path) -> None:
    # Tried: the test machine's own file system, which has room for a pull.
    (check,) = preflight.check_disk(settings(tmp_path))
    assert check.status in ("ok", "note")
    assert str(tmp_path) in check.detail


def test_a_port_in_use_fails_naming_its_setting(tmp_path: Path, listener: int) -> None:
    # Tried: the health port on a port a socket listens on; then the same with the spool
    # held (a running poller would hold both); then the health server off.
    s = settings(tmp_path, health={"enabled": True, "port": listener})
    (check,) = preflight.check_ports(s, holder=None)
    assert check.status == "fail"
    assert "POLLER_HEALTH__PORT" in check.detail
    (check,) = preflight.check_ports(s, holder="4242")
    assert check.status == "note"
    assert "pid 4242" in check.detail
    assert preflight.check_ports(settings(tmp_path, health={"port": listener}), None) == []


def test_the_forward_port_is_checked_when_applications_are_forwarded(
    tmp_path: Path, listener: int
) -> None:
    # Tried: a forward application with the receiver on a busy port, then on the health
    # server's own address, then both free.
    forward = {"applications": ["f"], "token": "t" * 16, "port": listener}
    s = settings(tmp_path, infobip={"applications": []}, forward=forward)
    (check,) = preflight.check_ports(s, None)
    assert (check.name, check.status) == ("forward port", "fail")
    assert "POLLER_FORWARD__PORT" in check.detail

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    same = settings(
        tmp_path,
        infobip={"applications": []},
        forward={**forward, "port": free},
        health={"enabled": True, "port": free},
    )
    health, receiver = preflight.check_ports(same, None)
    assert health.status == "ok"
    assert receiver.status == "fail"
    assert "health server" in receiver.detail


def test_a_host_that_is_not_this_machine_names_the_host_setting(tmp_path: Path) -> None:
    # Tried: a TEST-NET address (RFC 5737), which no interface of this machine has.
    s = settings(tmp_path, health={"enabled": True, "host": "192.0.2.1", "port": 9464})
    (check,) = preflight.check_ports(s, None)
    assert check.status == "fail"
    assert "POLLER_HEALTH__HOST" in check.detail


def test_exit_codes() -> None:
    ok, note = Check("a", "ok", ""), Check("b", "note", "")
    assert preflight.exit_code(preflight.Report([ok, note])) == 0
    assert preflight.exit_code(preflight.Report([ok, Check("c", "fail", "")])) == 1
    assert preflight.exit_code(preflight.Report([Check("settings", "fail", "")])) == 2
