"""Opening and reopening a tier's store, and what a store that comes back new means.

At start each store opens once; a StorageConfigError (retrying cannot help) reaches the
caller, any other failure is retried by the maintenance with capped backoff, the file's
integrity checked first. A store that comes back as another file (new, empty, or the old one
moved aside as corrupt) gets a new slot, so ids handed out before name nothing in it, and
the rows the old one held are counted lost (`lost`, in the ledger). The primary's device
state is numbered (`META_SEQ_KEY`) like the ledger's: when the ledger's is newer (the file
was lost, or the newest state was in memory when the process ended), the store takes it, so
energy registers never go back.
"""

from __future__ import annotations

import logging

from c8ysim.storage import StorageConfigError
from c8ysim.storage.chain import Chain
from c8ysim.storage.ledger import META_SEQ_KEY
from c8ysim.storage.store import StoreError
from c8ysim.storage.tier import Tier

log = logging.getLogger(__name__)


def first_open(chain: Chain, tier: Tier) -> None:
    """Open at start; StorageConfigError (retrying cannot help) reaches the caller."""
    try:
        tier.store = tier.opener(False)
    except StoreError as exc:
        # A file that cannot be opened may hold older rows (nothing newer goes out before
        # them), unless it did not exist, or the ledger saw it empty at the last stop.
        tier.known_empty = exc.empty or (tier is chain.primary and chain.ledger is not None
                                         and chain.ledger.queued == 0)
        chain.failed(tier, exc)
        return
    _opened(chain, tier, previous_depth=None)


def retry(chain: Chain, tier: Tier) -> None:
    """A failing tier's retry: reopen its store if the connection is gone (checking the
    file), then let writes try it again."""
    if not tier.readable and not _reopen(chain, tier):
        return  # still failing: its failure stands, so the maintenance retries it again
    tier.failure, tier.recovering = None, True


def _reopen(chain: Chain, tier: Tier) -> bool:
    previous = tier.unsent() if tier.store is not None else None
    if tier.store is not None:
        tier.store.close()
    try:
        store = tier.opener(True)  # after a failure, check the file's integrity
    except (StoreError, StorageConfigError) as exc:
        chain.failed(tier, exc)
        tier.known_empty = tier.store is None and getattr(exc, "empty", False)
        return False
    replaced = tier.store is not None and (store.lost_file or store.fresh)
    tier.store = store
    if replaced:
        chain.new_slot(tier)
    return _opened(chain, tier, previous)


def _opened(chain: Chain, tier: Tier, previous_depth: int | None) -> bool:
    """A store (re)opened. If its file is new, empty or was moved aside, the readings it
    held are lost: count them (the ledger knows the primary's from before a restart).
    A primary whose device state is older than the ledger's takes the ledger's.
    False (the failure recorded) when the store failed on the way."""
    store = tier.store
    try:
        tier.depth = store.depth()
    except StoreError as exc:
        chain.failed(tier, exc)
        return False
    if store.fresh or store.lost_file:
        held = previous_depth if previous_depth is not None else (
            chain.ledger.queued if tier is chain.primary and chain.ledger else 0)
        if held:
            where = f"moved aside to {store.lost_file}" if store.lost_file else "gone"
            chain.lose(held, f"{tier.label}: the file that held {held} readings is {where}")
    if tier is chain.primary and chain.ledger is not None:
        return _restore_state(chain, tier)
    return True


def _restore_state(chain: Chain, tier: Tier) -> bool:
    ledger = chain.ledger
    try:
        stored = int(tier.store.get_meta(META_SEQ_KEY)[1] or 0)
        if ledger.meta and ledger.seq > stored:
            tier.store.append([], {**ledger.meta, META_SEQ_KEY: str(ledger.seq)}, chain.wall())
            log.warning("%s: device state restored from %s (it was newer)", tier.label,
                        ledger.path)
    except (StoreError, ValueError) as exc:
        chain.failed(tier, exc)
        return False
    ledger.seq = max(ledger.seq, stored)
    return True
