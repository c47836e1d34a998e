"""A token bucket for SmartREST lines per second (pure: the caller passes the time).

Cumulocity throttles, then drops, a tenant that sends faster than its stream limit. When a
device drains a long backlog (an outage, a backfill) the bucket spreads it out; live traffic
(a few lines per tick) never notices. The burst is one second's worth of lines.
"""

from __future__ import annotations


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

    def wait_s(self, now: float) -> float:
        """Seconds until at least one line may be sent."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate_per_s

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.rate_per_s, self.tokens + elapsed * self.rate_per_s)
        self.stamp = now
