"""The tenant's stream limit (ref §5): lines per second over all devices, then a queue.

Owns the limit a test sets with ``FakeTenant.limit_stream``: a token bucket of
``lines_per_s`` (burst: one second's worth) shared by every session of the
tenant, and a FIFO queue of at most ``queue_lines`` lines.  A publish that
finds no queue and enough tokens is processed at once; otherwise it waits in
the queue, in arrival order over all sessions, and is processed (and only
then acknowledged) when the bucket allows.  A publish that would overflow the
queue is rejected: it is not processed and its session is disconnected.  A
device that reconnects while the queue is still full is therefore
disconnected again on its first message, as the reference says.

Queued publishes of a session that has ended are dropped unprocessed: they
were never acknowledged, so the device sends them again (the fake neither
loses nor duplicates what a device resends).  A publish of ``n`` SmartREST
lines costs ``n`` tokens; one larger than the burst waits for a full bucket
and leaves it in debt.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import Callable

from .connection import Connection
from .topics import SMARTREST_UP


@dataclasses.dataclass
class StreamStats:
    """What the limit did, for tests to report."""

    lines_per_s: float | None = None
    queue_lines: int = 0
    processed_lines: int = 0
    queued_publishes: int = 0       # publishes that had to wait
    max_queued_lines: int = 0
    overflows: dict[str, int] = dataclasses.field(default_factory=dict)   # key -> count
    dropped_publishes: int = 0      # queued, then their session ended


class StreamLimit:
    """Tenant-wide line rate and queue; lives in the server thread."""

    def __init__(self) -> None:
        self.stats = StreamStats()
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._queue: collections.deque[tuple[Connection, int, Callable[[], None]]] = \
            collections.deque()
        self._queued_lines = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def rate(self) -> float | None:
        return self.stats.lines_per_s

    def configure(self, lines_per_s: float | None, queue_lines: int) -> None:
        """Set (None: lift) the limit; the statistics start again."""
        if lines_per_s is not None and lines_per_s <= 0:
            raise ValueError("lines_per_s must be positive (or None)")
        self.stats = StreamStats(lines_per_s, max(0, queue_lines))
        self._tokens, self._stamp = lines_per_s or 0.0, time.monotonic()
        if lines_per_s is None:
            self._release_all()

    def submit(self, conn: Connection, topic: str, payload: bytes,
               process: Callable[[], None]) -> bool:
        """Process the publish now or later; False: it overflows the queue (it is not
        processed, and the caller disconnects ``conn``)."""
        if self.rate is None:
            process()
            return True
        lines = count_lines(topic, payload)
        self._refill()
        self._forget_ended()
        if not self._queue and self._tokens >= lines:
            self._tokens -= lines
            self.stats.processed_lines += lines
            process()
            return True
        if self._queued_lines + lines > self.stats.queue_lines:
            self.stats.overflows[conn.key] = self.stats.overflows.get(conn.key, 0) + 1
            self._forget(conn)
            return False
        self._queue.append((conn, lines, process))
        self._queued_lines += lines
        self.stats.queued_publishes += 1
        self.stats.max_queued_lines = max(self.stats.max_queued_lines, self._queued_lines)
        self._schedule()
        return True

    # ------------------------------------------------------------------ the queue

    def _refill(self) -> None:
        now = time.monotonic()
        rate = self.rate or 0.0
        self._tokens = min(rate, self._tokens + (now - self._stamp) * rate)
        self._stamp = now

    def _drain(self) -> None:
        self._timer = None
        if self.rate is None:
            return
        self._refill()
        self._forget_ended()
        while self._queue:
            conn, lines, process = self._queue[0]
            if self._tokens < min(lines, self.rate):
                break
            self._queue.popleft()
            self._queued_lines -= lines
            self._tokens -= lines
            self.stats.processed_lines += lines
            process()
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None or not self._queue or self.rate is None:
            return
        need = min(self._queue[0][1], self.rate)
        wait = max(0.0, (need - self._tokens) / self.rate)
        self._timer = asyncio.get_running_loop().call_later(wait, self._drain)

    def _forget_ended(self) -> None:
        if any(conn.closed for conn, _, _ in self._queue):
            self._keep(lambda conn: not conn.closed)

    def _forget(self, conn: Connection) -> None:
        self._keep(lambda other: other is not conn)

    def _keep(self, wanted: Callable[[Connection], bool]) -> None:
        kept = collections.deque(item for item in self._queue if wanted(item[0]))
        self.stats.dropped_publishes += len(self._queue) - len(kept)
        self._queue = kept
        self._queued_lines = sum(lines for _, lines, _ in kept)

    def _release_all(self) -> None:
        """The limit was lifted: what waits is processed now, in order."""
        queue, self._queue, self._queued_lines = self._queue, collections.deque(), 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for conn, _, process in queue:
            if not conn.closed:
                process()


def count_lines(topic: str, payload: bytes) -> int:
    """Requests in one publish: its SmartREST lines, or 1 (JSON, anything else)."""
    if SMARTREST_UP.match(topic):
        return max(1, sum(1 for line in payload.split(b"\n") if line.strip()))
    return 1
