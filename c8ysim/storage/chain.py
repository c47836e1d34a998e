"""The buffer's tiers in order, oldest rows first, and the rules that hold across them.

Invariant: every row in a tier is older than every row in a later tier. This module keeps
it: a write goes to the first working tier at or after the newest tier that holds (or may
hold) rows, and takes the device state that later tiers hold along (the newest value lives
in the newest tier that has the key). It also decides where a failing tier's rows go
meanwhile (the next working tier, else the last one), numbers the tiers' slots, and counts
the rows known lost in the ledger. The drain (`c8ysim.storage.drain`), the opening of
stores (`c8ysim.storage.opening`) and the housekeeping (`c8ysim.storage.maintenance`) all
work through a Chain.
"""

from __future__ import annotations

import logging
import random
from typing import Callable, Iterable, Sequence

from c8ysim.storage.ledger import Ledger
from c8ysim.storage.store import Item, StoreError
from c8ysim.storage.tier import Tier

log = logging.getLogger(__name__)


class Chain:
    def __init__(self, tiers: Sequence[Tier], ledger: Ledger | None,
                 clock: Callable[[], float], wall: Callable[[], float], rng: random.Random):
        self.tiers, self.ledger = list(tiers), ledger
        self.clock, self.wall, self.rng = clock, wall, rng
        for index, tier in enumerate(self.tiers):
            tier.slot = index

    @property
    def primary(self) -> Tier:
        return self.tiers[0]

    @property
    def last(self) -> Tier:
        return self.tiers[-1]

    def later(self, tier: Tier) -> list[Tier]:
        return self.tiers[self.tiers.index(tier) + 1:]

    def tier_of(self, slot: int) -> Tier | None:
        return next((t for t in self.tiers if t.slot == slot), None)

    def new_slot(self, tier: Tier) -> None:
        """The tier's store is another one now: ids handed out before name nothing in it."""
        tier.renumber(max(t.slot for t in self.tiers) + 1)

    # -- writing ------------------------------------------------------------------------------

    def write(self, rows: list[Item], meta: dict[str, str | None]) -> bool:
        """Append to the first tier that takes the rows; False when none does."""
        for tier in self.writable_after_newest():
            if self.append(tier, rows, meta):
                return True
        return False

    def writable_after_newest(self, tiers: Sequence[Tier] | None = None) -> list[Tier]:
        """Working tiers (of `tiers`, all by default) at or after the newest one of them
        that holds (or may hold) rows: where rows may go without passing older ones."""
        tiers = self.tiers if tiers is None else tiers
        newest = max((i for i, t in enumerate(tiers) if t.holds_rows()), default=0)
        return [t for t in tiers[newest:] if t.writable]

    def append(self, tier: Tier, rows: list[Item], meta: dict[str, str | None]) -> bool:
        """Write to `tier`, first taking over the device state later tiers hold (so the
        newest value always lives in the newest tier that has the key)."""
        later = [t for t in self.later(tier) if t.readable]
        try:
            carried = {}
            for source in later:
                carried.update(source.store.meta_items())
            dropped = tier.store.append(rows, {**carried, **meta}, self.wall())
        except StoreError as exc:
            self.failed(tier, exc)
            return False
        tier.depth += len(rows) - dropped
        tier.succeeded(dropped)
        for source in later:
            self._forget_meta(source, carried)
        return True

    def _forget_meta(self, tier: Tier, keys: Iterable[str]) -> None:
        if keys:
            try:
                tier.store.forget_meta(keys)
            except StoreError as exc:
                self.failed(tier, exc)

    # -- trouble ------------------------------------------------------------------------------

    def failed(self, tier: Tier, exc: Exception) -> None:
        """`tier` failed (a StoreError; on reopening also StorageConfigError): rows go to
        its fallback until a retry works."""
        reason = exc.reason if isinstance(exc, StoreError) else str(exc)
        fallback = self.fallback_for(tier)
        tier.failed(reason, self.clock(), self.rng, fallback, last_resort=fallback is self.last)

    def fallback_for(self, tier: Tier) -> Tier:
        return next((t for t in self.later(tier) if t.writable), self.last)

    def lose(self, count: int, message: str) -> None:
        """Rows the buffer knows it could not keep: logged, and counted in the ledger."""
        log.warning("%s (lost so far: %d)", message,
                    count + (self.ledger.lost if self.ledger else 0))
        if self.ledger is not None:
            self.ledger.lost += count
            self.ledger.save()
