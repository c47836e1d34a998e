"""The drain: the ids the buffer hands out, and the cursors of one pass over the tiers.

Each store numbers its own rows; an id the buffer hands out names the tier too
(`tier slot << ID_BITS | row id`), so an ack or a quarantine finds its store, and an id of a
store replaced since (its tier has a new slot) names nothing.

The drain is a pass: `peek(limit, 0)` starts one, `peek(limit, after_id)` goes on after the
last row the caller took. A cursor per tier keeps the place, so rows another process
appended, or that moved out of memory, are met in order within the same pass. Reads
concatenate the tiers; a tier that cannot be read and may hold rows stops the read there:
nothing newer goes out before what it holds (order over availability). A tier known to be
empty (PostgreSQL died while the drain was caught up) does not stop it.
"""

from __future__ import annotations

from typing import Iterable

from c8ysim.storage import Record
from c8ysim.storage.chain import Chain
from c8ysim.storage.store import StoreError
from c8ysim.storage.tier import Tier

ID_BITS = 64  # a store's own row ids fit below this
ROW_ID_MASK = (1 << ID_BITS) - 1


class Drain:
    def __init__(self, chain: Chain):
        self.chain = chain
        self.taken: dict[int, int] = {}  # tier index -> last row id the latest peek gave

    def peek(self, limit: int, after_id: int) -> list[Record]:
        self._follow(after_id)
        rows: list[Record] = []
        self.taken = {}
        for index, tier in enumerate(self.chain.tiers):
            if len(rows) >= limit:
                break
            got = self._peek_tier(tier, limit - len(rows))
            if got is None:
                if tier.holds_rows():
                    break  # it may hold older rows: send nothing newer before them
                continue
            if got:
                self.taken[index] = got[-1].id
                rows += [Record(tier.slot << ID_BITS | r.id, r.topic, r.payload, r.created)
                         for r in got]
        return rows

    def by_tier(self, ids: Iterable[int]) -> list[tuple[Tier, list[int]]]:
        """The ids handed out, as each tier's own row ids (ids naming no tier left out)."""
        groups: dict[int, list[int]] = {}
        for row_id in ids:
            groups.setdefault(row_id >> ID_BITS, []).append(row_id & ROW_ID_MASK)
        found = [(self.chain.tier_of(slot), group) for slot, group in sorted(groups.items())]
        return [(tier, group) for tier, group in found if tier is not None]

    def _follow(self, after_id: int) -> None:
        """Move the tiers' cursors: a new pass, or on after the row the caller took last."""
        tiers = self.chain.tiers
        if after_id <= 0:
            for tier in tiers:
                tier.cursor = 0
            return
        tier = self.chain.tier_of(after_id >> ID_BITS)
        if tier is None:
            return  # a row of a store replaced since: the cursors stay
        for earlier in range(tiers.index(tier)):  # the caller took everything before it
            if earlier in self.taken:
                tiers[earlier].cursor = max(tiers[earlier].cursor, self.taken[earlier])
        tier.cursor = after_id & ROW_ID_MASK

    def _peek_tier(self, tier: Tier, limit: int) -> list[Record] | None:
        """Its rows after its cursor, or None when it cannot be read."""
        if not tier.readable:
            return None
        try:
            return tier.peek(limit, tier.cursor)
        except StoreError as exc:
            self.chain.failed(tier, exc)
            return None
