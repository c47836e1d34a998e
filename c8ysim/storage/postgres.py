"""The PostgreSQL store: every device's rows in one table keyed by (device, id).

The only module that imports psycopg2. Each device child opens its own connection after
fork. The drain query (`WHERE device = %s AND id > %s ORDER BY id LIMIT %s`) walks the
primary key (device, id); inserts are batched (one statement per tick or per moved chunk).
Ids come from one sequence, so they never repeat; an append holds a per-device advisory
lock, so rows of several writers (the daemon, `c8ysim backfill`) commit in id order and the
drain never passes a row that commits later with a smaller id. Depth and size per device
are kept in `c8ysim_counts` by statement triggers. Connection trouble raises StoreError fast
(short connect and statement timeouts, TCP keepalives): the buffer then uses the local
SQLite fallback. Schema changes run under an advisory lock, so children starting together
do not race.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Mapping, Sequence

import psycopg2
import psycopg2.extras

from c8ysim.storage import Record
from c8ysim.storage.readahead import ReadAhead
from c8ysim.storage.store import (
    DROPPED_KEY, INTERNAL_META_PREFIX, AgeSweep, Counters, Item, Limits, StoreError,
    user_meta)

SCHEMA_VERSION = 2
SCHEMA_LOCK_KEY = 0x63387973  # "c8ys": the advisory lock migrations hold
APPEND_LOCK_CLASS = 0x6338  # with hashtext(device): the two-key lock appends hold
CONNECT_TIMEOUT_S = 2  # libpq's minimum; a dead host must not stall the device loop
STATEMENT_TIMEOUT_MS = 5_000
# A table that fills fast (a backlog after an outage) has no statistics yet, and the planner
# then reads the device's whole backlog through a bitmap scan and sorts it for every peek
# (22 ms at 20 000 rows, growing) instead of walking the (device, id) key in order (0.15 ms).
# Every query here is best served by that key, so this connection never uses bitmap scans.
SESSION_OPTIONS = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c enable_bitmapscan=off"
TCP_USER_TIMEOUT_MS = 5_000
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 10, 5, 3
READ_AHEAD_ROWS = 1_000  # one read serves ~12 drain peeks of one publish (~80 rows) each
REASON_MAX_CHARS = 160

MIGRATIONS = {
    0: """
CREATE TABLE IF NOT EXISTS c8ysim_outbox (
    device text NOT NULL, id bigint NOT NULL, topic text NOT NULL, payload bytea NOT NULL,
    created double precision NOT NULL, PRIMARY KEY (device, id));
CREATE TABLE IF NOT EXISTS c8ysim_quarantine (
    device text NOT NULL, id bigint NOT NULL, topic text NOT NULL, payload bytea NOT NULL,
    created double precision NOT NULL, reason text NOT NULL, moved double precision NOT NULL,
    PRIMARY KEY (device, id));
CREATE TABLE IF NOT EXISTS c8ysim_meta (
    device text NOT NULL, key text NOT NULL, value text NOT NULL, PRIMARY KEY (device, key));
""",
    1: """
CREATE SEQUENCE c8ysim_outbox_id_seq AS bigint;
SELECT setval('c8ysim_outbox_id_seq', greatest(1,
    (SELECT max(id) FROM c8ysim_outbox), (SELECT max(id) FROM c8ysim_quarantine),
    (SELECT max(value::bigint) FROM c8ysim_meta WHERE key = 'buffer.last_id')));
ALTER TABLE c8ysim_outbox ALTER COLUMN id SET DEFAULT nextval('c8ysim_outbox_id_seq');
DELETE FROM c8ysim_meta WHERE key = 'buffer.last_id';
CREATE TABLE c8ysim_counts (
    device text PRIMARY KEY, depth bigint NOT NULL, bytes bigint NOT NULL);
INSERT INTO c8ysim_counts
    SELECT device, count(*), sum(length(payload)) FROM c8ysim_outbox GROUP BY device;
CREATE FUNCTION c8ysim_count_added() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO c8ysim_counts AS c
        SELECT device, count(*), sum(length(payload)) FROM added GROUP BY device
    ON CONFLICT (device) DO UPDATE
        SET depth = c.depth + EXCLUDED.depth, bytes = c.bytes + EXCLUDED.bytes;
    RETURN NULL; END $$;
CREATE FUNCTION c8ysim_count_removed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    UPDATE c8ysim_counts AS c SET depth = c.depth - r.depth, bytes = c.bytes - r.bytes
        FROM (SELECT device, count(*) AS depth, sum(length(payload)) AS bytes FROM removed
              GROUP BY device) AS r WHERE c.device = r.device;
    RETURN NULL; END $$;
