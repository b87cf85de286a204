"""Durable local spool: pulled messages live here until Redis confirmed them.

A SQLite file in WAL mode with ``synchronous=FULL``: a message is on disk before anything
else is done with it (design invariant 1). Rows are numbered by an ``AUTOINCREMENT``
sequence, which the Redis high-water mark relies on: a plain rowid would reuse numbers
after the table was emptied, and such rows would be skipped as "already written".

Sequence numbers are only monotonic within one run: a backup put back, or a copy of the
file, numbers new rows again from where the copy stopped. So every open gets a fresh random
``writer_id`` and every row records the writer that appended it; the sink keeps one mark per
stream and writer. Rows left by an earlier run keep their writer (a replay is deduplicated
against that run's mark), new rows never meet a mark from the file's past.

One process at a time: ``open`` takes an exclusive ``flock`` on ``<spool>.lock`` for the
life of the spool. ``peek`` reads the counters without the lock (``poller status``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import structlog

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 4
# Free space below which the spool's file system is reported as full (readiness), whatever a
# source needs on top for what it is about to write.
DISK_FLOOR = 1 << 20
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    app         TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    pulled_at   TEXT NOT NULL,
    payload     TEXT NOT NULL,
    size        INTEGER NOT NULL,
    spooled_at  REAL NOT NULL,
    writer      TEXT NOT NULL,
    dedupe      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE quarantine (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    raw           BLOB NOT NULL,
    reason        TEXT NOT NULL,
    app           TEXT,
    pulled_at     TEXT NOT NULL,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    writer        TEXT NOT NULL
);
CREATE INDEX quarantine_pending ON quarantine (seq) WHERE dead_lettered = 0;
CREATE TABLE journals (
    id TEXT PRIMARY KEY
) WITHOUT ROWID;
"""
_TABLES = frozenset({"meta", "messages", "quarantine", "journals", "sqlite_sequence"})
_JOURNALS = "CREATE TABLE IF NOT EXISTS journals (id TEXT PRIMARY KEY) WITHOUT ROWID"
_SELECT_MESSAGES = (
    "SELECT seq, app, message_id, received_at, pulled_at, payload, writer, dedupe FROM messages"
)
_SELECT_QUARANTINE = "SELECT seq, raw, reason, app, pulled_at, writer FROM quarantine"
_MARK_DEAD = "UPDATE quarantine SET dead_lettered = 1 WHERE dead_lettered = 0"


# The two row types every message passes through are named tuples, not frozen dataclasses:
# at tens of thousands of messages a second, a frozen dataclass's per-field __setattr__ in
# __init__ was a visible share of the CPU.


class NewMessage(NamedTuple):
    """A pulled message about to be spooled; ``payload`` is the message JSON as sent (bytes,
    or text from older spools)."""

    app: str
    message_id: str
    received_at: str
    pulled_at: str
    payload: bytes | str
    # Written only if its messageId is not in the stream's recent ids (a forwarded message:
    # Infobip delivers again when it saw no 2xx).
    dedupe: bool = False


@dataclass(frozen=True)
class NewQuarantine:
    """Something pulled that could not be parsed into a message."""

    raw: bytes
    reason: str
    app: str | None
    pulled_at: str


class SpoolEntry(NamedTuple):
    """A spooled message waiting for Redis.

    ``writer`` is the ``writer_id`` of the run that appended it (the sink's high-water mark
    is kept per writer); empty means "the sink's instance id"."""

    seq: int
    app: str
    message_id: str
    received_at: str
    pulled_at: str
    payload: bytes | str
    writer: str = ""
    dedupe: bool = False


@dataclass(frozen=True)
class QuarantineEntry:
    """A quarantined body, kept for inspection; ``writer`` as in SpoolEntry."""

    seq: int
    raw: bytes
    reason: str
    app: str | None
    pulled_at: str
    writer: str = ""


@dataclass(frozen=True)
class SpoolStats:
    """Spool gauges for metrics and readiness."""

    rows: int
    bytes: int
    oldest_age_s: float | None
    quarantined: int
    quarantine_pending: int
    instance_id: str | None = None


