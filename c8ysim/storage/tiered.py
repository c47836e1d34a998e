"""The Buffer every device uses: a chain of stores, oldest rows first, that never raises.

Tiers, oldest first:   SQLite file -> memory
                       PostgreSQL -> SQLite fallback file -> memory

Every row in a tier is older than every row in a later tier. Writes go to the first working
tier at or after the newest tier that holds rows; a durable tier drains where it is, only
the memory overflow moves its rows (and the device state) back into a durable tier once one
works again. Reads concatenate the tiers; a tier that cannot be read and may hold rows stops
the read there (order over availability). Acks for a tier that cannot be written are
remembered and applied when it is back. A failing tier is retried with capped exponential
backoff; failures are logged once per burst, recoveries once, and `stats().degraded` says
what is wrong in one line. A file deleted or replaced under the running device is noticed
within a second and its rows carried over into a new file. Rows the buffer knows it could
not keep (a corrupt file moved aside, memory at exit with no working disk) are counted in
`lost` (kept in the ledger, see `c8ysim.storage.ledger`) and logged.

This module is the Buffer contract and the stats; the parts live beside it:
- `c8ysim.storage.tier`: one store and its health (failure, backoff, pending acks);
- `c8ysim.storage.chain`: the tiers in order: where writes go, fallbacks, lost rows;
- `c8ysim.storage.drain`: the ids handed out (`slot << 64 | row id`) and the drain pass;
- `c8ysim.storage.opening`: (re)opening a store, a replaced file, the ledger's state;
- `c8ysim.storage.maintenance`: retries, file checks, carry-over, leaving memory.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Iterable, Mapping, Sequence

from c8ysim.storage import BufferStats, Record
from c8ysim.storage.chain import Chain
from c8ysim.storage.drain import Drain
from c8ysim.storage.ledger import META_SEQ_KEY, Ledger
from c8ysim.storage.maintenance import Maintenance
from c8ysim.storage.opening import first_open
from c8ysim.storage.store import Counters, Item, StoreError, user_meta
from c8ysim.storage.tier import Tier


class TieredBuffer:
    def __init__(self, tiers: Sequence[Tier], backend: str, ledger: Ledger | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None):
        self.chain = Chain(tiers, ledger, clock, wall, rng or random.Random())
        self.backend = backend
        self.drain = Drain(self.chain)
        self.maintenance = Maintenance(self.chain)
        for tier in reversed(self.tiers):  # newest first: a failure can name its fallback
            first_open(self.chain, tier)

    @property
    def tiers(self) -> list[Tier]:
        return self.chain.tiers

    @property
    def ledger(self) -> Ledger | None:
        return self.chain.ledger

    # -- the Buffer contract ------------------------------------------------------------------

    def put_many(self, items: Iterable[Item], meta: Mapping[str, str | None] | None = None
                 ) -> None:
        self.maintenance.run(self.chain.clock())
        rows = [(topic, bytes(payload), created) for topic, payload, created in items]
        meta = dict(meta or {})
        if meta and self.ledger is not None:  # numbered: the newer of store and ledger wins
            self.ledger.seq += 1
            meta[META_SEQ_KEY] = str(self.ledger.seq)
        if not self.chain.write(rows, meta):
            raise StoreError("no store can take the readings")  # only without memory
        if meta and self.ledger is not None:
            primary = self.chain.primary
            self.ledger.update(user_meta(meta), primary.unsent() if primary.readable else None)
            self.ledger.save()

    def set_meta(self, key: str, value: str | None) -> None:
        self.put_many([], {key: value})

    def get_meta(self, key: str) -> str | None:
        for tier in reversed(self.tiers):  # the newest value lives in the newest tier
            if tier.readable:
                try:
                    found, value = tier.store.get_meta(key)
                except StoreError as exc:
                    self.chain.failed(tier, exc)
                    continue
                if found:
                    return value
        return self.ledger.meta.get(key) if self.ledger is not None else None

    def peek(self, limit: int, after_id: int = 0) -> list[Record]:
        return self.drain.peek(limit, after_id)

    def ack(self, ids: Iterable[int]) -> None:
        for tier, group in self.drain.by_tier(ids):
            if not (tier.writable and self._delete(tier, group)):
                tier.pending_acks.update(group)  # applied when the tier works again

    def quarantine(self, ids: Iterable[int], reason: str) -> None:
        for tier, group in self.drain.by_tier(ids):
            if tier.readable:
                try:
                    tier.depth -= tier.store.quarantine(group, reason, self.chain.wall())
                except StoreError as exc:
                    self.chain.failed(tier, exc)  # the rows stay; the session meets them again

    def stats(self, now: float) -> BufferStats:
        self.maintenance.run(self.chain.clock())
        parts = [self._counters(tier, now) for tier in self.tiers]
        oldest = next((c.oldest_created for c in parts if c.depth and c.oldest_created), None)
        return BufferStats(
            depth=sum(c.depth for c in parts),
            oldest_age_s=None if oldest is None else max(0.0, now - oldest),
            bytes=sum(c.bytes for c in parts), dropped=sum(c.dropped for c in parts),
            quarantined=sum(c.quarantined for c in parts), degraded=self._degraded(),
            backend=self.backend, lost=self.ledger.lost if self.ledger else 0)

    def close(self) -> None:
        """Last attempt to get readings held in memory onto a durable store, then close."""
        self.maintenance.run(math.inf)
        primary = self.chain.primary
        if self.ledger is not None and primary.readable:
            self.ledger.update({}, primary.unsent())
            self.ledger.save()
        for tier in self.tiers:
            if tier.readable and tier.store.file_state() and tier.unsent():
                self.chain.lose(tier.unsent(), f"{tier.label}: {tier.unsent()} readings are "
                                               "lost with the deleted file")
        memory = self.chain.last
        held = memory.unsent() if not memory.durable else 0
        if held:
            self.chain.lose(held, f"{held} readings held in memory are lost: no durable store "
                                  "works")
        for tier in self.tiers:
            if tier.store is not None:
                tier.store.close()

    def _delete(self, tier: Tier, ids: list[int]) -> bool:
        """Delete acked rows; False when the tier failed (then they wait in pending_acks)."""
        try:
            removed = tier.store.delete(ids)
        except StoreError as exc:
            self.chain.failed(tier, exc)
            return False
        tier.depth -= removed
        if not tier.durable and self.ledger is not None:
            self.ledger.bypassed += removed  # saved with the next tick
        return True

    # -- reporting ----------------------------------------------------------------------------

    def _counters(self, tier: Tier, now: float) -> Counters:
        """Fresh when it can be read; else what it last said."""
        if tier.readable:
            try:
                tier.last_counters = tier.store.counters(now)
                tier.depth = tier.last_counters.depth
            except StoreError as exc:
                self.chain.failed(tier, exc)
        last = tier.last_counters
        if tier.store is None:
            return last
        return Counters(tier.unsent() or 0, last.oldest_created, last.bytes, last.dropped,
                        last.quarantined)

    def _degraded(self) -> str | None:
        parts = [f"{t.label}: {t.failure}" for t in self.tiers if t.failure]
        primary_down = self.chain.primary.failure is not None
        parts += [f"{t.unsent()} readings in the {t.label}" for t in self.tiers[1:]
                  if t.unsent() and (primary_down or not t.durable)]
        blocker = next((t for t in self.tiers if not t.readable and t.holds_rows()), None)
        if blocker and any(t.unsent() for t in self.chain.later(blocker)):
            parts.append(f"sending paused until the {blocker.label} is back (it holds older "
                         "readings)")
        return "; ".join(parts) or None
