"""How fast a device drains its backlog: a token bucket, and the rate it runs at (pure: the
caller passes the time).

Cumulocity throttles a tenant that sends faster than its stream limit ("Limit stream
requests", lines per second over all of the tenant's devices): it queues the excess, and
when its queue overflows it drops the message and disconnects the device; a device that
comes back while the tenant is still over the limit is disconnected again after its first
message (protocol reference §5). When a device drains a long backlog (an outage, a
backfill) the bucket spreads it out; live traffic (a few lines per tick) never notices.
The burst is one second's worth of lines.

The limit is the tenant's and unknown to us, so `DrainRate` finds it the way TCP finds a
link's capacity (AIMD): a disconnect while draining a backlog halves the rate (never below
a floor; at most once per `RECOVER_EVERY_S`: the disconnects right after a cut come from the
tenant's queue the lower rate has not emptied yet, and must not cut again), and every
`RECOVER_EVERY_S` online without one adds back a tenth of the configured rate, up to the
configured rate.
"""

from __future__ import annotations

RATE_FLOOR_PER_S = 1.0  # never slower than this (unless configured slower)
RECOVER_EVERY_S = 10.0
RECOVER_FRACTION = 0.1  # of the configured rate, per RECOVER_EVERY_S


class TokenBucket:
    def __init__(self, rate_per_s: float, now: float):
        self.rate_per_s = rate_per_s
        self.tokens = rate_per_s
        self.stamp = now

    def available(self, now: float) -> int:
        """Whole lines that may be sent now."""
        self._refill(now)
        return int(self.tokens)

    def take(self, lines: int, now: float) -> None:
        self._refill(now)
        self.tokens -= lines

    def wait_s(self, now: float, lines: int = 1) -> float:
        """Seconds until at least `lines` lines (at most a second's worth) may be sent."""
        self._refill(now)
        lines = min(lines, max(1.0, self.rate_per_s))
        return 0.0 if self.tokens >= lines else (lines - self.tokens) / self.rate_per_s

    def set_rate(self, rate_per_s: float, now: float) -> None:
        """From now on refill at `rate_per_s`; the burst shrinks with it at once."""
        self._refill(now)
        self.rate_per_s = rate_per_s
        self.tokens = min(self.tokens, rate_per_s)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.rate_per_s, self.tokens + elapsed * self.rate_per_s)
        self.stamp = now


class DrainRate:
    """The current drain rate (lines/s): halved on throttling, recovered additively."""

    def __init__(self, configured_per_s: float, now: float):
        self.configured = configured_per_s
        self.floor = min(RATE_FLOOR_PER_S, configured_per_s)
        self.current = configured_per_s
        self.since = now  # the last change, or the start of the current stretch online
        self.cut_at: float | None = None  # the last halving

    def throttled(self, now: float) -> bool:
        """A disconnect while draining: halve (not below the floor, not twice within
        RECOVER_EVERY_S). True if it changed."""
        self.since = now
        if self.cut_at is not None and 0 <= now - self.cut_at < RECOVER_EVERY_S:
            return False
        before = self.current
        self.current = max(self.floor, self.current / 2.0)
        self.cut_at = now
        return self.current != before

    def restart_clock(self, now: float) -> None:
        """Online again: recovery counts from now (time offline earns nothing)."""
        self.since = now

    def recover(self, now: float) -> bool:
        """Call while online: + a tenth of the configured rate per RECOVER_EVERY_S without
        a disconnect, up to the configured rate. True if it changed."""
        if self.current >= self.configured or now - self.since < RECOVER_EVERY_S:
            return False
        steps = int((now - self.since) // RECOVER_EVERY_S)
        self.current = min(self.configured,
                           self.current + steps * RECOVER_FRACTION * self.configured)
        self.since += steps * RECOVER_EVERY_S
        return True
