"""The internal Store protocol: one place rows can live (SQLite file, PostgreSQL, memory).

A store is simpler than a Buffer: it takes rows with ids already assigned (the buffer owns
the id counter so a row keeps its id when it moves between stores), and it raises
`StoreError` on I/O trouble instead of hiding it. `agent.storage.tiered` turns a chain of
stores into a Buffer that never raises. This module also holds what every store shares:
the size/age limits and their bookkeeping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence

from agent.storage import Record

AGE_CHECK_INTERVAL_S = 60.0  # a max_age sweep scans rows: do it at most this often
INTERNAL_META_PREFIX = "buffer."  # the store's own keys (drop counter, id high-water)
DROPPED_KEY = "buffer.dropped"


class StoreError(Exception):
    """An I/O failure (disk full, read-only, connection lost): the buffer degrades on it.

    `reason` is short and human ("disk full"); it ends up on the status page. `empty` says
    that a store which could not be opened holds nothing (its file did not exist yet).
    """

    def __init__(self, reason: str, empty: bool = False):
        super().__init__(reason)
        self.reason, self.empty = reason, empty


@dataclass(frozen=True)
class Counters:
    depth: int
    oldest_created: float | None
    bytes: int
    dropped: int
    quarantined: int


EMPTY = Counters(0, None, 0, 0, 0)


@dataclass(frozen=True)
class Limits:
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
    kind: str  # "sqlite", "postgres" or "memory"
    alive: bool  # False once the connection is gone: reopen before using it again
    depth: int  # rows queued, tracked in-process
    dropped: int  # rows dropped by the limits, ever (persisted)
    quarantined: int  # rows in quarantine
    hw: int  # the highest id this store ever held (ids above it are new to it)
    holds_meta: bool  # device-state keys that would have to move with the rows

    def append(self, rows: Sequence[Record], meta: Mapping[str, str | None],
               now: float) -> int:
        """Insert rows under their ids (ids already present are skipped) and set meta keys
        in one transaction, then apply the limits; returns the rows dropped by them."""

    def peek(self, limit: int, after_id: int) -> list[Record]: ...

    def delete(self, ids: Sequence[int]) -> None: ...

    def quarantine(self, ids: Sequence[int], reason: str, now: float) -> None: ...

    def get_meta(self, key: str) -> tuple[bool, str | None]:
        """(present, value); a deletion remembered by a non-primary store is (True, None)."""

    def meta_items(self) -> dict[str, str | None]:
        """The device-state keys (not the store's own `buffer.*` keys)."""

    def forget_meta(self, keys: Iterable[str]) -> None: ...

    def min_id(self) -> int | None: ...

    def renumber(self, offset: int) -> None:
        """Add `offset` (> 0) to every queued id (only before any of them was handed out)."""

    def counters(self, now: float) -> Counters: ...

    def maintain(self, now: float) -> None:
        """Periodic housekeeping (space reclaim); cheap when nothing is due."""

    def close(self) -> None: ...


def user_meta(items: Mapping[str, str | None]) -> dict[str, str | None]:
    return {k: v for k, v in items.items() if not k.startswith(INTERNAL_META_PREFIX)}
