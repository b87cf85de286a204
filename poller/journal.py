"""The spool's body journal: each pull answer written to a file of its own as its bytes arrive.

Once Infobip has sent an answer, its messages exist nowhere else. Bytes written to a file
survive the death of the process even before an fsync (they are in the kernel's page cache);
only the machine's death needs the fsync, which the spool's append gives at the end of the
body. So a kill while an answer arrives, or while it is parsed and spooled, loses only what
was still in the socket: at the next start, ``Journal.leftovers`` hands back every file a
previous run left, and the pull source salvages every whole item from it.

Files live in ``<spool>.journal/`` (mode 0700, files 0600), one per pull in flight:
a header line (``{"id": ..., "pulled_at": ...}``) then the body as received. A file is
deleted once its rows are in the spool; the spool records the file's id in the same
transaction as its rows, so a file found at start that was spooled already (a kill between
the append and the delete) is deleted, never spooled twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

SUFFIX = ".body"


class JournalError(Exception):
    """The journal directory cannot be used; the message names it."""


@dataclass(frozen=True)
class Leftover:
    """A journal file a previous run left: its id, when it was pulled, the bytes it holds."""

    id: str
    pulled_at: str
    body: bytes
    path: Path


class JournalEntry:
    """One answer's file, written as the answer arrives.

    A write that fails (disk full) is logged once and the entry gives up on its file: the
    body is also held in memory by the client, and the spool's append is what makes it
    durable; the journal only narrows the window of a kill."""

    def __init__(self, path: Path, entry_id: str, fd: int | None) -> None:
        self.path = path
        self.id = entry_id
        self._fd = fd
        self.bytes = 0

    @property
    def ok(self) -> bool:
        """True while the file holds every byte written to it."""
        return self._fd is not None

    def write(self, chunk: bytes) -> None:
        """Append a piece of the body (to the page cache: no fsync)."""
        if self._fd is None:
            return
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            log.warning(
                "journal write failed; the answer is held in memory only until it is spooled",
                path=str(self.path),
                error=exc.strerror or str(exc),
            )
            self._close()
            return
        self.bytes += len(chunk)

    def sync(self) -> bool:
        """fsync the file (an answer that must wait for its turn in the spool); False if not."""
        if self._fd is None:
            return False
        try:
            os.fsync(self._fd)
        except OSError:
            return False
        return True

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def read_body(self) -> bytes | None:
        """The body written so far, read back from the file (without its header line); None
        when the file does not hold every byte written to it."""
        if self._fd is None:
            return None
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        body = data.partition(b"\n")[2]
        return body if len(body) == self.bytes else None

    def discard(self) -> None:
        """Close and delete the file (its rows are in the spool)."""
        self._close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Journal:
    """The directory of answer files next to the spool file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def beside(cls, spool_path: Path) -> Journal:
        """The journal of a spool file: ``<spool>.journal/``, created when missing."""
        directory = spool_path.with_name(spool_path.name + ".journal")
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise JournalError(
                f"journal {directory}: cannot create: {exc.strerror or exc}"
            ) from exc
        if directory.is_symlink() or not directory.is_dir():
            raise JournalError(f"journal {directory}: not a directory")
        return cls(directory)

    def open_entry(self, pulled_at: str) -> JournalEntry:
        """A new file for one answer; on failure, an entry that keeps nothing (logged)."""
        entry_id = uuid.uuid4().hex
        path = self.directory / (entry_id + SUFFIX)
        header = json.dumps({"id": entry_id, "pulled_at": pulled_at}).encode() + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            log.warning("journal file not created", path=str(path), error=exc.strerror or str(exc))
            return JournalEntry(path, entry_id, None)
        entry = JournalEntry(path, entry_id, fd)
        entry.write(header)
        entry.bytes = 0
        return entry

    def refuses_files(self) -> str | None:
        """Why no new file can be made in the directory now (a read-only file system, also
        one the kernel turned so after an error without saying so to statvfs), or None."""
        path = self.directory / f".probe-{uuid.uuid4().hex}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            return exc.strerror or str(exc)
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        return None

    def leftovers(self) -> list[Leftover]:
        """Every file a previous run left, oldest first; unreadable ones are logged and kept."""
        found: list[tuple[float, Leftover]] = []
        for path in self.directory.glob("*" + SUFFIX):
            try:
                stamp = path.stat().st_mtime
                data = path.read_bytes()
            except OSError as exc:
                log.error("journal file unreadable; left in place", path=str(path), error=str(exc))
                continue
            header, _, body = data.partition(b"\n")
            entry_id, pulled_at = path.stem, ""
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                meta = json.loads(header)
                pulled_at = str(meta.get("pulled_at") or "")
            found.append((stamp, Leftover(entry_id, pulled_at, body, path)))
        return [leftover for _stamp, leftover in sorted(found, key=lambda pair: pair[0])]
