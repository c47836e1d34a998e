"""The buffer's housekeeping, run at every write and every stats(): cheap when nothing is due.

In turn: failing tiers whose backoff ran out are retried (`c8ysim.storage.opening`); once a
second each file is looked at: deleted or replaced under the running device, the rows its
open handle still reads are copied back to the path; cut short or overwritten in place, it
is reopened at once and what it held is counted lost. Acks remembered for a tier that could
not take them are applied. The memory overflow moves its rows and the device state back into
a durable tier as soon as one works (behind everything older, in bounded chunks within a
time budget), so nothing waits in memory longer than a storage fault lasts. Last, each store
does its own (space reclaim).
"""

from __future__ import annotations

import logging

from c8ysim import logs
from c8ysim.storage import StorageConfigError
from c8ysim.storage.chain import Chain
from c8ysim.storage.opening import retry
from c8ysim.storage.store import StoreError
from c8ysim.storage.tier import Tier

MOVE_CHUNK_ROWS = 2_000
MOVE_BUDGET_S = 0.2  # per maintenance call: a big move never stalls a tick for long
REPLACED_CHECK_S = 1.0  # how often the buffer looks whether its file is still there

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, chain: Chain):
        self.chain = chain
        self.next_replaced_check = 0.0
        self.moves = logs.BurstLog(log)

    def run(self, now: float) -> None:
        tiers = self.chain.tiers
        for tier in tiers:  # failing, or its store closed under it: open it again
            if not tier.writable and now >= tier.retry_at:
                retry(self.chain, tier)
        if now >= self.next_replaced_check:
            self.next_replaced_check = now + REPLACED_CHECK_S
            for tier in tiers:
                self._check_file(tier)
        for tier in tiers:
            if tier.pending_acks and tier.writable:
                self._flush_acks(tier)
        self._move_out_of_memory()
        for tier in tiers:
            if tier.writable:
                self._store_maintain(tier)

    def _check_file(self, tier: Tier) -> None:
        state = tier.store.file_state() if tier.readable else None
        if state == "replaced":
            self._carry_over(tier)
        elif state == "damaged":  # reopened (and checked) at once; what it held is lost
            tier.store.close()
            self.chain.failed(tier, StoreError("the file was cut short or overwritten"))
            tier.retry_at = 0.0
            retry(self.chain, tier)

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
            self.chain.failed(tier, exc)
            return
        log.warning("%s: copied back with its %d readings", tier.label, tier.unsent())

    def _flush_acks(self, tier: Tier) -> None:
        try:
            tier.depth -= tier.store.delete(sorted(tier.pending_acks))
        except StoreError as exc:
            self.chain.failed(tier, exc)
            return
        tier.pending_acks.clear()

    def _move_out_of_memory(self) -> None:
        """Memory rows and state go back into a durable tier as soon as one works, oldest
        first and behind everything older (the write rule), in bounded chunks."""
        memory = self.chain.last
        if memory.durable or not (memory.depth or memory.store.meta_items()):
            return
        dest = next(iter(self.chain.writable_after_newest(self.chain.tiers[:-1])), None)
        deadline = self.chain.clock() + MOVE_BUDGET_S
        while dest is not None and self.chain.clock() <= deadline:
            rows = memory.store.peek(MOVE_CHUNK_ROWS, 0)
            if not self.chain.append(dest, [(r.topic, r.payload, r.created) for r in rows], {}):
                return
            memory.depth -= memory.store.delete([r.id for r in rows])
            self.moves(logging.INFO, "moved readings from the %s into the %s (%d left)",
                       memory.label, dest.label, memory.depth)
            if not memory.depth:
                return

    def _store_maintain(self, tier: Tier) -> None:
        try:
            tier.store.maintain(self.chain.wall())
        except StoreError as exc:
            self.chain.failed(tier, exc)
