"""The SQLite buffer file: its name, its schema, and read-only views of it for the commands.

One file per device, `<state dir>/<device>.sqlite3`. Tables: `outbox` (the queue; ids are
AUTOINCREMENT), `quarantine` (rows that can never be sent, with why and when), `meta` (the
device state and the store's own `buffer.*` keys; a NULL value is a deletion the PostgreSQL
backend's fallback remembers) and `counts` (the queue's depth and size, kept by triggers).
The version lives in `PRAGMA user_version`; MIGRATIONS bring any older file to
SCHEMA_VERSION. `c8ysim.storage.sqlite` (the write path) runs them; nothing outside the
storage package names a table.

`queue_stats` (`c8ysim buffer stats`) and `describe` (`c8ysim diag`) are for commands that
run beside a device: they open the file read-only with sqlite3 (WAL lets them read while the
device writes) and change nothing: no migration, no recovery, no moving a corrupt file aside.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from c8ysim.storage.store import DROPPED_KEY

SCHEMA_VERSION = 3
FILE_SUFFIX = ".sqlite3"

CREATE_TABLES = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    reason TEXT NOT NULL,
    moved REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
# v2: meta.value may be NULL: a deletion the fallback remembers until PostgreSQL has it.
V1_TO_V2 = """
CREATE TABLE meta_v2 (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta_v2 SELECT key, value FROM meta;
DROP TABLE meta;
ALTER TABLE meta_v2 RENAME TO meta;
"""
# v3: the depth and size of the queue, kept by triggers for every writing process.
V2_TO_V3 = """
CREATE TABLE counts (depth INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO counts SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox;
CREATE TRIGGER outbox_added AFTER INSERT ON outbox BEGIN
    UPDATE counts SET depth = depth + 1, bytes = bytes + length(NEW.payload); END;
CREATE TRIGGER outbox_removed AFTER DELETE ON outbox BEGIN
    UPDATE counts SET depth = depth - 1, bytes = bytes - length(OLD.payload); END;
"""
MIGRATIONS = {  # from user_version -> SCHEMA_VERSION
    0: CREATE_TABLES + V2_TO_V3,
    1: V1_TO_V2 + V2_TO_V3,
    2: V2_TO_V3,
}

# What the read-only views raise: the file is no database, locked, gone, or not a path.
READ_ERRORS = (sqlite3.Error, OSError, ValueError)


def store_path(storage, device_name: str) -> str:
    return str(Path(storage.path) / f"{device_name}{FILE_SUFFIX}")


def device_of(file_name: str) -> str | None:
    """The device whose buffer a file in the state directory is; None for other files."""
    return file_name[:-len(FILE_SUFFIX)] if file_name.endswith(FILE_SUFFIX) else None


def queue_stats(path: str | Path, timeout_s: float) -> dict:
    """The queue as `c8ysim buffer stats` shows it: queued, oldest_age_s, dropped (by the
    limits) and quarantined rows. Raises one of READ_ERRORS."""
    with _read_only(path, timeout_s) as db:
        queued, oldest_age_s = _queue(db)
        dropped = db.execute("SELECT value FROM meta WHERE key = ?", (DROPPED_KEY,)).fetchone()
        quarantined = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        return {"queued": queued, "oldest_age_s": oldest_age_s,
                "dropped": int(dropped[0]) if dropped and dropped[0] else 0,
                "quarantined": quarantined}


def describe(path: str | Path, timeout_s: float) -> dict:
    """The file as `c8ysim diag` reports it: schema_version, outbox_rows, oldest_age_s and
    every meta key with its value as stored. Reads only what every schema version has.
    Raises one of READ_ERRORS."""
    with _read_only(path, timeout_s) as db:
        outbox_rows, oldest_age_s = _queue(db)
        meta = dict(db.execute("SELECT key, value FROM meta ORDER BY key").fetchall())
        return {"schema_version": db.execute("PRAGMA user_version").fetchone()[0],
                "outbox_rows": outbox_rows, "oldest_age_s": oldest_age_s, "meta": meta}


@contextmanager
def _read_only(path: str | Path, timeout_s: float):
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True,
                         timeout=timeout_s)
    try:
        yield db
    finally:
        db.close()


def _queue(db: sqlite3.Connection) -> tuple[int, float | None]:
    """Rows queued and the oldest one's age in seconds (counted: `counts` is v3 only)."""
    depth, oldest = db.execute("SELECT count(*), min(created) FROM outbox").fetchone()
    return depth, round(time.time() - oldest, 1) if oldest is not None else None
