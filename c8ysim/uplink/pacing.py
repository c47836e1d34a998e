"""How fast a device drains its backlog: a token bucket, and the rate it runs at (pure: the
caller passes the time).

Cumulocity throttles a tenant that sends faster than its stream limit ("Limit stream
requests", lines per second over all of the tenant's devices): it queues the excess, and
when its queue overflows it drops the message and disconnects the device; a device that
comes back while the tenant is still over the limit is disconnected again after its first
message (protocol reference §5). When a device drains a long backlog (an outage, a
backfill) the bucket spreads it out; live traffic (a few lines per tick) never notices.
The burst is one second's worth of lines.

The limit is the tenant's and unknown to us, so `DrainRate` finds it from the PUBACKs, the
way TCP Vegas and LEDBAT find a link's capacity from its delay. While the platform keeps
up, a publish's latency (handed to paho -> its PUBACK) stays near the lowest seen lately
(`BaseLatency`); once the tenant queues our lines it grows with the queue, long before the
queue overflows. So, while a backlog drains:

* every latency period (`LatencyRound`: at least `ROUND_S`, and until a publish sent after
  the last change is acknowledged) the lowest latency of the period is compared with the
  base plus a margin (`MARGIN_S`, or `MARGIN_FRACTION` of the base if that is more);
* above it, the rate is cut to `CUT_FACTOR` of what the tenant delivered over the last
  second (`Delivery`; while it queues, that is its limit as it serves us; the rate if
  less), and that figure becomes the trouble mark; the next period starts with the cut, so
  the next cut comes a latency later at the soonest;
* below it, if the rate held the backlog back, the rate doubles per period (slow start)
  while under `CUT_FACTOR` of the trouble mark, and grows `GENTLE_PER_S` a second above;
  the mark is forgotten once the rate is twice the mark (the tenant's limit moved);
* a disconnect while draining (the queue overflowed after all) halves the rate, at most
  once per `THROTTLE_QUIET_S` (the disconnects right after one come from the queue the
  lower rate has not emptied yet); it sets the trouble mark too.

The rate never leaves [floor, ceiling]: the ceiling is `cumulocity.max_lines_per_s` (this
device's share), the floor `RATE_FLOOR_PER_S` (or the ceiling, if lower). It starts at
`START_FRACTION` of the ceiling: with the default ceiling of 100000 that is a site's 1000
lines/s, and slow start doubles it each period the latency stays flat.

The session also keeps a draining device's lines in flight to the rate times the latency
threshold (`inflight_limit`): a rate that overshot while the tenant's burst hid its limit
then queues little of ours there (measured: a tenant limit of 600 lines/s with a 1200-line
queue held at most 200-620 lines of three devices, tests/test_drain_rate.py). The
margin: on this 2-core machine the lowest PUBACK latency of a period stayed at 0.5-1 ms on
loopback and 51-52 ms through a +50 ms proxy while draining flat out (bench_agent_drain),
so 50 ms (or half the base) leaves room for a loaded machine and a long link's jitter and
is still only 30 lines of queue at 600 lines/s. The cut and the growth: with 0.75 and 5 %/s
three devices drained at 0.77-0.92 of that limit (a device whose backlog ended left its
share unused for seconds), with 0.8 and 25 %/s at 0.90-0.95.
"""

from __future__ import annotations

import collections

RATE_FLOOR_PER_S = 1.0  # never slower than this (unless the ceiling is lower)
START_FRACTION = 0.01  # of the ceiling: the default 100000 a site starts at 1000
ROUND_S = 0.1  # a latency period lasts at least this long (slow start: x2 per period)
MARGIN_S = 0.05  # latency over the base that means "queued" (a shared machine's jitter)
MARGIN_FRACTION = 0.5  # ... or this fraction of the base, if more (a long link's jitter)
BASE_WINDOW_S = 30.0  # the base is the lowest latency of the last 30-60 s
CUT_FACTOR = 0.8  # of the delivered rate, when the latency says the tenant queues
GENTLE_PER_S = 0.25  # growth per second above CUT_FACTOR of the trouble mark
FORGET_TROUBLE_AT = 2.0  # x the trouble mark: the limit has moved, slow start again
DELIVERY_WINDOW_S = 1.0
THROTTLE_QUIET_S = 10.0  # a disconnect halves at most once per this

CUT, RAISED = "cut", "raised"  # what `DrainRate.acked` did


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


class BaseLatency:
    """The lowest latency of the last BASE_WINDOW_S to 2 x BASE_WINDOW_S (two buckets), and
    the threshold above which latency means the tenant queues."""

    def __init__(self) -> None:
        self.older: float | None = None
        self.newer: float | None = None
        self.since: float | None = None  # start of the newer bucket

    def add(self, latency: float, now: float) -> None:
        if self.since is None or now - self.since >= BASE_WINDOW_S:
            recent = self.since is not None and now - self.since < 2 * BASE_WINDOW_S
            self.older, self.newer, self.since = self.newer if recent else None, None, now
        self.newer = latency if self.newer is None else min(self.newer, latency)

    @property
    def value(self) -> float | None:
        known = [v for v in (self.older, self.newer) if v is not None]
        return min(known) if known else None

    def threshold(self) -> float:
        base = self.value or 0.0
        return base + max(MARGIN_S, MARGIN_FRACTION * base)


