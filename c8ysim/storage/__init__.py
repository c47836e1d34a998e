"""Store and forward: the Buffer contract every backend implements, and `open_buffer()`.

A buffer holds what goes on the wire (topic + payload bytes + created time), oldest first.
A row leaves the buffer only when the broker acknowledged it (`ack`), is moved aside because
it can never be sent (`quarantine`), is dropped by the size/age bounds (counted in
`dropped`), or is known lost with its file (counted in `lost`). Next to the queue each buffer
keeps a small durable key/value area for device state (registration, pending operation,
energy registers), written in the same transaction as the readings and copied to the
ledger beside it (`c8ysim.storage.ledger`), which outlives a lost file.

The stores number the rows (the database is the one writer of ids), so other processes may
append to a running device's buffer at any time (`c8ysim backfill`, `c8ysim send-test`):
their rows queue behind what is there, and the device's drain and depth see them at once.

Buffer methods never raise on I/O trouble (disk full, read-only file, PostgreSQL down): the
buffer degrades (see `c8ysim.storage.tiered`), says why in `stats().degraded`, and recovers
by itself. `open_buffer` raises only `StorageConfigError`: a problem retrying cannot fix. A
guest buffer (the CLI's: no memory overflow, its memory ends with the command) raises
`StoreError` from `put_many` when no durable store takes the rows.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple, Protocol

MEMORY_MAX_ROWS = 5_000  # the in-memory overflow while no durable store works (~1.5 MB)
MISSING_DRIVER = ("storage.backend is postgres, but the PostgreSQL driver psycopg2 is not "
                  "installed: apt install python3-psycopg2 (or pip install 'c8ysim[postgres]')")


class StorageConfigError(Exception):
    """The storage cannot work as configured (missing driver, file from a newer c8ysim).

    Retrying does not help: the device should exit with `c8ysim.exits.CONFIG` (78).
    """


class Record(NamedTuple):
    id: int
    topic: str
    payload: bytes
    created: float  # epoch seconds when the record was queued


class BufferStats(NamedTuple):
    depth: int
    oldest_age_s: float | None
    bytes: int
    dropped: int
    quarantined: int
    degraded: str | None = None  # why the buffer is not working normally, for the status page
    backend: str = "sqlite"
    lost: int = 0  # rows known lost with a file (moved aside, deleted) or memory, ever


class Buffer(Protocol):
    def put_many(self, items: Iterable[tuple[str, bytes, float]],
                 meta: Mapping[str, str] | None = None) -> None:
        """Append (topic, payload, created) rows and set meta keys, in one transaction."""

    def peek(self, limit: int, after_id: int = 0) -> list[Record]:
        """Up to `limit` of the oldest rows not yet taken in this pass: `after_id=0` starts a
        pass at the oldest row; otherwise the caller took every row up to `after_id` (the
        last it used) and gets what follows, rows appended since by any process included."""

    def ack(self, ids: Iterable[int]) -> None:
        """Delete rows the broker acknowledged."""

    def quarantine(self, ids: Iterable[int], reason: str) -> None:
        """Move rows that can never be sent out of the queue, keeping them for inspection."""

    def stats(self, now: float) -> BufferStats: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or with None delete) one durable device-state key."""

    def close(self) -> None: ...


def open_buffer(storage, device_name: str, guest: bool = False) -> Buffer:
    """Open the configured backend's buffer for one device (call it after fork).

    sqlite:   the device's file, then memory.
    postgres: PostgreSQL, then the device's SQLite file as a local fallback, then memory.
    `guest=True` is for another process writing into a device's buffer (the CLI): no
    memory overflow (its memory ends with the command), and the device's ledger is left
    alone (the device owns its state).
    """
    from c8ysim.storage import sqlite
    from c8ysim.storage.ledger import Ledger
    from c8ysim.storage.memory import MemoryStore
    from c8ysim.storage.tier import Tier
    from c8ysim.storage.tiered import TieredBuffer

    local = Tier("SQLite buffer", lambda check: sqlite.open_store(
        storage, device_name, tombstones=storage.backend == "postgres", check=check))
    memory = Tier("in-memory overflow", lambda check: MemoryStore(
        min(MEMORY_MAX_ROWS, storage.max_records)), durable=False)
    tiers = [local] if guest else [local, memory]
    ledger = None if guest else Ledger.beside(storage, device_name)
    if storage.backend != "postgres":
        return TieredBuffer(tiers, backend="sqlite", ledger=ledger)
    try:
        from c8ysim.storage import postgres
    except ImportError as exc:
        raise StorageConfigError(MISSING_DRIVER) from exc
    local.label = "SQLite fallback"
    remote = Tier("PostgreSQL", lambda check: postgres.open_store(storage, device_name))
    return TieredBuffer([remote, *tiers], backend="postgres", ledger=ledger)