@dataclass(frozen=True)
class DiskRoom:
    """The spool's file system: bytes this process may still write, and whether it is
    read-only (mounted so, or turned so by the kernel after an error)."""

    free: int
    read_only: bool


class SpoolError(Exception):
    """The spool file cannot be used; the message names the file and the problem."""


def _size(message: NewMessage) -> int:
    """Bytes of a row's text fields, as UTF-8."""
    payload = message.payload
    size = len(payload) if isinstance(payload, bytes) else len(payload.encode())
    for part in (message.app, message.message_id, message.received_at, message.pulled_at):
        size += len(part.encode())
    return size


class Spool:
    """A crash-safe FIFO of pulled messages plus a quarantine table."""

    def __init__(self, conn: sqlite3.Connection, path: Path, max_rows: int, max_bytes: int):
        self._conn = conn
        self._path = path
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._closed = False
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.instance_id = ""
        # A fresh id per open: the rows this run appends never meet a mark from the past.
        self.writer_id = uuid.uuid4().hex
        self._rows = 0
        self._bytes = 0
        self._quarantined = 0
        self._quarantine_pending = 0
        self._oldest_spooled_at: float | None = None
        self._was_full = False
        # Free bytes the spool's sources want on its file system (readiness checks it).
        self.min_free = DISK_FLOOR

    @classmethod
    def open(cls, path: Path | str, *, max_rows: int, max_bytes: int) -> Spool:
        """Open (or create) the spool file; never deletes or rewrites an unusable one.

        Takes an exclusive lock on ``<spool>.lock`` (held until ``close``): a second process
        on the same file gets a SpoolError naming the pid that holds it."""
        path = Path(path)
        _check_file(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"spool {path}: cannot create its directory: {exc}") from exc
        lock_fd = _take_lock(path)
        try:
            _private(path)
            try:
                conn = sqlite3.connect(
                    _uri(path, "rw"), uri=True, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {path}: cannot open: {exc}") from exc
            spool = cls(conn, path, max_rows, max_bytes)
            try:
                spool._init()
            except SpoolError:
                conn.close()
                raise
            except sqlite3.Error as exc:
                conn.close()
                raise SpoolError(f"spool {path}: cannot use the file: {exc}") from exc
        except BaseException:
            os.close(lock_fd)
            raise
        spool._lock_fd = lock_fd
        return spool

    @staticmethod
    def peek(path: Path | str) -> SpoolStats | None:
        """Counters of a spool file without opening it for writing and without its lock, so
        that ``poller status`` works while the daemon runs; None when there is no file.

        A read-only connection: it never migrates, rewrites or locks out the owner. The
        counts come from SQL (a scan of the messages table)."""
        path = Path(path)
        if not path.exists():
            return None
        _check_file(path, write=False)
        try:
            conn = sqlite3.connect(_uri(path, "ro"), uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {path}: cannot open read-only: {exc}") from exc
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            return _peek(conn, path)
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {path}: cannot read: {exc}") from exc
        finally:
            conn.close()

    def _init(self) -> None:
        conn = self._conn
        version = _check_schema(conn, self._path)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"spool {self._path}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        if version == 0:
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('instance_id', ?)", (uuid.uuid4().hex,)
                )
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # Fail now, not at the first append, when the file or its directory is read-only.
        with self._transaction():
            pass
        row = conn.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
        if row is None:
            raise SpoolError(f"spool {self._path}: instance id missing")
        self.instance_id = str(row[0])
        if version == 1:
            self._migrate_v1()
        if version in (1, 2, 3):
            # Version 3 added the journals table, 4 the dedupe flag (a column default: no
            # row is rewritten, whatever the size of the spool).
            with self._transaction():
                self._conn.execute(_JOURNALS)
                if version < 4:
                    self._conn.execute(
                        "ALTER TABLE messages ADD COLUMN dedupe INTEGER NOT NULL DEFAULT 0"
                    )
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._rows, self._bytes = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM messages"
        ).fetchone()
        self._quarantined, self._quarantine_pending = conn.execute(
            "SELECT count(*), coalesce(sum(dead_lettered = 0), 0) FROM quarantine"
        ).fetchone()

    def _migrate_v1(self) -> None:
        """Version 1 had no writer column: its rows were written under the instance id's
        mark, so that is their writer (a replay still deduplicates against that mark).

        A column default instead of an UPDATE: SQLite adds such a column without rewriting
        a single row, whatever the size of the spool."""
        literal = "'" + self.instance_id.replace("'", "''") + "'"
        with self._transaction():
            for table in ("messages", "quarantine"):
                self._conn.execute(
                    f"ALTER TABLE {table} ADD COLUMN writer TEXT NOT NULL DEFAULT {literal}"
                )
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    def _fail(self, action: str, exc: sqlite3.Error) -> SpoolError:
        return SpoolError(f"spool {self._path}: {action} failed: {exc}")

    def append(
        self,
        messages: Sequence[NewMessage],
        quarantine: Sequence[NewQuarantine] = (),
        *,
        journal: str | None = None,
        forget: Collection[str] = (),
    ) -> None:
        """Store messages and quarantined bodies in one fsynced transaction.

        ``journal``: the id of the journal entry these rows come from, recorded in the same
        transaction (a journal file found at start whose id is recorded was spooled already:
        salvaging it again would write its messages twice). ``forget``: ids of journal files
        deleted since, whose records are no longer needed."""
        if not messages and not quarantine and journal is None and not forget:
            return
        now = time.time()
        writer = self.writer_id
        rows = [
            (
                m.app,
                m.message_id,
                m.received_at,
                m.pulled_at,
                m.payload,
                _size(m),
                now,
                writer,
                m.dedupe,
            )
            for m in messages
        ]
        with self._lock:
            try:
                with self._transaction():
                    self._conn.executemany(
                        "INSERT INTO messages (app, message_id, received_at, pulled_at, payload,"
                        " size, spooled_at, writer, dedupe) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    self._conn.executemany(
                        "INSERT INTO quarantine (raw, reason, app, pulled_at, writer)"
                        " VALUES (?, ?, ?, ?, ?)",
                        [(q.raw, q.reason, q.app, q.pulled_at, writer) for q in quarantine],
                    )
                    if forget:
                        self._conn.executemany(
                            "DELETE FROM journals WHERE id = ?", [(i,) for i in forget]
                        )
                    if journal is not None:
                        self._conn.execute(
                            "INSERT OR IGNORE INTO journals (id) VALUES (?)", (journal,)
                        )
            except sqlite3.Error as exc:
                raise self._fail("append", exc) from exc
            self._rows += len(rows)
            self._bytes += sum(row[5] for row in rows)
            self._quarantined += len(quarantine)
            self._quarantine_pending += len(quarantine)
        self._note_cap()

    def spooled_journals(self, ids: Collection[str]) -> set[str]:
        """Which of these journal ids were recorded by an append (their rows are spooled)."""
        with self._lock:
            try:
                return {
                    str(row[0])
                    for row in self._conn.execute("SELECT id FROM journals")
                    if row[0] in ids
                }
            except sqlite3.Error as exc:
                raise self._fail("read journals", exc) from exc

    def forget_journals(self) -> None:
        """Drop every journal record (at start, once every journal file was dealt with)."""
        with self._lock:
            try:
                with self._transaction():
                    self._conn.execute("DELETE FROM journals")
            except sqlite3.Error as exc:
                raise self._fail("forget journals", exc) from exc

    def pending(
        self, limit: int, exclude_apps: Collection[str] = (), after: int = 0
    ) -> list[SpoolEntry]:
        """Messages not yet confirmed by Redis, lowest sequence first, above ``after``.

        ``exclude_apps``: applications whose rows to leave out (a stream Redis refuses is
        parked by its caller; its rows must not fill every slice)."""
        where, params = _exclude("app", exclude_apps, "seq > ?")
        with self._lock:
            try:
                cursor = self._conn.execute(
                    f"{_SELECT_MESSAGES} {where} ORDER BY seq LIMIT ?",
                    (after, *params, limit),
                )
                return list(map(SpoolEntry._make, cursor))
            except sqlite3.Error as exc:
                raise self._fail("read", exc) from exc

    def commit(self, up_to_seq: int) -> int:
        """Delete every message with ``seq <= up_to_seq``; returns how many went."""
        return self._delete("seq <= ?", [(up_to_seq,)])

    def commit_seqs(self, seqs: Iterable[int]) -> int:
        """Delete exactly these messages; returns how many went."""
        return self._delete("seq = ?", [(seq,) for seq in seqs])

    def _delete(self, where: str, params: list[tuple[int]]) -> int:
        if not params:
            return 0
        with self._lock:
            count = size = 0
            try:
                with self._transaction():
                    for param in params:
                        n, s = self._conn.execute(
                            f"SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE {where}",  # noqa: S608  # nosec B608  # `where` is one of two literal clauses; values are bound
                            param,
                        ).fetchone()
                        if n:
                            self._conn.execute(f"DELETE FROM messages WHERE {where}", param)  # noqa: S608  # nosec B608  # `where` is one of two literal clauses; values are bound
                        count += n
                        size += s
            except sqlite3.Error as exc:
                raise self._fail("commit", exc) from exc
            self._rows -= count
            self._bytes -= size
        self._note_cap()
        return count

    def quarantine_pending(
        self, limit: int, exclude_apps: Collection[str] = (), after: int = 0
    ) -> list[QuarantineEntry]:
        """Quarantined bodies not yet written to the dead-letter stream, lowest first, above
        ``after``.

        ``exclude_apps`` as in ``pending``; ``""`` stands for bodies with no application."""
        where, params = _exclude("coalesce(app, '')", exclude_apps, "dead_lettered = 0", "seq > ?")
        return self._quarantine_rows(where, (after, *params), limit)

    def quarantined(self, limit: int) -> list[QuarantineEntry]:
        """All quarantined bodies (dead-lettered or not), lowest first, for inspection."""
        return self._quarantine_rows("", (), limit)

    def _quarantine_rows(
        self, where: str, params: Sequence[str | int], limit: int
    ) -> list[QuarantineEntry]:
        with self._lock:
            try:
                cursor = self._conn.execute(
                    f"{_SELECT_QUARANTINE} {where} ORDER BY seq LIMIT ?",
                    (*params, limit),
                )
                return [QuarantineEntry(s, bytes(r), why, a, p, w) for s, r, why, a, p, w in cursor]
            except sqlite3.Error as exc:
                raise self._fail("read quarantine", exc) from exc

    def mark_dead_lettered(self, up_to_seq: int) -> None:
        """Flag quarantined bodies up to ``up_to_seq`` as written; the bytes stay."""
        self._mark_dead("seq <= ?", [(up_to_seq,)])

    def mark_dead_lettered_seqs(self, seqs: Iterable[int]) -> None:
        """Flag exactly these quarantined bodies as written; the bytes stay."""
        self._mark_dead("seq = ?", [(seq,) for seq in seqs])

    def _mark_dead(self, where: str, params: list[tuple[int]]) -> None:
        if not params:
            return
        with self._lock:
            n = 0
            try:
                with self._transaction():
                    for param in params:
                        n += self._conn.execute(
                            f"{_MARK_DEAD} AND {where}",
                            param,
                        ).rowcount
            except sqlite3.Error as exc:
                raise self._fail("mark dead-lettered", exc) from exc
            self._quarantine_pending -= n

    def stats(self) -> SpoolStats:
        """Counters kept in memory, plus the age of the oldest row (one index lookup).

        Never raises: on a closed spool, or when the age cannot be read, the last known
        oldest row is used."""
        with self._lock:
            if not self._closed:
                try:
                    row = self._conn.execute(
                        "SELECT spooled_at FROM messages ORDER BY seq LIMIT 1"
                    ).fetchone()
                except sqlite3.Error:
                    pass
                else:
                    self._oldest_spooled_at = None if row is None else float(row[0])
            oldest = self._oldest_spooled_at
            return SpoolStats(
                rows=self._rows,
                bytes=self._bytes,
                oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest),
                quarantined=self._quarantined,
                quarantine_pending=self._quarantine_pending,
                instance_id=self.instance_id or None,
            )

    def has_room(self, incoming: int = 0) -> bool:
        """True while the spool is below its caps with ``incoming`` more rows counted."""
        return self._rows + incoming < self.max_rows and self._bytes < self.max_bytes

    def disk_room(self) -> DiskRoom | None:
        """Free space and the read-only flag of the spool's file system (statvfs of its
        directory: cheap enough for every pull); None when they cannot be read."""
        return disk_room(self._path.parent)

    @property
    def full(self) -> bool:
        """True when the spool reached its row or byte cap: the sources take nothing more
        until the sink drains it (the one place that says so)."""
        return self._rows >= self.max_rows or self._bytes >= self.max_bytes

    def _note_cap(self) -> None:
        """Log each crossing of the cap, once."""
        full = self.full
        if full == self._was_full:
            return
        self._was_full = full
        if full:
            log.warning(
                "spool is full: taking no messages until the sink drains it",
                rows=self._rows,
                bytes=self._bytes,
            )
        else:
            log.info("spool has room again: taking messages", rows=self._rows)

    def disk_problem(self, need: int) -> str | None:
        """Why the spool's file system cannot take ``need`` more bytes now, or None."""
        room = self.disk_room()
        if room is None:
            return None
        where = self._path.parent
        if room.read_only:
            return f"the spool's file system ({where}) is read-only"
        if room.free < need:
            return (
                f"the spool's file system ({where}) has {room.free / 2**20:.1f} MiB free, "
                f"below the {need / 2**20:.1f} MiB needed"
            )
        return None

    def problem(self) -> str | None:
        """What keeps the spool from taking messages now (readiness), or None."""
        if self.full:
            return (
                f"spool is at its cap ({self._rows} rows, {self._bytes} bytes): taking no"
                " messages until the sink takes the backlog"
            )
        problem = self.disk_problem(self.min_free)
        if problem is None and (refused := self._refuses_files()) is not None:
            problem = f"the spool's file system ({self._path.parent}) refuses writes: {refused}"
        return problem

    def _refuses_files(self) -> str | None:
        """Why no new file can be made beside the spool now, or None."""
        return refuses_files(self._path)

    @property
    def path(self) -> Path:
        """The spool file."""
        return self._path

    def close(self) -> None:
        """Close the file and release its lock; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.close()
            finally:
                if self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def disk_room(directory: Path) -> DiskRoom | None:
    """Free space and the read-only flag of the file system of ``directory``; None when they
    cannot be read."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return DiskRoom(st.f_bavail * st.f_frsize, bool(st.f_flag & os.ST_RDONLY))


