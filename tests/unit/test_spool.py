"""The spool: order, durability of sequence numbers, refusal of unusable files."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from poller.spool import NewMessage, NewQuarantine, Spool, SpoolError
from tests.support.spool import make_v1_spool
from tests.support.spool import spool_message as msg

BIG = 10**9


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool.open(tmp_path / "spool.db", max_rows=BIG, max_bytes=BIG)
    yield s
    s.close()


def test_append_pending_commit_in_order(spool: Spool) -> None:
    spool.append([msg(i) for i in range(5)])
    spool.append([msg(i) for i in range(5, 8)])
    pending = spool.pending(100)
    assert [p.message_id for p in pending] == [f"m{i}" for i in range(8)]
    seqs = [p.seq for p in pending]
    assert seqs == sorted(seqs)
    assert pending[0].payload == msg(0).payload
    assert pending[0].received_at == msg(0).received_at

    assert [p.message_id for p in spool.pending(3)] == ["m0", "m1", "m2"]
    assert spool.commit(seqs[2]) == 3
    assert [p.message_id for p in spool.pending(100)] == [f"m{i}" for i in range(3, 8)]
    assert spool.commit(seqs[2]) == 0
    assert spool.commit_seqs([seqs[4], seqs[6], 12345]) == 2
    assert [p.message_id for p in spool.pending(100)] == ["m3", "m5", "m7"]


def test_sequence_never_reused_after_full_delete_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        s.append([msg(i) for i in range(10)])
        top = s.pending(100)[-1].seq
        assert s.commit(top) == 10
        assert s.pending(100) == []
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        s.append([msg(99)])
        (entry,) = s.pending(100)
        # A reused number would sit at or below Redis' high-water mark and be skipped: lost.
        assert entry.seq > top


def test_instance_id_created_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "spool.db"
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        first = s.instance_id
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        assert s.instance_id == first
    assert len(first) == 32
    with Spool.open(tmp_path / "other.db", max_rows=BIG, max_bytes=BIG) as s:
        assert s.instance_id != first


def test_garbage_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    with pytest.raises(SpoolError, match=r"spool\.db.*not an SQLite file"):
        Spool.open(path, max_rows=BIG, max_bytes=BIG)
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.db"]


def test_corrupt_sqlite_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        s.append([msg(i) for i in range(50)])
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(4096 - 100)  # header survives, schema page does not
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolError, match=r"spool\.db"):
        Spool.open(path, max_rows=BIG, max_bytes=BIG)
    assert path.read_bytes() == bytes(data)


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SpoolError, match="not a spool file"):
        Spool.open(path, max_rows=BIG, max_bytes=BIG)
    assert path.read_bytes() == before


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool.open(path, max_rows=BIG, max_bytes=BIG).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolError, match="schema version 99"):
        Spool.open(path, max_rows=BIG, max_bytes=BIG)


def test_directory_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "spool.db").mkdir()
    with pytest.raises(SpoolError, match="is a directory"):
        Spool.open(tmp_path / "spool.db", max_rows=BIG, max_bytes=BIG)


def test_disk_full_leaves_nothing_half_written(spool: Spool) -> None:
    spool.append([msg(0)])
    # SQLITE_FULL, the same error a full disk gives, from a page budget just above the use.
    pages = spool._conn.execute("PRAGMA page_count").fetchone()[0]
    spool._conn.execute(f"PRAGMA max_page_count={pages + 2}")
    big = [msg(i) for i in range(1, 2000)]
    with pytest.raises(SpoolError, match="append failed"):
        spool.append(big)
    assert [p.message_id for p in spool.pending(10_000)] == ["m0"]
    assert spool.stats().rows == 1
    spool._conn.execute("PRAGMA max_page_count=1073741823")
    spool.append(big)
    assert len(spool.pending(10_000)) == 2000


def test_caps_make_it_full_and_commit_frees_it(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "rows.db", max_rows=3, max_bytes=BIG) as s:
        s.append([msg(0), msg(1)])
        assert not s.full
        s.append([msg(2)])
        assert s.full
        s.commit(s.pending(1)[0].seq)
        assert not s.full
    with Spool.open(tmp_path / "bytes.db", max_rows=BIG, max_bytes=150) as s:
        s.append([msg(0)])
        assert not s.full
        s.append([msg(1)])
        assert s.full


def test_stats_counters_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        empty = s.stats()
        assert (empty.rows, empty.bytes, empty.oldest_age_s) == (0, 0, None)
        s.append(
            [msg(i) for i in range(4)],
            [NewQuarantine(raw=b"\xff{not json", reason="bad json", app=None, pulled_at="t")],
        )
        stats = s.stats()
        assert stats.rows == 4
        assert stats.bytes > 4 * len(msg(0).payload)
        assert stats.oldest_age_s is not None
        assert stats.oldest_age_s >= 0
        assert (stats.quarantined, stats.quarantine_pending) == (1, 1)
        s.commit(s.pending(1)[0].seq)
        after = s.stats()
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        assert s.stats().rows == after.rows == 3
        assert s.stats().bytes == after.bytes
        assert s.stats().quarantined == 1


def test_quarantine_kept_after_dead_lettering(spool: Spool) -> None:
    bodies = [
        NewQuarantine(raw=b"\x00\xffraw", reason="not json", app="app1", pulled_at="t1"),
        NewQuarantine(raw=b"{}", reason="no messageId", app=None, pulled_at="t2"),
    ]
    spool.append([msg(0)], bodies)
    pending = spool.quarantine_pending(10)
    assert [(q.raw, q.reason, q.app) for q in pending] == [
        (b"\x00\xffraw", "not json", "app1"),
        (b"{}", "no messageId", None),
    ]
    spool.mark_dead_lettered(pending[0].seq)
    assert [q.reason for q in spool.quarantine_pending(10)] == ["no messageId"]
    assert spool.stats().quarantine_pending == 1
    spool.mark_dead_lettered(pending[1].seq)
    assert spool.quarantine_pending(10) == []
    assert [q.raw for q in spool.quarantined(10)] == [b"\x00\xffraw", b"{}"]
    assert spool.stats().quarantined == 2


def test_usable_from_several_threads(spool: Spool) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                spool.append([msg(n * 100 + i)])
                spool.pending(5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert spool.stats().rows == 80
    seqs = [p.seq for p in spool.pending(1000)]
    assert len(set(seqs)) == 80


def test_every_open_is_a_new_writer_recorded_on_each_row(tmp_path: Path) -> None:
    # A restored backup numbers rows again from where it stopped; the writer tells them apart.
    path = tmp_path / "spool.db"
    bad = NewQuarantine(raw=b"x", reason="r", app=None, pulled_at="t")
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        first = s.writer_id
        s.append([msg(0)], [bad])
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        second = s.writer_id
        s.append([msg(1)], [bad])
        assert [p.writer for p in s.pending(10)] == [first, second]
        assert [q.writer for q in s.quarantine_pending(10)] == [first, second]
        assert [q.writer for q in s.quarantined(10)] == [first, second]
    assert len({first, second}) == 2
    assert len(first) == 32


def test_version_1_spool_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    make_v1_spool(path)
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        assert s.instance_id == "v1instance"
        # Leftovers keep the instance id as writer: their old marks still deduplicate them.
        old = s.pending(10)
        assert [(p.message_id, p.writer) for p in old] == [
            ("old1", "v1instance"),
            ("old2", "v1instance"),
        ]
        assert [q.writer for q in s.quarantine_pending(10)] == ["v1instance"]
        assert (s.stats().rows, s.stats().bytes, s.stats().quarantine_pending) == (2, 20, 1)
        s.append([msg(3)])
        new = s.pending(10)[-1]
        assert (new.writer, new.seq > old[-1].seq) == (s.writer_id, True)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "journals" in tables
    conn.close()
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        assert [p.message_id for p in s.pending(10)] == ["old1", "old2", "m3"]


def test_peek_reads_an_open_spool_without_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    assert Spool.peek(path) is None
    with Spool.open(path, max_rows=BIG, max_bytes=BIG) as s:
        s.append(
            [msg(i) for i in range(5)],
            [NewQuarantine(raw=b"x", reason="r", app=None, pulled_at="t")],
        )
        s.commit(s.pending(1)[0].seq)
        peeked = Spool.peek(path)
        assert peeked is not None
        own = s.stats()
        assert (peeked.rows, peeked.bytes, peeked.quarantined, peeked.quarantine_pending) == (
            own.rows,
            own.bytes,
            1,
            1,
        )
        assert peeked.instance_id == s.instance_id
        assert peeked.oldest_age_s is not None
        s.append([msg(9)])  # the owner keeps writing while others peek
        assert Spool.peek(path).rows == 5  # type: ignore[union-attr]
    peeked = Spool.peek(path)
    assert peeked is not None
    assert peeked.rows == 5
    make_v1_spool(tmp_path / "v1.db")
    old = Spool.peek(tmp_path / "v1.db")
    assert old is not None
    assert (old.rows, old.instance_id) == (2, "v1instance")
    (tmp_path / "garbage.db").write_bytes(b"x" * 100)
    with pytest.raises(SpoolError, match="not an SQLite file"):
        Spool.peek(tmp_path / "garbage.db")


def test_stats_of_a_closed_spool_are_the_last_counters(tmp_path: Path) -> None:
    s = Spool.open(tmp_path / "spool.db", max_rows=BIG, max_bytes=BIG)
    s.append([msg(i) for i in range(3)])
    before = s.stats()
    s.close()
    after = s.stats()
    assert (after.rows, after.bytes, after.quarantined) == (before.rows, before.bytes, 0)
    assert after.oldest_age_s is not None
    assert after.oldest_age_s >= (before.oldest_age_s or 0)
    with pytest.raises(SpoolError):
        s.pending(1)


def test_pending_leaves_out_parked_apps(spool: Spool) -> None:
    spool.append([msg(0, "bad"), msg(1, "good"), msg(2, "bad"), msg(3, "other")])
    assert [p.message_id for p in spool.pending(2, exclude_apps={"bad"})] == ["m1", "m3"]
    assert [p.message_id for p in spool.pending(10, exclude_apps=["bad", "other"])] == ["m1"]
    assert len(spool.pending(10, exclude_apps=())) == 4
    bodies = [
        NewQuarantine(raw=b"1", reason="r", app="bad", pulled_at="t"),
        NewQuarantine(raw=b"2", reason="r", app=None, pulled_at="t"),
        NewQuarantine(raw=b"3", reason="r", app="good", pulled_at="t"),
    ]
    spool.append([], bodies)
    assert [q.raw for q in spool.quarantine_pending(10, exclude_apps={"bad"})] == [b"2", b"3"]
    assert [q.raw for q in spool.quarantine_pending(10, exclude_apps={""})] == [b"1", b"3"]
    pending = spool.quarantine_pending(10)
    spool.mark_dead_lettered_seqs([pending[0].seq, pending[2].seq])
    assert [q.raw for q in spool.quarantine_pending(10)] == [b"2"]
    assert spool.stats().quarantine_pending == 1


def test_a_symlink_in_place_of_the_lock_file_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    # Tried: `ln -s victim.txt spool.db.lock` before the first open.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "spool.db.lock").symlink_to(victim)
    with pytest.raises(SpoolError, match="lock"):
        Spool.open(tmp_path / "spool.db", max_rows=10, max_bytes=10**6)
    assert victim.read_text() == "precious"


def test_odd_characters_in_the_path_name_one_file_each(tmp_path: Path) -> None:
    # Tried: q.db, q.db#other and q%2edb, which once opened the same database under three
    # lock files.
    names = ["q.db", "q.db#other", "q%2edb", "q.db?mode=ro"]
    spools = [Spool.open(tmp_path / name, max_rows=10, max_bytes=10**6) for name in names]
    try:
        for n, spool in enumerate(spools):
            spool.append([NewMessage("app", f"m{n}", "r", "p", "{}")])
        assert [s.pending(10)[0].message_id for s in spools] == ["m0", "m1", "m2", "m3"]
    finally:
        for spool in spools:
            spool.close()
    for name in names:
        assert (tmp_path / name).stat().st_size > 0


def test_spool_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    # Tried: umask 022 (files world-readable by default); and a file left 0644 by an older run.
    old = os.umask(0o022)
    try:
        with Spool.open(tmp_path / "spool.db", max_rows=10, max_bytes=10**6) as spool:
            spool.append([NewMessage("app", "m1", "r", "p", '{"text": "personal"}')])
            for name in ("spool.db", "spool.db-wal", "spool.db-shm", "spool.db.lock"):
                assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
        os.chmod(tmp_path / "spool.db", 0o644)
        Spool.open(tmp_path / "spool.db", max_rows=10, max_bytes=10**6).close()
        assert (tmp_path / "spool.db").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
