"""The internal Store protocol: one place rows can live (SQLite file, PostgreSQL, memory).

A store numbers its rows itself (SQLite AUTOINCREMENT, a PostgreSQL sequence, a counter in
memory): the database is the one writer of ids, so any number of processes can append to
the same store (the daemon, `c8ysim backfill`, `c8ysim send-test`) and no row ever collides
with another. Its depth and size come from the store too (kept by triggers), so a row
another process added is counted at once. A store raises `StoreError` on I/O trouble;
`c8ysim.storage.tiered` turns a chain of stores into a Buffer that never raises. This module
also holds what every store shares: the size/age limits and their bookkeeping.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping, NamedTuple, Protocol, Sequence

from c8ysim.storage import Record

AGE_CHECK_INTERVAL_S = 60.0  # a max_age sweep scans rows: do it at most this often
INTERNAL_META_PREFIX = "buffer."  # the store's own keys (drop counter)
DROPPED_KEY = "buffer.dropped"

Item = tuple[str, bytes, float]  # (topic, payload, created): a row before it has an id


class StoreError(Exception):
    """An I/O failure (disk full, read-only, connection lost): the buffer degrades on it.

    `reason` is short and human ("disk full"); it ends up on the status page. `empty` says
    that a store which could not be opened holds nothing (its file did not exist yet).
    """

    def __init__(self, reason: str, empty: bool = False):
        super().__init__(reason)
        self.reason, self.empty = reason, empty


class Counters(NamedTuple):
    depth: int
    oldest_created: float | None
    bytes: int
    dropped: int
    quarantined: int


EMPTY = Counters(0, None, 0, 0, 0)


class Limits(NamedTuple):
    """The bounds of one store: the oldest rows beyond them are dropped and counted."""

    max_records: int
    max_age_s: float


class AgeSweep:
    """Decides when a store runs its (scanning) max_age sweep: first write, then every minute."""

    def __init__(self, interval_s: float = AGE_CHECK_INTERVAL_S):
        self.interval_s = interval_s
        self.next_at = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            return False
        self.next_at = now + self.interval_s
        return True


class Store(Protocol):
    alive: bool  # False once the connection is gone: reopen before using it again
    lost_file: str | None  # a file that was moved aside (corrupt) when this store opened
    fresh: bool  # its file was new or empty when it opened: what it held before is gone

    def append(self, items: Sequence[Item], meta: Mapping[str, str | None],
               now: float) -> int:
        """Insert rows (the store numbers them) and set meta keys in one transaction, then
        apply the limits; returns the rows dropped by them."""

    def peek(self, limit: int, after_id: int) -> list[Record]: ...

    def delete(self, ids: Sequence[int]) -> int:
        """Remove rows; returns how many were there."""

    def quarantine(self, ids: Sequence[int], reason: str, now: float) -> int:
        """Move rows out of the queue, keeping them for inspection; returns how many."""

    def depth(self) -> int:
        """Rows queued now, as the store counts them (rows of other processes included)."""

    def get_meta(self, key: str) -> tuple[bool, str | None]:
        """(present, value); a deletion remembered by a non-primary store is (True, None)."""

    def meta_items(self) -> dict[str, str | None]:
        """The device-state keys (not the store's own `buffer.*` keys)."""

    def forget_meta(self, keys: Iterable[str]) -> None: ...

    def counters(self, now: float) -> Counters: ...

    def maintain(self, now: float) -> None:
        """Periodic housekeeping (space reclaim); cheap when nothing is due."""

    def file_state(self) -> str | None:
        """None, or "replaced" (its file was deleted or another put at its path: then
        `rescue()`, which only file stores have, copies it back and closes it) or "damaged"
        (cut short or overwritten in place: what it held is gone)."""

    def close(self) -> None: ...


def user_meta(items: Mapping[str, str | None]) -> dict[str, str | None]:
    return {k: v for k, v in items.items() if not k.startswith(INTERNAL_META_PREFIX)}