CREATE TRIGGER c8ysim_outbox_added AFTER INSERT ON c8ysim_outbox
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION c8ysim_count_added();
CREATE TRIGGER c8ysim_outbox_removed AFTER DELETE ON c8ysim_outbox
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT
    EXECUTE FUNCTION c8ysim_count_removed();
""",
}


def open_store(storage, device_name: str) -> "PostgresStore":
    limits = Limits(storage.max_records, storage.max_age_hours * 3600.0)
    return PostgresStore(connect(storage.dsn, device_name), device_name, limits)


def connect(dsn: str, device_name: str):
    try:
        conn = psycopg2.connect(
            dsn, connect_timeout=CONNECT_TIMEOUT_S, application_name=f"c8ysim {device_name}",
            options=SESSION_OPTIONS,
            keepalives=1, keepalives_idle=KEEPALIVE_IDLE_S,
            keepalives_interval=KEEPALIVE_INTERVAL_S, keepalives_count=KEEPALIVE_COUNT,
            tcp_user_timeout=TCP_USER_TIMEOUT_MS)
    except psycopg2.Error as exc:
        raise StoreError(_reason(exc)) from exc
    conn.autocommit = True  # transactions are explicit: BEGIN ... COMMIT
    return conn


def _reason(exc: psycopg2.Error) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"unreachable ({first[:REASON_MAX_CHARS]})"


class PostgresStore:
    lost_file = None
    fresh = False

    def __init__(self, conn, device: str, limits: Limits):
        self.conn, self.device, self.limits = conn, device, limits
        self.sweep = AgeSweep()
        self.ahead = ReadAhead(READ_AHEAD_ROWS)
        try:
            with self._errors():
                self._migrate()
                self.dropped = int(self.get_meta(DROPPED_KEY)[1] or 0)
        except BaseException:
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def _migrate(self) -> None:
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            cur.execute("CREATE TABLE IF NOT EXISTS c8ysim_schema (version integer NOT NULL)")
            cur.execute("SELECT max(version) FROM c8ysim_schema")
            version = cur.fetchone()[0] or 0
            for step in range(version, SCHEMA_VERSION):
                cur.execute(MIGRATIONS[step])
            if version < SCHEMA_VERSION:
                cur.execute("DELETE FROM c8ysim_schema")
                cur.execute("INSERT INTO c8ysim_schema VALUES (%s)", (SCHEMA_VERSION,))

    # -- the Store protocol -------------------------------------------------------------------

    def append(self, items: Sequence[Item], meta: Mapping[str, str | None],
               now: float) -> int:
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                        (APPEND_LOCK_CLASS, self.device))
            self._insert_rows(cur, items)
            dropped = self._apply_limits(cur, now)
            upserts = dict(meta)
            if dropped:
                upserts[DROPPED_KEY] = str(self.dropped + dropped)
            self._write_meta(cur, upserts)
        self.dropped += dropped
        if dropped:
            self.ahead.clear()
        return dropped

    def peek(self, limit: int, after_id: int) -> list[Record]:
        with self._errors():
            return self.ahead.peek(limit, after_id, self._fetch)

    def _fetch(self, limit: int, after_id: int) -> list[Record]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT id, topic, payload, created FROM c8ysim_outbox WHERE device = %s "
                        "AND id > %s ORDER BY id LIMIT %s", (self.device, after_id, limit))
            return [Record(i, t, bytes(p), c) for i, t, p, c in cur.fetchall()]

    def delete(self, ids: Sequence[int]) -> int:
        """Acknowledged rows. The commit does not wait for the WAL flush: a server crash may
        forget the last deletions, and those rows are sent again (at least once)."""
        if not ids:
            return 0
        with self._transaction(durable=False) as cur:
            cur.execute("DELETE FROM c8ysim_outbox WHERE device = %s AND id = ANY(%s)",
                        (self.device, list(ids)))
            removed = cur.rowcount
        self.ahead.discard(ids)
        return removed

    def quarantine(self, ids: Sequence[int], reason: str, now: float) -> int:
        ids = list(ids)
        with self._transaction() as cur:
            cur.execute("INSERT INTO c8ysim_quarantine SELECT device, id, topic, payload, "
                        "created, %s, %s FROM c8ysim_outbox WHERE device = %s AND id = ANY(%s) "
                        "ON CONFLICT DO NOTHING", (reason, now, self.device, ids))
            cur.execute("DELETE FROM c8ysim_outbox WHERE device = %s AND id = ANY(%s)",
                        (self.device, ids))
            moved = cur.rowcount
        self.ahead.discard(ids)
        return moved

    def depth(self) -> int:
        with self._errors():
            return self._one("SELECT depth FROM c8ysim_counts WHERE device = %s") or 0

    def get_meta(self, key: str) -> tuple[bool, str | None]:
        with self._errors(), self.conn.cursor() as cur:
            cur.execute("SELECT value FROM c8ysim_meta WHERE device = %s AND key = %s",
                        (self.device, key))
            row = cur.fetchone()
        return (row is not None, row[0] if row else None)

    def meta_items(self) -> dict[str, str | None]:
        with self._errors(), self.conn.cursor() as cur:
            cur.execute("SELECT key, value FROM c8ysim_meta WHERE device = %s", (self.device,))
            return user_meta(dict(cur.fetchall()))

    def forget_meta(self, keys: Iterable[str]) -> None:
        keys = [k for k in keys if not k.startswith(INTERNAL_META_PREFIX)]
        with self._errors(), self.conn.cursor() as cur:
            cur.execute("DELETE FROM c8ysim_meta WHERE device = %s AND key = ANY(%s)",
                        (self.device, keys))

    def counters(self, now: float) -> Counters:
        with self._errors(), self.conn.cursor() as cur:
            cur.execute("SELECT depth, bytes FROM c8ysim_counts WHERE device = %s",
                        (self.device,))
            depth, size = cur.fetchone() or (0, 0)
            oldest = self._one("SELECT created FROM c8ysim_outbox WHERE device = %s "
                               "ORDER BY id LIMIT 1")
            quarantined = self._one("SELECT count(*) FROM c8ysim_quarantine WHERE device = %s")
            self.dropped = int(self.get_meta(DROPPED_KEY)[1] or 0)
        return Counters(depth, oldest, size, self.dropped, quarantined)

    def maintain(self, now: float) -> None:
        pass  # autovacuum reclaims space

    def file_state(self) -> str | None:
        return None  # a dropped table shows as errors; the server keeps its own files

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    # -- helpers --------------------------------------------------------------------------------

    def _one(self, sql: str):
        with self.conn.cursor() as cur:
            cur.execute(sql, (self.device,))
            row = cur.fetchone()
        return row[0] if row else None

    def _insert_rows(self, cur, items: Sequence[Item]) -> None:
        if items:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO c8ysim_outbox (device, topic, payload, created) VALUES %s",
                [(self.device, topic, payload, created) for topic, payload, created in items],
                page_size=len(items))

    def _write_meta(self, cur, items: Mapping[str, str | None]) -> None:
        gone = [k for k, v in items.items() if v is None]
        kept = [(self.device, k, v) for k, v in items.items() if v is not None]
        if gone:
            cur.execute("DELETE FROM c8ysim_meta WHERE device = %s AND key = ANY(%s)",
                        (self.device, gone))
        if kept:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO c8ysim_meta (device, key, value) VALUES %s ON CONFLICT "
                     "(device, key) DO UPDATE SET value = EXCLUDED.value", kept)

    def _apply_limits(self, cur, now: float) -> int:
        """Drop the oldest rows beyond max_records and those older than max_age (counted)."""
        dropped = 0
        cur.execute("SELECT depth FROM c8ysim_counts WHERE device = %s", (self.device,))
        excess = (cur.fetchone() or (0,))[0] - self.limits.max_records
        if excess > 0:
            cur.execute("DELETE FROM c8ysim_outbox WHERE device = %s AND id IN (SELECT id FROM "
                        "c8ysim_outbox WHERE device = %s ORDER BY id LIMIT %s)",
                        (self.device, self.device, excess))
            dropped += cur.rowcount
        if self.sweep.due():
            cur.execute("DELETE FROM c8ysim_outbox WHERE device = %s AND created < %s",
                        (self.device, now - self.limits.max_age_s))
            dropped += cur.rowcount
        return dropped

    @contextmanager
    def _transaction(self, durable: bool = True):
        with self._errors(), self.conn.cursor() as cur:
            cur.execute("BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit = off")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                self._rollback_quietly()
                raise

    def _rollback_quietly(self) -> None:
        try:
            if self.alive:
                with self.conn.cursor() as cur:
                    cur.execute("ROLLBACK")
        except psycopg2.Error:
            pass

    @contextmanager
    def _errors(self):
        """Connection and server trouble -> StoreError (the connection is then dropped, a
        reconnect starts clean); programming errors (bugs) pass through unchanged."""
        try:
            yield
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            self.close()
            raise StoreError(_reason(exc)) from exc
