"""The last-resort store: a bounded in-memory overflow used while no durable store works.

It never fails. Beyond `max_rows` its oldest rows are dropped and counted. Deleted meta keys
are remembered as deletions (value None) so they reach the durable store when it is back.
Quarantined rows are logged (payload head) and counted, not kept: memory is for minutes.
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterable, Mapping, Sequence

from agent.storage import Record
from agent.storage.store import Counters, user_meta

QUARANTINE_LOG_BYTES = 200

log = logging.getLogger(__name__)


class MemoryStore:
    kind = "memory"
    alive = True

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.rows: dict[int, Record] = {}  # insertion order is id order
        self.meta: dict[str, str | None] = {}
        self.hw = 0
        self.dropped = self.quarantined = 0

    @property
    def depth(self) -> int:
        return len(self.rows)

    @property
    def holds_meta(self) -> bool:
        return bool(self.meta)

    def append(self, rows: Sequence[Record], meta: Mapping[str, str | None],
               now: float) -> int:
        for row in rows:
            self.rows.setdefault(row.id, row)
            self.hw = max(self.hw, row.id)
        self.meta.update(meta)
        excess = len(self.rows) - self.max_rows
        for row_id in list(itertools.islice(self.rows, max(excess, 0))):
            del self.rows[row_id]
        self.dropped += max(excess, 0)
        return max(excess, 0)

    def peek(self, limit: int, after_id: int) -> list[Record]:
        newer = (row for row in self.rows.values() if row.id > after_id)
        return list(itertools.islice(newer, limit))

    def delete(self, ids: Sequence[int]) -> None:
        for row_id in ids:
            self.rows.pop(row_id, None)

    def quarantine(self, ids: Sequence[int], reason: str, now: float) -> None:
        for row_id in ids:
            row = self.rows.pop(row_id, None)
            if row:
                self.quarantined += 1
                log.error("dropping record %d held in memory (%s): %r", row_id, reason,
                          row.payload[:QUARANTINE_LOG_BYTES])

    def get_meta(self, key: str) -> tuple[bool, str | None]:
        return key in self.meta, self.meta.get(key)

    def meta_items(self) -> dict[str, str | None]:
        return user_meta(self.meta)

    def forget_meta(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.meta.pop(key, None)

    def min_id(self) -> int | None:
        return next(iter(self.rows), None)

    def renumber(self, offset: int) -> None:
        self.rows = {i + offset: Record(i + offset, r.topic, r.payload, r.created)
                     for i, r in self.rows.items()}
        self.hw += offset

    def counters(self, now: float) -> Counters:
        oldest = next(iter(self.rows.values()), None)
        size = sum(len(r.payload) for r in self.rows.values())
        return Counters(len(self.rows), oldest.created if oldest else None, size,
                        self.dropped, self.quarantined)

    def maintain(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass
