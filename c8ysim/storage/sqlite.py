"""The SQLite store: one file per device under the state directory.

It is the default backend's durable tier and the local fallback of the PostgreSQL backend.
WAL with `synchronous=NORMAL` by default: a power cut can lose the last transactions that
were not yet checkpointed to the main file, but never corrupts it; `storage.synchronous:
full` fsyncs every commit and loses nothing committed (on an SD card: ~100-500 commits/s,
one per device tick, so affordable). The file's name, schema (its version in `PRAGMA
user_version`) and migrations are in `c8ysim.storage.sqlite_schema`; they run at open.
Ids are AUTOINCREMENT, assigned by SQLite inside the writer's transaction, so they never
repeat (even after the queue empties) and rows of several processes appending to the same
file (the daemon, `c8ysim backfill`) never collide. The queue's depth and size are kept in
the `counts` row by triggers, in the same transactions: every process sees the true depth.

Space: `journal_size_limit` caps the WAL after checkpoints, `auto_vacuum=INCREMENTAL` lets
the file shrink after a big backlog drained. A corrupt file is moved aside (renamed with a
timestamp) and a fresh one started: never a crash loop; the store says so (`lost_file`) so
the buffer can count what was in it. A file deleted or replaced under the open store is
noticed (`file_state()`): the buffer then copies it back to its path (`rescue()`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from c8ysim.storage import Record, StorageConfigError
from c8ysim.storage.sqlite_schema import MIGRATIONS, SCHEMA_VERSION, store_path
from c8ysim.storage.store import (
    DROPPED_KEY, INTERNAL_META_PREFIX, AgeSweep, Counters, Item, Limits, StoreError,
    user_meta)

JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
PAGE_CACHE_KIB = 256  # per device; SQLite's default is 2 MiB
BUSY_TIMEOUT_S = 2.0
VACUUM_CHECK_INTERVAL_S = 300.0
VACUUM_MIN_FREE_PAGES = 256  # 1 MiB of 4 KiB pages
VACUUM_PAGES_PER_STEP = 2048  # 8 MiB per step keeps the pause short
SQLITE_HEADER = b"SQLite format 3\0"  # the first bytes of every database file
CONVERT_MAX_ROWS = 10_000  # an old file is rebuilt for incremental vacuum only while small
IDS_PER_STATEMENT = 500

REASONS = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_READONLY: "read-only file or file system",
    sqlite3.SQLITE_IOERR: "I/O error",
    sqlite3.SQLITE_CORRUPT: "corrupt file",
    sqlite3.SQLITE_NOTADB: "not an SQLite file",
    sqlite3.SQLITE_CANTOPEN: "cannot open the file",
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_BUSY: "busy (another process holds a lock)",
    sqlite3.SQLITE_LOCKED: "busy (locked)",
}
CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
# After these the connection still works (reads, deletes that free space): keep it.
KEEP_CONNECTION_CODES = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}

log = logging.getLogger(__name__)


class SqliteError(StoreError):
    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.code = code

    @property
    def corrupt(self) -> bool:
        return self.code in CORRUPT_CODES


def open_store(storage, device_name: str, tombstones: bool = False,
               check: bool = False) -> "SqliteStore":
    """Open (or create) a device's file; a corrupt one is moved aside and a fresh one begun
    (`lost_file` names where it went)."""
    path = store_path(storage, device_name)
    existed = os.path.exists(path)
    try:
        return _open_or_replace(path, storage, tombstones, check)
    except StoreError as exc:
        exc.empty = not existed
        raise


def _open_or_replace(path: str, storage, tombstones: bool, check: bool) -> "SqliteStore":
    try:
        Path(storage.path).mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        raise StoreError(f"cannot create {storage.path}: {exc.strerror}") from exc
    limits = Limits(storage.max_records, storage.max_age_hours * 3600.0)
    try:
        return SqliteStore(path, limits, storage.synchronous, tombstones, check)
    except SqliteError as exc:
        if not exc.corrupt:
            raise
        target = move_aside(path, exc.reason)
    store = SqliteStore(path, limits, storage.synchronous, tombstones)
    store.lost_file = target
    return store


def move_aside(path: str, reason: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = f"{path}.corrupt-{stamp}"
    try:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.replace(path + suffix, target + suffix)
    except OSError as exc:
        raise StoreError(f"{reason}; cannot move it aside: {exc.strerror}") from exc
    log.error("%s: %s; moved it aside to %s and started a fresh buffer (the rows in it are "
              "not sent: see `lost` in c8ysim status)", path, reason, target)
    return target


class SqliteStore:
    lost_file: str | None = None  # where a corrupt file found at open was moved
    fresh = False  # a new or empty (truncated) file: whatever it held before is gone

    def __init__(self, path: str, limits: Limits, synchronous: str = "normal",
                 tombstones: bool = False, check: bool = False):
        self.path, self.limits, self.tombstones = path, limits, tombstones
        self.sweep = AgeSweep()
        self.next_vacuum_check = 0.0
        self.db: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None
        self.watch_fd: int | None = None  # see file_state()
        try:
            with self._errors():
                self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                fresh = self.fresh = self._configure(synchronous)
                if check:
                    self._quick_check()
                self._migrate()
                self.dropped = int(self.get_meta(DROPPED_KEY)[1] or 0)
                self._watch()
        except BaseException:
            self.close()
            raise
        if not fresh:
            self._convert_to_incremental_vacuum()

    @property
    def alive(self) -> bool:
        return self.db is not None

    # -- opening ------------------------------------------------------------------------------

    def _configure(self, synchronous: str) -> bool:
        """Set the pragmas; True for a new, empty file (it gets incremental vacuum at once)."""
        fresh = self._one("PRAGMA user_version") == 0 and not self._one(
            "SELECT count(*) FROM sqlite_master")
        if fresh:
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        # The queue is written at its tail and read at its head: a small page cache does.
        self.db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        return fresh

    def _quick_check(self) -> None:
        result = self._one("PRAGMA quick_check")
        if result != "ok":
            raise SqliteError(f"corrupt file ({result})", sqlite3.SQLITE_CORRUPT)

    def _migrate(self) -> None:
        version = self._one("PRAGMA user_version")
        if version > SCHEMA_VERSION:
            raise StorageConfigError(
                f"{self.path}: schema version {version} is newer than this c8ysim understands "
                f"({SCHEMA_VERSION}); upgrade c8ysim or move the file away")
        if version < SCHEMA_VERSION:
            # executescript() runs statements with triggers (';' inside) as written; the
            # script holds its own transaction, so another process sees all of it or none.
            try:
                self.db.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[version]} "
                                      f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
            except BaseException:
                self._rollback_quietly()
                raise

    def _convert_to_incremental_vacuum(self) -> None:
        """Files from before incremental vacuum are rebuilt once, while they are small."""
        if self._one("PRAGMA auto_vacuum") != 0 or self.depth() > CONVERT_MAX_ROWS:
            return
        try:
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.db.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            log.info("%s: not converted to incremental vacuum yet: %s", self.path, exc)

    # -- the Store protocol -------------------------------------------------------------------

    def append(self, items: Sequence[Item], meta: Mapping[str, str | None],
               now: float) -> int:
        with self._errors(), self._transaction():
            if items:
                self.db.executemany(
                    "INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                    [(topic, payload, created) for topic, payload, created in items])
            for key, value in meta.items():
                self._write_meta(key, value)
            dropped = self._apply_limits(now)
        self.dropped += dropped
        return dropped

    def peek(self, limit: int, after_id: int) -> list[Record]:
        with self._errors():
            # Read as stored, whatever another writer put there (a TEXT payload, a topic that
            # is not UTF-8): such a row comes out as it is, and the session quarantines it.
            rows = self.db.execute(
                "SELECT id, CAST(topic AS BLOB), CAST(payload AS BLOB), CAST(created AS REAL) "
                "FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [Record(i, bytes(t or b"").decode("utf-8", "surrogateescape"), bytes(p or b""),
                       c or 0.0) for i, t, p, c in rows]

    def delete(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        with self._errors(), self._transaction():
            return sum(self.db.execute(f"DELETE FROM outbox WHERE id IN ({_marks(chunk)})",
                                       chunk).rowcount for chunk in _chunks(ids))

    def quarantine(self, ids: Sequence[int], reason: str, now: float) -> int:
        moved = 0
        with self._errors(), self._transaction():
            for chunk in _chunks(list(ids)):
                self.db.execute(
                    "INSERT OR REPLACE INTO quarantine SELECT id, topic, payload, created, ?, ? "
                    f"FROM outbox WHERE id IN ({_marks(chunk)})", [reason, now, *chunk])
                moved += self.db.execute(f"DELETE FROM outbox WHERE id IN ({_marks(chunk)})",
                                         chunk).rowcount
        return moved

    def depth(self) -> int:
        with self._errors():
            return self._one("SELECT depth FROM counts")

    def get_meta(self, key: str) -> tuple[bool, str | None]:
        with self._errors():
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return (row is not None, row[0] if row else None)

    def meta_items(self) -> dict[str, str | None]:
        with self._errors():
            return user_meta(dict(self.db.execute("SELECT key, value FROM meta").fetchall()))

    def forget_meta(self, keys: Iterable[str]) -> None:
        keys = [k for k in keys if not k.startswith(INTERNAL_META_PREFIX)]
        with self._errors(), self._transaction():
            self.db.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in keys])

    def counters(self, now: float) -> Counters:
        with self._errors():  # one statement: one read transaction a heartbeat
            depth, size, oldest, quarantined, dropped = self.db.execute(
                "SELECT depth, bytes, (SELECT created FROM outbox ORDER BY id LIMIT 1), "
                "(SELECT count(*) FROM quarantine), (SELECT value FROM meta WHERE key = ?) "
                "FROM counts", (DROPPED_KEY,)).fetchone()
            self.dropped = int(dropped or 0)
        return Counters(depth, oldest, size, self.dropped, quarantined)

    def file_state(self) -> str | None:
        """None while the file is ours; "replaced" when the path no longer leads to the
        file this connection has open (deleted, or another file put there: what is written
        now would be lost at close); "damaged" when our file was cut short or overwritten
        in place (its header is gone)."""
        if self.db is None:
            return None
        if _identity(self.path) != self.identity:
            return "replaced"
        try:
            header = os.pread(self.watch_fd, len(SQLITE_HEADER), 0)
        except OSError:
            return None  # the next statement says more
        return None if header == SQLITE_HEADER else "damaged"

    def _watch(self) -> None:
        """Keep a descriptor of the file for its header checks, open as long as the
        connection: closing any descriptor of a database file releases every POSIX lock
        this process holds on it (SQLite's own included), and another writer could then
        write under the connection and lose rows. So it is never opened and closed per
        check, and it is closed only after the connection."""
        self.watch_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        info = os.fstat(self.watch_fd)
        self.identity = (info.st_dev, info.st_ino)

    def rescue(self) -> None:
        """Copy the open (deleted or replaced) database to its path again, then close.

        SQLite's backup API copies every page this connection sees, WAL included, so ids,
        rows and state stay as they were. A file someone put at the path is moved aside
        first. The copy is made under a temporary name and renamed into place only after
        this connection closed (closing removes the WAL files at the path)."""
        temp = f"{self.path}.rescue"
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            Path(temp).unlink(missing_ok=True)
            with self._errors():
                copy = sqlite3.connect(temp)
                try:
                    self.db.backup(copy)
                finally:
                    copy.close()
            if os.path.exists(self.path):
                move_aside(self.path, "replaced while in use")
        except OSError as exc:
            raise StoreError(f"cannot rescue the file: {exc.strerror}") from exc
        self.close()
        try:
            os.replace(temp, self.path)
        except OSError as exc:
            raise StoreError(f"cannot put the rescued file in place: {exc.strerror}") from exc

    def maintain(self, now: float) -> None:
        """Give free pages back to the file system after a backlog drained."""
        if time.monotonic() < self.next_vacuum_check:
            return
        self.next_vacuum_check = time.monotonic() + VACUUM_CHECK_INTERVAL_S
        with self._errors():
            if self._one("PRAGMA freelist_count") >= VACUUM_MIN_FREE_PAGES:
                # executescript steps the pragma to the end; execute() would free one page.
                self.db.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES_PER_STEP}); "
                                      "PRAGMA wal_checkpoint(TRUNCATE);")

    def close(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass
        fd, self.watch_fd = self.watch_fd, None
        if fd is not None:
            os.close(fd)  # only after the connection: see _watch()

    # -- helpers --------------------------------------------------------------------------------

    def _one(self, sql: str, params: tuple = ()):
        row = self.db.execute(sql, params).fetchone()
        return row[0] if row else None

    def _write_meta(self, key: str, value: str | None) -> None:
        if value is None and not self.tombstones:
            self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            (key, value))

    def _apply_limits(self, now: float) -> int:
        """Drop the oldest rows beyond max_records and those older than max_age (counted)."""
        dropped = 0
        excess = self._one("SELECT depth FROM counts") - self.limits.max_records
        if excess > 0:
            dropped += self.db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                (excess,)).rowcount
        if self.sweep.due():
            dropped += self.db.execute("DELETE FROM outbox WHERE created < ?",
                                       (now - self.limits.max_age_s,)).rowcount
        if dropped:
            before = int(self._one("SELECT value FROM meta WHERE key = ?", (DROPPED_KEY,)) or 0)
            self._write_meta(DROPPED_KEY, str(before + dropped))
        return dropped

    @contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT; on any failure (COMMIT included) rolled back."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback_quietly()
            raise

    def _rollback_quietly(self) -> None:
        try:
            if self.db is not None and self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (it does on some I/O errors)

    @contextmanager
    def _errors(self):
        """Turn SQLite's I/O failures into SqliteError; close the connection unless it is
        still usable. Programming errors (bugs) pass through unchanged."""
        try:
            yield
        except sqlite3.Error as exc:
            if isinstance(exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError,
                                sqlite3.IntegrityError)):
                raise
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            if code not in KEEP_CONNECTION_CODES:
                self.close()
            raise SqliteError(_describe(code, exc, self.path), code) from exc


def _describe(code: int, exc: sqlite3.Error, path: str) -> str:
    """A short reason; SQLite reports a read-only file system as a vague I/O error."""
    if code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
        try:
            if os.statvfs(os.path.dirname(path) or ".").f_flag & os.ST_RDONLY:
                return "read-only file system"
        except OSError:
            pass
        if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
            return "permission denied (check the owner and mode of the file)"
    return REASONS.get(code, str(exc))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _marks(ids: Sequence) -> str:
    return ",".join("?" * len(ids))


def _chunks(ids: Sequence[int]):
    ids = list(ids)
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        yield ids[start:start + IDS_PER_STATEMENT]
