"""Capped exponential backoff with full jitter (pure; the caller supplies the random source).

Full jitter (a uniform draw between zero and the exponential ceiling) keeps many devices that
lost the same broker from reconnecting in lockstep.
"""

from __future__ import annotations

import random


def ceiling_s(failures: int, base_s: float, cap_s: float) -> float:
    """The upper bound of the delay after `failures` consecutive failures (>= 1)."""
    exponent = min(max(failures - 1, 0), 62)  # 2**62 s is far past any cap
    return min(cap_s, base_s * 2.0**exponent)


def full_jitter(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """A delay drawn uniformly from [0, ceiling]."""
    return rng.uniform(0.0, ceiling_s(failures, base_s, cap_s))


def near_cap(cap_s: float, rng: random.Random) -> float:
    """A delay in [cap/2, cap]: for failures that retrying soon cannot fix (bad credentials)."""
    return rng.uniform(cap_s / 2.0, cap_s)


def equal_jitter(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """A delay drawn uniformly from [ceiling/2, ceiling]: spread out, yet never near zero.

    For restarting a crashed process, where retrying at once would only crash it again.
    """
    ceiling = ceiling_s(failures, base_s, cap_s)
    return rng.uniform(ceiling / 2.0, ceiling)