class Delivery:
    """Lines acknowledged per second over the last DELIVERY_WINDOW_S (of this connection)."""

    def __init__(self, now: float) -> None:
        self.acks: collections.deque[tuple[float, int]] = collections.deque()
        self.lines = 0
        self.since = now

    def restart(self, now: float) -> None:
        self.acks.clear()
        self.lines, self.since = 0, now

    def add(self, lines: int, now: float) -> None:
        self.acks.append((now, lines))
        self.lines += lines
        self._expire(now)

    def rate(self, now: float) -> float:
        self._expire(now)
        span = min(DELIVERY_WINDOW_S, now - self.since)
        return self.lines / max(span, ROUND_S)

    def _expire(self, now: float) -> None:
        while self.acks and now - self.acks[0][0] > DELIVERY_WINDOW_S:
            self.lines -= self.acks.popleft()[1]


class LatencyRound:
    """One latency period: the lowest latency of the publishes sent after `opened` and
    acknowledged since; complete after ROUND_S with at least one such sample. Its minimum,
    not a mean: a pause of our own loop delays the PUBACKs of that moment only, a tenant
    that queues delays every one."""

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.lowest: float | None = None

    def add(self, sent_at: float, latency: float) -> None:
        if sent_at >= self.opened:
            self.lowest = latency if self.lowest is None else min(self.lowest, latency)

    def complete(self, now: float) -> bool:
        return self.lowest is not None and now - self.opened >= ROUND_S


class DrainRate:
    """The current drain rate (lines/s) of one device, between floor and ceiling: set by the
    PUBACK latency while a backlog drains, halved by a disconnect (see the module)."""

    def __init__(self, ceiling_per_s: float, now: float, start_per_s: float | None = None):
        self.ceiling = ceiling_per_s
        self.floor = min(RATE_FLOOR_PER_S, ceiling_per_s)
        start = ceiling_per_s * START_FRACTION if start_per_s is None else start_per_s
        self.current = min(self.ceiling, max(self.floor, start))
        self.base = BaseLatency()
        self.delivery = Delivery(now)
        self.round = LatencyRound(now)
        self.last_round: float | None = None  # the lowest latency of the last period
        self.trouble: float | None = None  # delivered rate when the tenant last pushed back
        self.changed_at = now  # the last cut or raise
        self.throttled_at: float | None = None  # the last disconnect halving
        self.held = False  # the rate held a backlog back since the last raise

    # -- what the session reports ------------------------------------------------------------

    def online(self, now: float) -> None:
        """A new connection: delivery and latency periods count from now."""
        self.delivery.restart(now)
        self.round = LatencyRound(now)
        self.held = False

    def inflight_limit(self) -> float:
        """Lines a draining device may have unacknowledged: the rate times the latency
        threshold. Below the threshold it never binds (in flight = rate x latency); once the
        tenant queues it does, so a rate that overshot queues at most this much of ours."""
        return self.current * self.base.threshold()

    def held_back(self) -> None:
        """The rate (not the window, not a lack of rows) kept a backlog waiting just now."""
        self.held = True

    def acked(self, sent_at: float, lines: int, now: float, draining: bool) -> str | None:
        """A PUBACK of `lines` buffered lines handed to paho at `sent_at`. While `draining`
        (a backlog waits), a completed latency period may cut or raise the rate: CUT,
        RAISED, or None (unchanged)."""
        latency = max(0.0, now - sent_at)
        self.base.add(latency, now)
        self.delivery.add(lines, now)
        self.round.add(sent_at, latency)
        if not self.round.complete(now):
            return None
        self.last_round = self.round.lowest
        self.round = LatencyRound(now)
        if not draining:
            self.held = False
            return None
        if self.last_round > self.base.threshold():
            return self._cut(now)
        return self._raise(now)

    def throttled(self, now: float) -> bool:
        """A disconnect while draining: halve (not below the floor, not twice within
        THROTTLE_QUIET_S). True if it changed."""
        if self.throttled_at is not None and 0 <= now - self.throttled_at < THROTTLE_QUIET_S:
            return False
        self.throttled_at = now
        self.trouble = min(self.current, self.delivery.rate(now) or self.current)
        before = self.current
        self._set(max(self.floor, self.current / 2.0), now)
        return self.current != before

    # -- the decisions -----------------------------------------------------------------------

    def _cut(self, now: float) -> str | None:
        """The tenant queues: down to CUT_FACTOR of what it delivers (of the rate, if less)."""
        self.trouble = min(self.current, self.delivery.rate(now))
        return CUT if self._set(max(self.floor, CUT_FACTOR * self.trouble), now) else None

    def _raise(self, now: float) -> str | None:
        """Latency flat and the rate the limit: x2 (slow start) up to CUT_FACTOR of the trouble
        mark, GENTLE_PER_S a second above it; never above the ceiling."""
        if not self.held:
            return None
        self.held = False
        if self.trouble is not None and self.current >= FORGET_TROUBLE_AT * self.trouble:
            self.trouble = None
        knee = float("inf") if self.trouble is None else CUT_FACTOR * self.trouble
        if self.current < knee:
            wanted = min(2.0 * self.current, knee)
        else:
            wanted = self.current * (1.0 + GENTLE_PER_S * min(1.0, now - self.changed_at))
        return RAISED if self._set(min(self.ceiling, wanted), now) else None

    def _set(self, rate: float, now: float) -> bool:
        changed = rate != self.current
        self.current = rate
        if changed:
            self.changed_at = now
            self.round = LatencyRound(now)
        return changed
