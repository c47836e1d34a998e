"""The Buffer every device uses: a chain of stores, oldest rows first, that never raises.

Tiers, oldest first:   SQLite file -> memory
                       PostgreSQL -> SQLite fallback file -> memory

Each store numbers its own rows. The buffer hands out ids that name the tier too
(`tier slot << 64 | row id`), so an ack or a quarantine finds its store. Invariant: every
row in a tier is older than every row in a later tier. Hence:

- Writes go to the first working tier at or after the newest tier that holds rows. A
  durable tier drains where it is; only the memory overflow moves its rows (and the device
  state) back into a durable tier once one works again, so nothing waits in memory longer
  than a storage fault lasts.
- Reads concatenate the tiers. A tier that cannot be read and may hold rows stops the read
  there: nothing newer goes out before what it holds (order over availability). A tier known
  to be empty (PostgreSQL died while the drain was caught up) does not stop it.
- The drain is a pass: `peek(limit, 0)` starts one, `peek(limit, after_id)` goes on after
  the last row the caller took. The buffer keeps a cursor per tier, so rows another process
  appended, or that moved out of memory, are met in order within the same pass.
- Acks for a tier that cannot be written are remembered and applied when it is back.
- A failing tier is retried with capped exponential backoff; failures are logged once per
  burst, recoveries once, and `stats().degraded` says what is wrong in one line.
- A file deleted or replaced under the running device is noticed within a second: its rows
  (still readable through the open handle) are carried over into a new file. Rows the
  buffer knows it could not keep (a corrupt file moved aside, memory at exit with no working
  disk) are counted in `lost` (kept in the ledger, see `c8ysim.storage.ledger`) and logged.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Callable, Iterable, Mapping, Sequence

from c8ysim import backoff, logs
from c8ysim.storage import BufferStats, Record, StorageConfigError
from c8ysim.storage.ledger import Ledger
from c8ysim.storage.store import EMPTY, Counters, Item, Store, StoreError, user_meta

RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0
MOVE_CHUNK_ROWS = 2_000
MOVE_BUDGET_S = 0.2  # per maintenance call: a big move never stalls a tick for long
REPLACED_CHECK_S = 1.0  # how often the buffer looks whether its file is still there
ID_BITS = 64  # a store's own row ids fit below this
META_SEQ_KEY = "buffer.meta_seq"  # which device state is newer: the store's or the ledger's

log = logging.getLogger(__name__)


class Tier:
    """One place rows can live: its store (once opened), how to (re)open it, and its health."""

    def __init__(self, label: str, opener: Callable[[bool], Store], durable: bool = True):
        self.label, self.opener, self.durable = label, opener, durable
        self.store: Store | None = None  # None until it opened once: contents unknown
        self.slot = 0  # in the ids handed out; a new slot each time the store is replaced
        self.failure: str | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.recovering = False
        self.known_empty = False  # it never opened, but it holds nothing (no file yet)
        self.pending_acks: set[int] = set()
        self.cursor = 0  # the last row id of this tier the drain took in this pass
        self.depth = 0  # rows it holds: counted by the store on open and in every stats(),
        # followed in between by what this process appended and removed
        self.last_counters = EMPTY
        self.errors = logs.BurstLog(log)
        self.drops = logs.BurstLog(log)

    @property
    def readable(self) -> bool:
        return self.store is not None and self.store.alive

    @property
    def writable(self) -> bool:
        return self.readable and self.failure is None

    def unsent(self) -> int | None:
        """Rows it may still hand out; None when unknown (never opened, may hold rows)."""
        if self.store is None:
            return 0 if self.known_empty else None
        return max(0, self.depth - len(self.pending_acks))

    def holds_rows(self) -> bool:
        return self.unsent() != 0

    def peek(self, limit: int, after_id: int) -> list[Record]:
        rows = self.store.peek(limit + len(self.pending_acks), after_id)
        return [r for r in rows if r.id not in self.pending_acks][:limit]


class TieredBuffer:
    def __init__(self, tiers: Sequence[Tier], backend: str, ledger: Ledger | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None):
        self.tiers, self.backend, self.ledger = list(tiers), backend, ledger
        self.clock, self.wall, self.rng = clock, wall, rng or random.Random()
        for index, tier in enumerate(self.tiers):
            tier.slot = index
        self.moves = logs.BurstLog(log)
        self.taken: dict[int, int] = {}  # tier index -> last row id the latest peek gave
        self.next_replaced_check = 0.0
        for tier in reversed(self.tiers):  # newest first: a failure can name its fallback
            self._first_open(tier)

    # -- the Buffer contract ------------------------------------------------------------------

    def put_many(self, items: Iterable[Item], meta: Mapping[str, str | None] | None = None
                 ) -> None:
        self._maintain(self.clock())
        rows = [(topic, bytes(payload), created) for topic, payload, created in items]
        meta = dict(meta or {})
        if meta and self.ledger is not None:  # numbered: the newer of store and ledger wins
            self.ledger.seq += 1
            meta[META_SEQ_KEY] = str(self.ledger.seq)
        if not self._write(rows, meta):
            raise StoreError("no store can take the readings")  # only without memory
        if meta and self.ledger is not None:
            primary = self.tiers[0]
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
                    self._failed(tier, exc)
                    continue
                if found:
                    return value
        return self.ledger.meta.get(key) if self.ledger is not None else None

    def peek(self, limit: int, after_id: int = 0) -> list[Record]:
        self._follow(after_id)
        rows: list[Record] = []
        self.taken = {}
        for index, tier in enumerate(self.tiers):
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

    def ack(self, ids: Iterable[int]) -> None:
        for tier, group in self._by_tier(ids):
            if tier.writable:
                try:
                    removed = tier.store.delete(group)
                    tier.depth -= removed
                    if not tier.durable and self.ledger is not None:
                        self.ledger.bypassed += removed  # saved with the next tick
                    continue
                except StoreError as exc:
                    self._failed(tier, exc)
            tier.pending_acks.update(group)

    def quarantine(self, ids: Iterable[int], reason: str) -> None:
        for tier, group in self._by_tier(ids):
            if tier.readable:
                try:
                    tier.depth -= tier.store.quarantine(group, reason, self.wall())
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
            backend=self.backend, lost=self.ledger.lost if self.ledger else 0)

    def close(self) -> None:
        """Last attempt to get readings held in memory onto a durable store, then close."""
        self._maintain(math.inf)
        if self.ledger is not None and self.tiers[0].readable:
            self.ledger.update({}, self.tiers[0].unsent())
            self.ledger.save()
        for tier in self.tiers:
            if tier.readable and tier.store.file_state() and tier.unsent():
                self._lose(tier.unsent(), f"{tier.label}: {tier.unsent()} readings are lost "
                                          "with the deleted file")
        memory = self.tiers[-1]
        held = memory.unsent() if not memory.durable else 0
        if held:
            self._lose(held, f"{held} readings held in memory are lost: no durable store "
                             "works")
        for tier in self.tiers:
            if tier.store is not None:
                tier.store.close()

    # -- reading ------------------------------------------------------------------------------

    def _follow(self, after_id: int) -> None:
        """Move the tiers' cursors: a new pass, or on after the row the caller took last."""
        if after_id <= 0:
            for tier in self.tiers:
                tier.cursor = 0
            return
        tier = self._tier_of(after_id >> ID_BITS)
        if tier is None:
            return  # a row of a store replaced since: the cursors stay
        index = self.tiers.index(tier)
        for earlier in range(index):  # the caller took everything before its last row
            if earlier in self.taken:
                self.tiers[earlier].cursor = max(self.tiers[earlier].cursor,
                                                 self.taken[earlier])
        tier.cursor = after_id & ((1 << ID_BITS) - 1)

    def _peek_tier(self, tier: Tier, limit: int) -> list[Record] | None:
        """Its rows after its cursor, or None when it cannot be read."""
        if not tier.readable:
            return None
        try:
            return tier.peek(limit, tier.cursor)
        except StoreError as exc:
            self._failed(tier, exc)
            return None

    def _tier_of(self, slot: int) -> Tier | None:
        return next((t for t in self.tiers if t.slot == slot), None)

    def _by_tier(self, ids: Iterable[int]) -> list[tuple[Tier, list[int]]]:
        groups: dict[int, list[int]] = {}
        for row_id in ids:
            groups.setdefault(row_id >> ID_BITS, []).append(row_id & ((1 << ID_BITS) - 1))
        found = [(self._tier_of(slot), group) for slot, group in sorted(groups.items())]
        return [(tier, group) for tier, group in found if tier is not None]

    # -- writing ------------------------------------------------------------------------------

    def _write(self, rows: list[Item], meta: dict[str, str | None]) -> bool:
        for tier in self._write_candidates():
            if self._append(tier, rows, meta):
                return True
        return False

    def _write_candidates(self) -> list[Tier]:
        """Working tiers at or after the newest one that holds (or may hold) rows."""
        newest = max((i for i, t in enumerate(self.tiers) if t.holds_rows()), default=0)
        return [t for t in self.tiers[newest:] if t.writable]

    def _append(self, tier: Tier, rows: list[Item], meta: dict[str, str | None]) -> bool:
        """Write to `tier`, first taking over the device state later tiers hold (so the
        newest value always lives in the newest tier that has the key)."""
        later = [t for t in self.tiers[self.tiers.index(tier) + 1:] if t.readable]
        try:
            carried = {}
            for source in later:
                carried.update(source.store.meta_items())
            dropped = tier.store.append(rows, {**carried, **meta}, self.wall())
        except StoreError as exc:
            self._failed(tier, exc)
            return False
        tier.depth += len(rows) - dropped
        self._succeeded(tier, dropped)
        for source in later:
            self._forget_meta(source, carried)
        return True

    def _forget_meta(self, tier: Tier, keys) -> None:
        if keys:
            try:
                tier.store.forget_meta(keys)
            except StoreError as exc:
                self._failed(tier, exc)

    # -- health -------------------------------------------------------------------------------

    def _first_open(self, tier: Tier) -> None:
        """Open at start; StorageConfigError (retrying cannot help) reaches the caller."""
        try:
            tier.store = tier.opener(False)
        except StoreError as exc:
            # A file that cannot be opened may hold older rows (nothing newer goes out before
            # them), unless it did not exist, or the ledger saw it empty at the last stop.
            tier.known_empty = exc.empty or (tier is self.tiers[0] and self.ledger is not None
                                             and self.ledger.queued == 0)
            self._failed(tier, exc)
            return
        self._opened(tier, previous_depth=None)

    def _opened(self, tier: Tier, previous_depth: int | None) -> None:
        """A store (re)opened. If its file is new, empty or was moved aside, the readings it
        held are lost: count them (the ledger knows the primary's from before a restart).
        A primary whose device state is older than the ledger's (lost with the file, or
        last written to memory that ended with the process) takes the ledger's: registers
        never go back."""
        store = tier.store
        try:
            tier.depth = store.depth()
        except StoreError as exc:
            self._failed(tier, exc)
            return
        if store.fresh or store.lost_file:
            held = previous_depth if previous_depth is not None else (
                self.ledger.queued if tier is self.tiers[0] and self.ledger else 0)
            if held:
                where = f"moved aside to {store.lost_file}" if store.lost_file else "gone"
                self._lose(held, f"{tier.label}: the file that held {held} readings is {where}")
        if tier is self.tiers[0] and self.ledger is not None:
            self._restore_state(tier)

    def _restore_state(self, tier: Tier) -> None:
        try:
            stored = int(tier.store.get_meta(META_SEQ_KEY)[1] or 0)
            if self.ledger.meta and self.ledger.seq > stored:
                tier.store.append([], {**self.ledger.meta, META_SEQ_KEY: str(self.ledger.seq)},
                                  self.wall())
                log.warning("%s: device state restored from %s (it was newer)", tier.label,
                            self.ledger.path)
        except (StoreError, ValueError) as exc:
            self._failed(tier, exc if isinstance(exc, StoreError) else StoreError(str(exc)))
            return
        self.ledger.seq = max(self.ledger.seq, stored)

    def _retry(self, tier: Tier) -> None:
        if not tier.readable:
            previous = tier.unsent() if tier.store is not None else None
            if tier.store is not None:
                tier.store.close()
            try:
                store = tier.opener(True)  # after a failure, check the file's integrity
            except (StoreError, StorageConfigError) as exc:
                self._failed(tier, exc if isinstance(exc, StoreError) else StoreError(str(exc)))
                tier.known_empty = tier.store is None and getattr(exc, "empty", False)
                return
            replaced = tier.store is not None and (store.lost_file or store.fresh)
            tier.store = store
            if replaced:
                self._new_slot(tier)
            self._opened(tier, previous)
        tier.failure, tier.recovering = None, True

    def _new_slot(self, tier: Tier) -> None:
        """The tier's store is another one now: ids handed out before name nothing in it."""
        tier.slot = max(t.slot for t in self.tiers) + 1
        tier.cursor = 0
        tier.pending_acks.clear()

    def _failed(self, tier: Tier, exc: StoreError) -> None:
        tier.failure, tier.recovering = exc.reason, False
        tier.failures += 1
        tier.retry_at = self.clock() + backoff.full_jitter(
            tier.failures, RETRY_BASE_S, RETRY_MAX_S, self.rng)
        fallback = self._fallback_for(tier)
        level = logging.ERROR if fallback is self.tiers[-1] else logging.WARNING
        where = f"writing to the {fallback.label}" if fallback is not tier else "retrying"
        tier.errors(level, "%s: %s; %s until it works again", tier.label, exc.reason, where)

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

    def _lose(self, count: int, message: str) -> None:
        log.warning("%s (lost so far: %d)", message,
                    count + (self.ledger.lost if self.ledger else 0))
        if self.ledger is not None:
            self.ledger.lost += count
            self.ledger.save()

    def _maintain(self, now: float) -> None:
        for tier in self.tiers:
            if tier.failure is not None and now >= tier.retry_at:
                self._retry(tier)
        if now >= self.next_replaced_check:
            self.next_replaced_check = now + REPLACED_CHECK_S
            for tier in self.tiers:
                self._check_file(tier)
        for tier in self.tiers:
            if tier.pending_acks and tier.writable:
                self._flush_acks(tier)
        self._move_out_of_memory()
        for tier in self.tiers:
            if tier.writable:
                try:
                    tier.store.maintain(self.wall())
                except StoreError as exc:
                    self._failed(tier, exc)

    def _flush_acks(self, tier: Tier) -> None:
        try:
            tier.depth -= tier.store.delete(sorted(tier.pending_acks))
        except StoreError as exc:
            self._failed(tier, exc)
            return
        tier.pending_acks.clear()

    # -- moving rows ----------------------------------------------------------------------------

    def _check_file(self, tier: Tier) -> None:
        state = tier.store.file_state() if tier.readable else None
        if state == "replaced":
            self._carry_over(tier)
        elif state == "damaged":  # reopened (and checked) at once; what it held is lost
            tier.store.close()
            self._failed(tier, StoreError("the file was cut short or overwritten"))
            tier.retry_at = 0.0
            self._retry(tier)

    def _carry_over(self, tier: Tier) -> None:
        """Its file was deleted or replaced: copy what the open handle still reads back to
        the path (same ids, same state), then reopen it there."""
        log.error("%s: the file was deleted or replaced while in use; copying it back",
                  tier.label)
        try:
            tier.store.rescue()
        except StoreError as exc:
            tier.errors(logging.ERROR, "%s: %s; the readings stay in the deleted file until "
                        "it can be copied back", tier.label, exc.reason)
            return
        try:
            tier.store = tier.opener(True)
        except (StoreError, StorageConfigError) as exc:
            self._failed(tier, exc if isinstance(exc, StoreError) else StoreError(str(exc)))
            return
        log.warning("%s: copied back with its %d readings", tier.label, tier.unsent())

    def _move_out_of_memory(self) -> None:
        """Memory rows and state go back into a durable tier as soon as one works, oldest
        first and behind everything older (the write rule), in bounded chunks."""
        memory = self.tiers[-1]
        if memory.durable or not (memory.depth or memory.store.meta_items()):
            return
        durable = self.tiers[:-1]
        newest = max((i for i, t in enumerate(durable) if t.holds_rows()), default=0)
        dest = next((t for t in durable[newest:] if t.writable), None)
        deadline = self.clock() + MOVE_BUDGET_S
        while dest is not None and self.clock() <= deadline:
            rows = memory.store.peek(MOVE_CHUNK_ROWS, 0)
            if not self._append(dest, [(r.topic, r.payload, r.created) for r in rows], {}):
                return
            memory.depth -= memory.store.delete([r.id for r in rows])
            self.moves(logging.INFO, "moved readings from the %s into the %s (%d left)",
                       memory.label, dest.label, memory.depth)
            if not memory.depth:
                return

    # -- reporting ----------------------------------------------------------------------------

    def _counters(self, tier: Tier, now: float) -> Counters:
        """Fresh when it can be read; else what it last said."""
        if tier.readable:
            try:
                tier.last_counters = tier.store.counters(now)
                tier.depth = tier.last_counters.depth
            except StoreError as exc:
                self._failed(tier, exc)
        last = tier.last_counters
        if tier.store is None:
            return last
        return Counters(tier.unsent() or 0, last.oldest_created, last.bytes, last.dropped,
                        last.quarantined)

    def _degraded(self) -> str | None:
        parts = [f"{t.label}: {t.failure}" for t in self.tiers if t.failure]
        primary_down = self.tiers[0].failure is not None
        parts += [f"{t.unsent()} readings in the {t.label}" for t in self.tiers[1:]
                  if t.unsent() and (primary_down or not t.durable)]
        blocker = next((t for t in self.tiers if not t.readable and t.holds_rows()), None)
        if blocker and any(t.unsent() for t in self.tiers[self.tiers.index(blocker) + 1:]):
            parts.append(f"sending paused until the {blocker.label} is back (it holds older "
                         "readings)")
        return "; ".join(parts) or None
