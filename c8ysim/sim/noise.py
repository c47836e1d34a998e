"""Counter-based noise: every random number is a pure function of (key, bucket, salt).

Owns all randomness of the simulation. There is no generator object and no history:
a *key* is derived once from (site seed, stream name) with blake2b, and a draw is the
splitmix64 finaliser applied to `key + bucket * golden-ratio constant` (plus an optional
salt for several draws in the same bucket). Any process can therefore recompute any
value at any time in O(1), and the same (seed, stream, bucket) always gives the same
number, independently of PYTHONHASHSEED, import order or what was computed before.

Slow processes ("AR(1)-like") are *value noise*: the knot at k * period carries an
independent N(0, 1) value; between two knots the neighbours are blended with a
smoothstep weight w and divided by sqrt(w^2 + (1 - w)^2), so the variance is exactly 1
at every t (a plain blend would sag to 0.5 mid-bucket). The result is continuous,
has mean 0 and unit variance, is strongly correlated over a fraction of a period and
uncorrelated beyond two periods: the role of an AR(1) with a time constant of about
one period, without any lookback. Callers sum a few such octaves (e.g. days + hours).
"""

from __future__ import annotations

import math
from functools import lru_cache

try:  # hashlib's blake2b is this one; importing hashlib would load OpenSSL's libcrypto too
    from _blake2 import blake2b
except ImportError:  # a build without it
    from hashlib import blake2b

MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_SALT_MUL = 0xD1B54A32D192ED03
_TO_UNIT_53 = 1.0 / (1 << 53)
_TO_UNIT_32 = 1.0 / (1 << 32)
_TWO_PI = 2.0 * math.pi


def _mix(x: int) -> int:
    """splitmix64 finaliser: a bijective avalanche of 64 bits."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


@lru_cache(maxsize=4096)
def stream_key(seed: int, stream: str) -> int:
    """The 64-bit key of one named noise stream of one site (stable across processes)."""
    digest = blake2b(f"{seed}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def hash64(key: int, bucket: int, salt: int = 0) -> int:
    """64 random bits for (key, bucket, salt)."""
    h = _mix((key + bucket * _GOLDEN) & MASK64)
    if salt:
        h = _mix((h + salt * _SALT_MUL) & MASK64)
    return h


@lru_cache(maxsize=16384)
def uniform(key: int, bucket: int, salt: int = 0) -> float:
    """A float in [0, 1) for (key, bucket, salt); memoised, as consecutive ticks share buckets."""
    return (hash64(key, bucket, salt) >> 11) * _TO_UNIT_53


def gauss(key: int, bucket: int, salt: int = 0) -> float:
    """A standard normal value for (key, bucket, salt) (Box-Muller on one 64-bit hash)."""
    h = hash64(key, bucket, salt)
    u1 = ((h >> 32) + 0.5) * _TO_UNIT_32
    u2 = (h & 0xFFFFFFFF) * _TO_UNIT_32
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)


@lru_cache(maxsize=8192)
def _knot(key: int, knot: int) -> float:
    """Memoised knot value: consecutive ticks share knots (a pure cache, same numbers)."""
    return gauss(key, knot)


def value_noise(key: int, t: float, period_s: float) -> float:
    """Continuous unit-variance noise at time t with knots every `period_s` seconds."""
    x = t / period_s
    knot = math.floor(x)
    f = x - knot
    w = f * f * (3.0 - 2.0 * f)
    g0, g1 = _knot(key, knot), _knot(key, knot + 1)
    return (g0 * (1.0 - w) + g1 * w) / math.sqrt((1.0 - w) ** 2 + w * w)


def clamp(x: float, low: float, high: float) -> float:
    return low if x < low else high if x > high else x


def bounded_rating(value: float, high: float) -> float:
    """A configured size in [0, high] (NaN reads as 0), so that products stay finite."""
    return min(value, high) if value > 0.0 else 0.0