def refuses_files(path: Path, *, lock: bool = False) -> str | None:
    """Why no new file can be made beside the spool file ``path`` now (also a file system the
    kernel turned read-only after an error without saying so to statvfs) and, with ``lock``,
    locked as the spool's lock file is; None when it can. The probe file is removed."""
    probe = path.with_name(f".{path.name}.probe-{uuid.uuid4().hex}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return f"cannot lock a file there: {exc.strerror or exc}"
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def lock_holder(path: Path | str) -> str | None:
    """The pid of the process that holds the spool's lock (as its lock file names it, or
    "unknown"), or None when no process does. Never creates the lock file; a free lock is
    taken and released at once (a poller starting in that instant is told the spool is in
    use, and may start again)."""
    path = Path(path)
    lock_path = _lock_path(path)
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None  # no process has ever locked it: every holder keeps the file
    except OSError as exc:
        raise SpoolError(f"spool {path}: cannot open its lock file {lock_path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError as exc:
        raise SpoolError(f"spool {path}: cannot lock {lock_path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)  # releases the flock, if it was taken
    return None


def _holder(fd: int) -> str:
    """The pid the lock file names (its holder wrote it), or "unknown"."""
    with contextlib.suppress(OSError, ValueError):
        return str(int(os.pread(fd, 32, 0).decode().strip()))
    return "unknown"


def _check_schema(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version, after refusing what is not a spool this build reads."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    tables = {name for name in tables if not name.startswith("sqlite_autoindex")}
    if version == 0 and tables:
        raise SpoolError(f"spool {path}: not a spool file (it holds tables {sorted(tables)})")
    if version > SCHEMA_VERSION:
        raise SpoolError(
            f"spool {path}: schema version {version} is newer than this build "
            f"reads ({SCHEMA_VERSION}); upgrade the poller"
        )
    if version >= 1 and not {"meta", "messages", "quarantine"} <= tables:
        raise SpoolError(f"spool {path}: schema version {version} but tables missing")
    return version


def _peek(conn: sqlite3.Connection, path: Path) -> SpoolStats:
    conn.execute("BEGIN")  # one snapshot for every count
    try:
        if _check_schema(conn, path) == 0:
            return SpoolStats(0, 0, None, 0, 0)
        rows, size, oldest = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), min(spooled_at) FROM messages"
        ).fetchone()
        quarantined, pending = conn.execute(
            "SELECT count(*), coalesce(sum(dead_lettered = 0), 0) FROM quarantine"
        ).fetchone()
        row = conn.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
    finally:
        conn.execute("COMMIT")
    return SpoolStats(
        rows=rows,
        bytes=size,
        oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest),
        quarantined=quarantined,
        quarantine_pending=pending,
        instance_id=None if row is None else str(row[0]),
    )


def _exclude(column: str, values: Collection[str], *conditions: str) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause with ``conditions`` and ``column NOT IN values``, and the parameters of
    the latter (those of ``conditions`` come first, from the caller)."""
    params = tuple(dict.fromkeys(values))
    parts = list(conditions)
    if params:
        parts.append(f"{column} NOT IN ({', '.join('?' * len(params))})")
    return ("WHERE " + " AND ".join(parts) if parts else ""), params


def _uri(path: Path, mode: str) -> str:
    """An SQLite URI naming exactly this file: ``#``, ``?`` and ``%`` in a name are literal."""
    return f"file:{quote(str(path.absolute()), safe='/')}?mode={mode}"


def _private(path: Path) -> None:
    """Create the spool file readable by its owner only (message texts are personal data),
    or make an existing one so; SQLite gives its -wal and -shm files the file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SpoolError(f"spool {path}: cannot create: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, 0o600)
    except OSError as exc:
        raise SpoolError(f"spool {path}: cannot make it private: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(path.name + suffix), 0o600, follow_symlinks=False)


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _take_lock(path: Path) -> int:
    """An exclusive, non-blocking flock on ``<spool>.lock``, with this process' pid in it.

    The lock file is never deleted: unlinking a lock file another process is about to lock
    would let two processes lock two different files."""
    lock_path = _lock_path(path)
    try:
        # Never through a link: a planted symlink must not make us truncate its target.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SpoolError(
            f"spool {path}: cannot create its lock file {lock_path}: {exc.strerror or exc}"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise SpoolError(f"spool {path} is in use by another process (pid {holder})") from None
        except OSError as exc:
            raise SpoolError(
                f"spool {path}: cannot lock {lock_path}: {exc.strerror or exc}"
            ) from exc
        # Only for the message above: a full disk must not keep the spool from opening.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _check_file(path: Path, *, write: bool = True) -> None:
    """Refuse anything that is not an SQLite file before SQLite gets to touch it."""
    if path.is_dir():
        raise SpoolError(f"spool {path}: is a directory, expected a file")
    if not path.exists():
        return
    if write and not os.access(path, os.R_OK | os.W_OK):
        with contextlib.suppress(OSError):
            if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
                raise SpoolError(f"spool {path}: its file system is read-only")
        raise SpoolError(f"spool {path}: not readable and writable by this user")
    if not write and not os.access(path, os.R_OK):
        raise SpoolError(f"spool {path}: not readable by this user")
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise SpoolError(f"spool {path}: cannot read: {exc.strerror or exc}") from exc
    # An empty file is what a crash during the very first open can leave; SQLite adopts it.
    if header and header != _SQLITE_MAGIC:
        raise SpoolError(f"spool {path}: not an SQLite file (unexpected header); left untouched")
