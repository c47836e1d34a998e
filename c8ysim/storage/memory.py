"""The last-resort store: a bounded in-memory overflow used while no durable store works.

It never fails. Beyond `max_rows` its oldest rows are dropped and counted. Deleted meta keys
are remembered as deletions (value None) so they reach the durable store when it is back.
Quarantined rows are logged (payload head) and counted, not kept: memory is for minutes.
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterable, Mapping, Sequence

from c8ysim import logs
from c8ysim.storage import Record
from c8ysim.storage.store import Counters, Item, user_meta

QUARANTINE_LOG_BYTES = 200

log = logging.getLogger(__name__)


class MemoryStore:
    alive = True
    lost_file = None
    fresh = False

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.rows: dict[int, Record] = {}  # insertion order is id order
        self.meta: dict[str, str | None] = {}
        self.last_id = 0
        self.dropped = self.quarantined = 0

    def append(self, items: Sequence[Item], meta: Mapping[str, str | None],
               now: float) -> int:
        for topic, payload, created in items:
            self.last_id += 1
            self.rows[self.last_id] = Record(self.last_id, topic, bytes(payload), created)
        self.meta.update(meta)
        excess = max(0, len(self.rows) - self.max_rows)
        for row_id in list(itertools.islice(self.rows, excess)):
            del self.rows[row_id]
        self.dropped += excess
        return excess

    def peek(self, limit: int, after_id: int) -> list[Record]:
        newer = (row for row in self.rows.values() if row.id > after_id)
        return list(itertools.islice(newer, limit))

    def delete(self, ids: Sequence[int]) -> int:
        return sum(self.rows.pop(row_id, None) is not None for row_id in ids)

    def quarantine(self, ids: Sequence[int], reason: str, now: float) -> int:
        moved = 0
        for row_id in ids:
            row = self.rows.pop(row_id, None)
            if row:
                moved += 1
                log.error("dropping record %d held in memory (%s): %s", row_id, reason,
                          logs.external(row.payload, QUARANTINE_LOG_BYTES))
        self.quarantined += moved
        return moved

    def depth(self) -> int:
        return len(self.rows)

    def get_meta(self, key: str) -> tuple[bool, str | None]:
        return key in self.meta, self.meta.get(key)

    def meta_items(self) -> dict[str, str | None]:
        return user_meta(self.meta)

    def forget_meta(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.meta.pop(key, None)

    def counters(self, now: float) -> Counters:
        oldest = next(iter(self.rows.values()), None)
        size = sum(len(r.payload) for r in self.rows.values())
        return Counters(len(self.rows), oldest.created if oldest else None, size,
                        self.dropped, self.quarantined)

    def maintain(self, now: float) -> None:
        pass

    def file_state(self) -> str | None:
        return None

    def close(self) -> None:
        pass
