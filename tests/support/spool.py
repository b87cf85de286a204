"""Spool files for tests: messages to append, and a file as version 1 of the schema left it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from poller.spool import NewMessage

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, message_id TEXT NOT NULL,
    received_at TEXT NOT NULL, pulled_at TEXT NOT NULL, payload TEXT NOT NULL,
    size INTEGER NOT NULL, spooled_at REAL NOT NULL
);
CREATE TABLE quarantine (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, raw BLOB NOT NULL, reason TEXT NOT NULL, app TEXT,
    pulled_at TEXT NOT NULL, dead_lettered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX quarantine_pending ON quarantine (seq) WHERE dead_lettered = 0;
INSERT INTO meta VALUES ('instance_id', 'v1instance');
INSERT INTO messages (app, message_id, received_at, pulled_at, payload, size, spooled_at)
    VALUES ('app1', 'old1', 'r', 'p', '{}', 10, 1.0), ('app1', 'old2', 'r', 'p', '{}', 10, 2.0);
INSERT INTO quarantine (raw, reason, app, pulled_at) VALUES (x'ff', 'bad', NULL, 'p');
PRAGMA user_version = 1;
"""


def make_v1_spool(path: Path) -> None:
    """A spool file as version 1 of the schema left it, with two messages and a body."""
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def spool_message(i: int, app: str = "app1") -> NewMessage:
    """Message number i of an application, as a source hands it to the spool."""
    return NewMessage(
        app=app,
        message_id=f"m{i}",
        received_at="2024-05-01T10:00:00.000+0000",
        pulled_at="2024-05-01T10:00:01Z",
        payload=f'{{"messageId": "m{i}", "text": "hello {i}"}}',
    )
