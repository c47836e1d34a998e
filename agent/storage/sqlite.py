"""The SQLite buffer: one file per device under the state directory.

WAL with `synchronous=NORMAL` by default: a power cut can lose the last transactions that
were not yet checkpointed, but never corrupts the file; `storage.synchronous: full` trades
speed for losing nothing that was committed. Ids come from AUTOINCREMENT so they never repeat,
which keeps the drain cursor (`peek(after_id=...)`) correct even after the queue empties.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable, Mapping

from agent.storage import BufferStats, Record

SCHEMA_VERSION = 1
JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
BUSY_TIMEOUT_S = 5.0
SCHEMA = """
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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
DROPPED_KEY = "buffer.dropped"


class SqliteBuffer:
    def __init__(self, path: str, max_records: int, max_age_s: float,
                 synchronous: str = "normal"):
        self.path, self.max_records, self.max_age_s = path, max_records, max_age_s
        self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        self._migrate()
        self.depth = self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self.dropped = int(self.get_meta(DROPPED_KEY) or 0)

    @classmethod
    def open_in(cls, storage, device_name: str) -> "SqliteBuffer":
        directory = Path(storage.path)
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        return cls(str(directory / f"{device_name}.sqlite3"), storage.max_records,
                   storage.max_age_hours * 3600.0, storage.synchronous)

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: schema version {version} is newer than this "
                               f"c8ysim understands ({SCHEMA_VERSION})")
        if version < 1:
            self.db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def put_many(self, items: Iterable[tuple[str, bytes, float]],
                 meta: Mapping[str, str] | None = None) -> None:
        rows = list(items)
        with self._transaction():
            self.db.executemany(
                "INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)", rows)
            for key, value in (meta or {}).items():
                self._write_meta(key, value)
        self.depth += len(rows)
        self._enforce_bounds(time.time())

    def peek(self, limit: int, after_id: int = 0) -> list[Record]:
        rows = self.db.execute(
            "SELECT id, topic, payload, created FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit)).fetchall()
        return [Record(i, t, bytes(p), c) for i, t, p, c in rows]

    def ack(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            marks = ",".join("?" * len(ids))
            cur = self.db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
            self.depth -= cur.rowcount

    def quarantine(self, ids: Iterable[int], reason: str) -> None:
        ids = list(ids)
        marks = ",".join("?" * len(ids))
        with self._transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO quarantine SELECT id, topic, payload, created, ?, ? "
                f"FROM outbox WHERE id IN ({marks})", [reason, time.time(), *ids])
            cur = self.db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
        self.depth -= cur.rowcount

    def stats(self, now: float) -> BufferStats:
        oldest = self.db.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        size = self._estimate_bytes()
        quarantined = self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        return BufferStats(self.depth, now - oldest[0] if oldest else None, size,
                           self.dropped, quarantined)

    def _estimate_bytes(self) -> int:
        """Payload bytes queued, from the mean of the oldest 100 (an exact sum is O(n))."""
        sample = self.db.execute("SELECT avg(length(payload)) FROM (SELECT payload FROM outbox "
                                 "ORDER BY id LIMIT 100)").fetchone()[0] or 0
        return int(sample * self.depth)

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        with self._transaction():
            self._write_meta(key, value)

    def close(self) -> None:
        self.db.close()

    def _write_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            (key, value))

    def _enforce_bounds(self, now: float) -> None:
        excess = self.depth - self.max_records
        if excess > 0:
            self._drop("SELECT id FROM outbox ORDER BY id LIMIT ?", (excess,))
        oldest = self.db.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        if oldest and oldest[0] < now - self.max_age_s:
            self._drop("SELECT id FROM outbox WHERE created < ?", (now - self.max_age_s,))

    def _drop(self, select_ids: str, params: tuple) -> None:
        with self._transaction():
            cur = self.db.execute(f"DELETE FROM outbox WHERE id IN ({select_ids})", params)
            self.dropped += cur.rowcount
            self._write_meta(DROPPED_KEY, str(self.dropped))
        self.depth -= cur.rowcount

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False

