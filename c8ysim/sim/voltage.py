"""Shared grid voltage at the house connection, and its rare seeded excursions.

Owns the one voltage every device of the site reports. Normal operation: 230 V plus two
value-noise octaves (knots every 30 min and every 20 s: the slow random walk of the
feeder and the flicker of neighbours) plus a rise of EXPORT_RISE_V_PER_KW while the site
exports, clamped to +/-8 % so that it stays inside the EN 50160 +/-10 % band.

Excursions make the voltage alarm possible: each UTC hour independently holds, with
probability EXCURSION_PROBABILITY_PER_HOUR, one sag (196-205 V) or swell (254-258 V)
lasting 1-5 minutes at a seeded offset inside that hour. With 1/300 per hour that is
about 2.4 excursions, i.e. roughly 7 minutes outside the band, per month.
"""

from __future__ import annotations

import math

from c8ysim.sim import Site
from c8ysim.sim.noise import clamp, stream_key, uniform, value_noise

NOMINAL_V = 230.0
ALARM_BAND_FRACTION = 0.10  # EN 50160: +/-10 %
NORMAL_LIMIT_FRACTION = 0.08
SLOW_SD_V, SLOW_PERIOD_S = 2.5, 30 * 60.0
FAST_SD_V, FAST_PERIOD_S = 0.6, 20.0
EXPORT_RISE_V_PER_KW = 1.2
EXCURSION_PROBABILITY_PER_HOUR = 1.0 / 300.0
EXCURSION_MIN_S, EXCURSION_MAX_S = 60.0, 300.0
SAG_SHARE = 0.7
SAG_LOW_V, SAG_HIGH_V = 196.0, 205.0
SWELL_LOW_V, SWELL_HIGH_V = 254.0, 258.0

ALARM_LOW_V = NOMINAL_V * (1.0 - ALARM_BAND_FRACTION)
ALARM_HIGH_V = NOMINAL_V * (1.0 + ALARM_BAND_FRACTION)


def outside_band(volts: float) -> bool:
    return not ALARM_LOW_V <= volts <= ALARM_HIGH_V


class GridVoltage:
    """The site's voltage as a function of (t, exported power)."""

    def __init__(self, site: Site):
        self._k_slow = stream_key(site.seed, "voltage/slow")
        self._k_fast = stream_key(site.seed, "voltage/fast")
        self._k_excursion = stream_key(site.seed, "voltage/excursion")

    def excursion_v(self, t: float) -> float | None:
        """The excursion level at t, or None outside excursions (one hash on the fast path)."""
        hour = math.floor(t / 3600.0)
        if uniform(self._k_excursion, hour) >= EXCURSION_PROBABILITY_PER_HOUR:
            return None
        duration = EXCURSION_MIN_S + (EXCURSION_MAX_S - EXCURSION_MIN_S) * uniform(self._k_excursion, hour, 1)
        start = hour * 3600.0 + (3600.0 - duration) * uniform(self._k_excursion, hour, 2)
        if not start <= t < start + duration:
            return None
        u = uniform(self._k_excursion, hour, 4)
        if uniform(self._k_excursion, hour, 3) < SAG_SHARE:
            return SAG_LOW_V + (SAG_HIGH_V - SAG_LOW_V) * u
        return SWELL_LOW_V + (SWELL_HIGH_V - SWELL_LOW_V) * u

    def at(self, t: float, export_w: float) -> float:
        level = self.excursion_v(t)
        if level is not None:
            return level
        volts = (NOMINAL_V + SLOW_SD_V * value_noise(self._k_slow, t, SLOW_PERIOD_S)
                 + FAST_SD_V * value_noise(self._k_fast, t, FAST_PERIOD_S)
                 + EXPORT_RISE_V_PER_KW * max(0.0, export_w) / 1000.0)
        limit = NOMINAL_V * NORMAL_LIMIT_FRACTION
        return clamp(volts, NOMINAL_V - limit, NOMINAL_V + limit)
