"""Grid voltage at the house connection, per phase, and its rare seeded excursions.

Owns the voltages every device of the site reports. Normal operation: 230 V plus two
value-noise octaves shared by all three phases (knots every 30 min and every 20 s: the slow
random walk of the feeder and the flicker of neighbours), plus per phase a slow offset of
its own (PHASE_SD_V, 1-hour knots: the neighbours load the phases unevenly) and the drop
across the feeder's impedance: PHASE_V_PER_KW per kW the phase imports (a rise while it
exports), kept inside +/-8 % so that it stays inside the EN 50160 +/-10 % band: `at` clamps,
`phases_v` bends smoothly towards that limit beyond 60 % of it (`soft_limit`), so a phase
held high by a single-phase inverter does not draw a flat line. The impedance is that of a
weak rural connection: a site exporting E kW evenly over the three phases rises by
EXPORT_RISE_V_PER_KW * E (`at`), a single-phase 4 kW inverter lifts its own phase by ~14 V.

Excursions make the voltage alarm possible: each UTC hour independently holds, with
probability EXCURSION_PROBABILITY_PER_HOUR, one sag (196-205 V) or swell (254-258 V)
lasting 1-5 minutes at a seeded offset inside that hour. With 1/300 per hour that is
about 2.4 excursions, i.e. roughly 7 minutes outside the band, per month.
"""

from __future__ import annotations

import math
from typing import Sequence

from c8ysim.sim import Site
from c8ysim.sim.noise import clamp, stream_key, uniform, value_noise

NOMINAL_V = 230.0
ALARM_BAND_FRACTION = 0.10  # EN 50160: +/-10 %
NORMAL_LIMIT_FRACTION = 0.08
SLOW_SD_V, SLOW_PERIOD_S = 2.5, 30 * 60.0
FAST_SD_V, FAST_PERIOD_S = 0.6, 20.0
EXPORT_RISE_V_PER_KW = 1.2
PHASE_V_PER_KW = 3 * EXPORT_RISE_V_PER_KW  # the same impedance seen by one phase's current
PHASE_SD_V, PHASE_PERIOD_S = 1.2, 3600.0
SOFT_KNEE = 0.6
EXCURSION_PROBABILITY_PER_HOUR = 1.0 / 300.0
EXCURSION_MIN_S, EXCURSION_MAX_S = 60.0, 300.0
SAG_SHARE = 0.7
SAG_LOW_V, SAG_HIGH_V = 196.0, 205.0
SWELL_LOW_V, SWELL_HIGH_V = 254.0, 258.0

ALARM_LOW_V = NOMINAL_V * (1.0 - ALARM_BAND_FRACTION)
ALARM_HIGH_V = NOMINAL_V * (1.0 + ALARM_BAND_FRACTION)
_NORMAL_LIMIT_V = NOMINAL_V * NORMAL_LIMIT_FRACTION


def outside_band(volts: float) -> bool:
    return not ALARM_LOW_V <= volts <= ALARM_HIGH_V


def soft_limit(deviation: float, limit: float) -> float:
    """`deviation` unchanged up to SOFT_KNEE of `limit`, then bent (tanh) towards `limit`:
    continuous, with a continuous slope, never reaching it."""
    knee = SOFT_KNEE * limit
    size = abs(deviation)
    if size <= knee:
        return deviation
    bent = knee + (limit - knee) * math.tanh((size - knee) / (limit - knee))
    return math.copysign(bent, deviation)


class GridVoltage:
    """The site's voltage as a function of (t, exported power)."""

    def __init__(self, site: Site):
        self._k_slow = stream_key(site.seed, "voltage/slow")
        self._k_fast = stream_key(site.seed, "voltage/fast")
        self._k_excursion = stream_key(site.seed, "voltage/excursion")
        self._k_phases = tuple(stream_key(site.seed, f"voltage/phase-L{n}") for n in (1, 2, 3))

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
        """The feeder's voltage while the site exports `export_w` evenly over its phases
        (no phase offsets): the balanced case of `phases_v`."""
        level = self.excursion_v(t)
        if level is not None:
            return level
        volts = self._feeder_v(t) + EXPORT_RISE_V_PER_KW * max(0.0, export_w) / 1000.0
        return clamp(volts, NOMINAL_V - _NORMAL_LIMIT_V, NOMINAL_V + _NORMAL_LIMIT_V)

    def phases_v(self, t: float, phase_w: tuple[float, float, float]) -> tuple[float, float, float]:
        """L1, L2, L3 to neutral while each phase draws `phase_w` (W, + import, - export);
        an excursion (a sag or swell of the feeder) holds all three phases at its level."""
        v1, v2, v3 = self.some_phases_v(t, (0, 1, 2), phase_w)
        return (v1, v2, v3)

    def some_phases_v(self, t: float, phases: tuple[int, ...], phase_w: Sequence[float]) -> tuple[float, ...]:
        """`phases_v` of the phases `phases` (indices 0-2) alone, `phase_w[i]` the power of
        `phases[i]`: each phase's voltage depends on its own power only, bit for bit."""
        level = self.excursion_v(t)
        if level is not None:
            return (level,) * len(phases)
        feeder = self._feeder_v(t) - NOMINAL_V
        return tuple([NOMINAL_V + soft_limit(
            feeder + PHASE_SD_V * value_noise(self._k_phases[n], t, PHASE_PERIOD_S) - PHASE_V_PER_KW * watts / 1000.0,
            _NORMAL_LIMIT_V) for n, watts in zip(phases, phase_w)])

    def _feeder_v(self, t: float) -> float:
        return (NOMINAL_V + SLOW_SD_V * value_noise(self._k_slow, t, SLOW_PERIOD_S)
                + FAST_SD_V * value_noise(self._k_fast, t, FAST_PERIOD_S))
