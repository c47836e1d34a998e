"""One tier of the buffer: a store, how to (re)open it, and what the buffer knows about it.

A Tier owns its store's health (the failure, the capped exponential backoff before the next
retry, the log lines: a failure once per burst, a recovery once, drops once per burst), the
acks it could not take yet, its cursor in the current drain pass, and its depth. Which tier
takes over while it fails, and when it is retried, is decided across tiers
(`c8ysim.storage.chain`, `c8ysim.storage.maintenance`).
"""

from __future__ import annotations

import logging
import random
from typing import Callable

from c8ysim import backoff, logs
from c8ysim.storage import Record
from c8ysim.storage.store import EMPTY, Store

RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0

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

    def renumber(self, slot: int) -> None:
        """Its store is another one now: ids handed out before name nothing in it."""
        self.slot, self.cursor = slot, 0
        self.pending_acks.clear()

    def failed(self, reason: str, now: float, rng: random.Random, fallback: Tier,
               last_resort: bool) -> None:
        """Retry it after a jittered backoff; log (once per burst) where rows go meanwhile:
        `fallback`, or nowhere when that is itself (then it is only retried)."""
        self.failure, self.recovering = reason, False
        self.failures += 1
        self.retry_at = now + backoff.full_jitter(self.failures, RETRY_BASE_S, RETRY_MAX_S, rng)
        level = logging.ERROR if last_resort else logging.WARNING
        where = f"writing to the {fallback.label}" if fallback is not self else "retrying"
        self.errors(level, "%s: %s; %s until it works again", self.label, reason, where)

    def succeeded(self, dropped: int) -> None:
        """A write went through: say once that it works again; report the limits' drops."""
        if self.recovering:
            log.info("%s works again", self.label)
            self.recovering, self.failures = False, 0
        if dropped:
            self.drops(logging.WARNING, "%s: dropped the %d oldest readings (beyond "
                       "storage.max_records or older than storage.max_age_hours)", self.label,
                       dropped)
