"""Read-ahead for the drain: rows a store already read, served to the next peeks.

The session peeks after every PUBACK but publishes one batch (~80 rows) each time; a
store with costly reads (PostgreSQL: a round trip and bytea decoding) reads a bigger page
once and serves the following peeks from it. The window (start, end] is complete: it holds
every queued row with start < id <= end. New rows always commit with ids above every id
already committed (the store's append lock), so writes never make it stale; deletes are
applied to it; anything else (drops by the limits) clears it.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable

from c8ysim.storage import Record


class ReadAhead:
    def __init__(self, page_rows: int):
        self.page_rows = page_rows
        self.start = self.end = 0
        self.rows: list[Record] = []

    def peek(self, limit: int, after_id: int,
             fetch: Callable[[int, int], list[Record]]) -> list[Record]:
        """Up to `limit` rows after `after_id`; `fetch(limit, after_id)` reads the store."""
        if not self.start <= after_id <= self.end:
            self.start = self.end = after_id
            self.rows = []
        self._forget_up_to(after_id)
        if len(self.rows) < limit:
            fetched = fetch(max(self.page_rows, limit - len(self.rows)), self.end)
            self.rows += fetched
            self.end = fetched[-1].id if fetched else self.end
        return self.rows[:limit]

    def discard(self, ids: Iterable[int]) -> None:
        gone = set(ids)
        self.rows = [r for r in self.rows if r.id not in gone]

    def clear(self) -> None:
        self.start = self.end = 0
        self.rows = []

    def _forget_up_to(self, after_id: int) -> None:
        cut = bisect.bisect_right(self.rows, after_id, key=lambda r: r.id)
        del self.rows[:cut]
        self.start = after_id
