"""The Buffer every device uses: a chain of stores, oldest rows first, that never raises.

Tiers, oldest first:   SQLite file -> memory
                       PostgreSQL -> SQLite fallback file -> memory

The buffer hands out the ids itself (one counter above every id any tier ever held), so a
row keeps its id when it moves to another tier and the session's drain cursor stays valid.
Invariant: every row in a tier has a smaller id than every row in a later tier. Hence:

- Writes go to the first working tier at or after the newest tier that holds rows.
- When an older tier works again, rows move back into it, oldest first (in maintenance, run
  by put_many and stats), so order is kept across every switch: the fallback backlog goes
  out before anything written after PostgreSQL came back.
- Reads concatenate the tiers. A tier that cannot be read and may hold rows stops the read
  there: nothing newer goes out before what it holds (order over availability; the rows wait
  durably in the fallback). A tier known to be empty (e.g. PostgreSQL died while the drain
  was caught up) does not stop the read: the fallback is sent during the outage.
- Acks for a tier that cannot be written are remembered and applied when it is back.
- A failing tier is retried with capped exponential backoff; failures are logged once per
  burst, recoveries once, and `stats().degraded` says what is wrong in one line.

Ids are provisional while a tier has never been opened (its high-water is unknown): when it
opens, later tiers are renumbered above it if needed. That is safe because nothing behind a
never-opened tier was handed out (the read rule above).
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Callable, Iterable, Mapping, Sequence

from agent import backoff
from agent.storage import BufferStats, Record, StorageConfigError
from agent.storage.bursts import BurstLog
from agent.storage.store import EMPTY, Counters, Store, StoreError

RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0
MOVE_CHUNK_ROWS = 2_000
MOVE_BUDGET_S = 0.2  # per maintenance call: a big move-back never stalls a tick for long

log = logging.getLogger(__name__)


class Tier:
    """One place rows can live: its store (once opened), how to (re)open it, and its health."""

    def __init__(self, label: str, opener: Callable[[bool], Store]):
        self.label, self.opener = label, opener  # opener(check_integrity) -> Store
        self.store: Store | None = None  # None until it opened once: contents unknown
        self.failure: str | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.recovering = False
        self.known_empty = False  # it never opened, but it holds nothing (no file yet)
        self.pending_acks: set[int] = set()
        self.last_counters = EMPTY
        self.errors = BurstLog(log)
        self.drops = BurstLog(log)

    @property
    def readable(self) -> bool:
        return self.store is not None and self.store.alive

    @property
    def writable(self) -> bool:
        return self.readable and self.failure is None

    @property
    def unknown(self) -> bool:
        """Never opened, so it may hold rows older than anything in later tiers."""
        return self.store is None and not self.known_empty

    def unsent(self) -> int | None:
        """Rows it may still hand out; None when unknown."""
        if self.store is None:
            return None if self.unknown else 0
        return max(0, self.store.depth - len(self.pending_acks))

    def holds_something(self) -> bool:
        return self.store is not None and (self.store.depth > 0 or self.store.holds_meta)

    def peek(self, limit: int, after_id: int) -> list[Record]:
        rows = self.store.peek(limit + len(self.pending_acks), after_id)
        return [r for r in rows if r.id not in self.pending_acks][:limit]


class TieredBuffer:
    def __init__(self, tiers: Sequence[Tier], backend: str,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None):
        self.tiers, self.backend = list(tiers), backend
        self.clock, self.wall, self.rng = clock, wall, rng or random.Random()
        self.moves = BurstLog(log)
        self.last_id = 0
        for tier in reversed(self.tiers):  # newest first: a failure can name its fallback
            self._first_open(tier)
        self._normalize_from(0)

    # -- the Buffer contract ------------------------------------------------------------------

    def put_many(self, items: Iterable[tuple[str, bytes, float]],
                 meta: Mapping[str, str | None] | None = None) -> None:
        self._maintain(self.clock())
        self._write(self._number(items), dict(meta or {}))

    def set_meta(self, key: str, value: str | None) -> None:
        self._write([], {key: value})

    def get_meta(self, key: str) -> str | None:
        for tier in reversed(self.tiers):  # the newest value lives in the newest tier
            if tier.readable:
                try:
                    found, value = tier.store.get_meta(key)
                except StoreError as exc:
                    self._failed(tier, exc)
                    continue
                if found:
                    return value
        return None

    def peek(self, limit: int, after_id: int = 0) -> list[Record]:
        rows: list[Record] = []
        floor = after_id  # later tiers only hold ids above every id an earlier tier held
        for tier in self.tiers:
            if len(rows) >= limit:
                break
            got = self._peek_tier(tier, limit - len(rows), floor)
            if got is None and tier.unsent() != 0:
                break  # it may hold older rows: send nothing newer before them
            rows += got or []
            floor = max(floor, tier.store.hw if tier.store else 0)
        return rows

    def ack(self, ids: Iterable[int]) -> None:
        for tier, group in self._by_owner(ids):
            if tier.writable:
                try:
                    tier.store.delete(group)
                    continue
                except StoreError as exc:
                    self._failed(tier, exc)
            tier.pending_acks.update(group)

    def quarantine(self, ids: Iterable[int], reason: str) -> None:
        for tier, group in self._by_owner(ids):
            if tier.readable:
                try:
                    tier.store.quarantine(group, reason, self.wall())
                except StoreError as exc:
                    self._failed(tier, exc)  # the rows stay; the session meets them again

    def stats(self, now: float) -> BufferStats:
        self._maintain(self.clock())
        parts = [self._counters(tier, now) for tier in self.tiers]
        oldest = next((c.oldest_created for c in parts if c.depth and c.oldest_created), None)
        return BufferStats(
            depth=sum(c.depth for c in parts),
            oldest_age_s=None if oldest is None else max(0.0, now - oldest),
            bytes=sum(c.bytes for c in parts), dropped=sum(c.dropped for c in parts),
            quarantined=sum(c.quarantined for c in parts), degraded=self._degraded(),
            backend=self.backend)

    def close(self) -> None:
        """Last attempt to get readings held in memory onto a durable store, then close."""
        self._maintain(math.inf)
        held = self.tiers[-1].unsent()
        if held:
            log.error("%d readings held in memory are lost: no durable store works", held)
        for tier in self.tiers:
            if tier.store is not None:
                tier.store.close()

    # -- writing ------------------------------------------------------------------------------

    def _number(self, items: Iterable[tuple[str, bytes, float]]) -> list[Record]:
        rows = []
        for topic, payload, created in items:
            self.last_id += 1
            rows.append(Record(self.last_id, topic, bytes(payload), created))
        return rows

    def _write(self, rows: list[Record], meta: dict[str, str | None]) -> None:
        newest = max((i for i, t in enumerate(self.tiers) if t.holds_something()), default=0)
        for tier in self.tiers[newest:]:
            if tier.writable:
                try:
                    dropped = tier.store.append(rows, meta, self.wall())
                except StoreError as exc:
                    self._failed(tier, exc)
                    continue
                self._succeeded(tier, dropped)
                return

    def _by_owner(self, ids: Iterable[int]) -> list[tuple[Tier, list[int]]]:
        """Group ids by the tier that holds them: the first whose high-water reaches them."""
        groups: dict[int, list[int]] = {}
        known = [(i, t) for i, t in enumerate(self.tiers) if t.store is not None]
        for row_id in ids:
            owner = next((i for i, t in known if row_id <= t.store.hw), None)
            if owner is not None:
                groups.setdefault(owner, []).append(row_id)
        return [(self.tiers[i], group) for i, group in sorted(groups.items())]

    def _peek_tier(self, tier: Tier, limit: int, after_id: int) -> list[Record] | None:
        """Its rows, or None when it cannot be read."""
        if not tier.readable:
            return None
        if tier.store.depth == 0:
            return []
        try:
            return tier.peek(limit, after_id)
        except StoreError as exc:
            self._failed(tier, exc)
            return None

    # -- health -------------------------------------------------------------------------------

    def _first_open(self, tier: Tier) -> None:
        """Open at start; StorageConfigError (retrying cannot help) reaches the caller."""
        try:
            tier.store = tier.opener(False)
        except StoreError as exc:
            tier.known_empty = exc.empty
            self._failed(tier, exc)
            return
        self.last_id = max(self.last_id, tier.store.hw)

    def _retry(self, index: int, tier: Tier) -> None:
        if not tier.readable:
            never_opened = tier.store is None
            if tier.store is not None:
                tier.store.close()
            try:
                tier.store = tier.opener(True)  # after a failure, check the file's integrity
            except (StoreError, StorageConfigError) as exc:
                self._failed(tier, exc if isinstance(exc, StoreError) else StoreError(str(exc)))
                tier.known_empty = never_opened and getattr(exc, "empty", False)
                return
            if never_opened:
                self._normalize_from(index)
        tier.failure, tier.recovering = None, True

    def _failed(self, tier: Tier, exc: StoreError) -> None:
        tier.failure, tier.recovering = exc.reason, False
        tier.failures += 1
        tier.retry_at = self.clock() + backoff.full_jitter(
            tier.failures, RETRY_BASE_S, RETRY_MAX_S, self.rng)
        fallback = self._fallback_for(tier)
        level = logging.ERROR if fallback is self.tiers[-1] else logging.WARNING
        tier.errors(level, "%s: %s; writing to the %s until it works again", tier.label,
                    exc.reason, fallback.label)

    def _succeeded(self, tier: Tier, dropped: int) -> None:
        if tier.recovering:
            log.info("%s works again", tier.label)
            tier.recovering, tier.failures = False, 0
        if dropped:
            tier.drops(logging.WARNING, "%s: dropped the %d oldest readings (beyond "
                       "storage.max_records or older than storage.max_age_hours)", tier.label,
                       dropped)

    def _fallback_for(self, tier: Tier) -> Tier:
        later = self.tiers[self.tiers.index(tier) + 1:]
        return next((t for t in later if t.writable), self.tiers[-1])

    def _maintain(self, now: float) -> None:
        for index, tier in enumerate(self.tiers):
            if tier.failure is not None and now >= tier.retry_at:
                self._retry(index, tier)
        for tier in self.tiers:
            if tier.pending_acks and tier.writable:
                self._flush_acks(tier)
        self._move_back()
        for tier in self.tiers:
            if tier.writable:
                try:
                    tier.store.maintain(self.wall())
                except StoreError as exc:
                    self._failed(tier, exc)

    def _flush_acks(self, tier: Tier) -> None:
        try:
            tier.store.delete(sorted(tier.pending_acks))
        except StoreError as exc:
            self._failed(tier, exc)
            return
        tier.pending_acks.clear()

    # -- moving rows back -------------------------------------------------------------------------

    def _move_back(self) -> None:
        deadline = self.clock() + MOVE_BUDGET_S
        while (pair := self._move_pair()) and self._move_chunk(*pair):
            if self.clock() >= deadline:
                return

    def _move_pair(self) -> tuple[Tier, Tier] | None:
        """(older working tier, next tier holding something) when rows can move back."""
        for index, dest in enumerate(self.tiers):
            if not dest.writable:
                continue
            for src in self.tiers[index + 1:]:
                if src.unknown:
                    return None  # it may hold older rows: moving past it breaks the order
                if src.holds_something():
                    return (dest, src) if src.readable else None
            return None
        return None

    def _move_chunk(self, dest: Tier, src: Tier) -> bool:
        """Copy the oldest chunk (and the device state) of `src` into `dest`, then delete it
        from `src`. Ids are kept; rows `dest` already held (a copy interrupted before the
        delete) are not copied again, so nothing acked comes back."""
        try:
            rows, meta = src.peek(MOVE_CHUNK_ROWS, 0), src.store.meta_items()
        except StoreError as exc:
            self._failed(src, exc)
            return False
        if not rows and not meta:
            return False
        fresh = [r for r in rows if r.id > dest.store.hw]
        if not (self._append_moved(dest, fresh, meta) and self._forget_moved(src, rows, meta)):
            return False
        self.moves(logging.INFO, "moving readings from the %s back to the %s (%d left)",
                   src.label, dest.label, src.store.depth)
        return True

    def _append_moved(self, dest: Tier, rows: list[Record], meta: dict) -> bool:
        try:
            dropped = dest.store.append(rows, meta, self.wall())
        except StoreError as exc:
            self._failed(dest, exc)
            return False
        self._succeeded(dest, dropped)
        return True

    def _forget_moved(self, src: Tier, rows: list[Record], meta: dict) -> bool:
        try:
            src.store.delete([r.id for r in rows])
            src.store.forget_meta(meta)
        except StoreError as exc:
            self._failed(src, exc)
            return False
        return True

    def _normalize_from(self, start: int) -> None:
        """Renumber tiers from `start` on whose ids are not above every earlier tier's."""
        floor = max((t.store.hw for t in self.tiers[:start] if t.store is not None), default=0)
        for tier in self.tiers[start:]:
            if not tier.readable:
                continue
            try:
                low = tier.store.min_id()
                if low is not None and low <= floor:
                    log.warning("%s: renumbering readings above id %d to keep the order",
                                tier.label, floor)
                    tier.store.renumber(floor + 1 - low)
            except StoreError as exc:
                self._failed(tier, exc)
                continue
            floor = max(floor, tier.store.hw)
        self.last_id = max(self.last_id, floor)

    # -- reporting ----------------------------------------------------------------------------

    def _counters(self, tier: Tier, now: float) -> Counters:
        """Fresh when it can be read; else what it last said, with the depth it is known to
        hold (unknown tiers count as empty)."""
        if tier.readable:
            try:
                tier.last_counters = tier.store.counters(now)
            except StoreError as exc:
                self._failed(tier, exc)
        last, store = tier.last_counters, tier.store
        if store is None:
            return last
        return Counters(tier.unsent(), last.oldest_created, last.bytes, store.dropped,
                        store.quarantined)

    def _degraded(self) -> str | None:
        parts = [f"{t.label}: {t.failure}" for t in self.tiers if t.failure]
        parts += [f"{t.unsent()} readings in the {t.label}" for t in self.tiers[1:]
                  if t.unsent()]
        blocker = next((t for t in self.tiers if not t.readable and t.unsent() != 0), None)
        if blocker and any(t.unsent() for t in self.tiers[self.tiers.index(blocker) + 1:]):
            parts.append(f"sending paused until the {blocker.label} is back (it holds older "
                         "readings)")
        return "; ".join(parts) or None
