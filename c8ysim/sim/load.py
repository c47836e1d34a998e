"""Household base load: standard-profile shape plus seeded appliance events.

Owns the electricity the house itself uses (everything but the heat pump):

- Base: the hourly H25/H0 profile (h0.py) for the local day type, linearly interpolated
  between hour centres (also across midnight into the neighbouring day's type), blended
  winter/summer by season, times the BDEW dynamisation factor, times a little value noise
  (5 min and 30 s octaves), scaled so that a year sums to `kwh_per_year` minus the
  expected energy of the appliance events.
- Appliance events (kettle, oven, washer): in each UTC hour a start happens with a
  probability that depends on the local hour (rates for a 4000 kWh/a house, scaled with
  kwh_per_year), at a seeded offset, with a seeded duration. Only the last few hours'
  buckets are examined, so the load at any t is computed without history.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

from c8ysim.sim import Site
from c8ysim.sim import h0
from c8ysim.sim.clock import LocalTime
from c8ysim.sim.noise import bounded_rating, clamp, stream_key, uniform, value_noise

REFERENCE_KWH_PER_YEAR = 4000.0
MAX_KWH_PER_YEAR = 1e9  # a city; keeps every W figure finite for any configured value
MIN_BASE_SHARE = 0.5
MAX_START_PROBABILITY_PER_HOUR = 0.95
NOISE_SLOW_SD, NOISE_SLOW_PERIOD_S = 0.10, 300.0
NOISE_FAST_SD, NOISE_FAST_PERIOD_S = 0.04, 30.0
NOISE_FACTOR_MIN, NOISE_FACTOR_MAX = 0.5, 1.6
REFERENCE_YEAR_FIRST_WEEKDAY = 0  # 1 January 2001 was a Monday
_NIGHT = (0.0,) * 5


class Appliance(NamedTuple):
    """Full power for `full_s` (or the whole run), then thermostat cycling or a low phase."""

    name: str
    peak_w: float
    low_w: float
    full_s: float
    cycle_s: float
    duty: float
    min_s: float
    max_s: float
    starts_per_hour: tuple[float, ...]  # by local hour, for REFERENCE_KWH_PER_YEAR

    def power_w(self, offset_s: float) -> float:
        if offset_s < self.full_s:
            return self.peak_w
        if self.cycle_s and offset_s % self.cycle_s < self.duty * self.cycle_s:
            return self.peak_w
        return self.low_w

    def mean_energy_wh(self) -> float:
        mean_s = (self.min_s + self.max_s) / 2.0
        full = min(mean_s, self.full_s)
        rest_w = self.duty * self.peak_w + (1.0 - self.duty) * self.low_w if self.cycle_s else self.low_w
        return (self.peak_w * full + rest_w * max(0.0, mean_s - full)) / 3600.0


APPLIANCES = (
    Appliance("kettle", 2000.0, 0.0, math.inf, 0.0, 0.0, 150.0, 240.0,
              _NIGHT + (0.05, 0.3, 0.35, 0.25, 0.15, 0.1, 0.1, 0.15, 0.1, 0.1, 0.15, 0.2, 0.15,
                        0.15, 0.15, 0.15, 0.1, 0.05, 0.02)),
    Appliance("oven", 2200.0, 50.0, 600.0, 120.0, 0.4, 1800.0, 3600.0,
              _NIGHT + (0.0,) * 6 + (0.15, 0.1, 0.0, 0.0, 0.0, 0.0, 0.15, 0.2, 0.05, 0.0, 0.0, 0.0, 0.0)),
    Appliance("washer", 2000.0, 250.0, 900.0, 0.0, 0.0, 4800.0, 6600.0,
              _NIGHT + (0.0,) * 3 + (0.03,) * 12 + (0.0,) * 4),
)


@lru_cache(maxsize=1)
def profile_kwh_per_year() -> float:
    """Annual energy of the dynamised profile tables as they stand (about 1000 kWh)."""
    total_wh = 0.0
    for day_of_year in range(1, 366):
        kind = h0.day_type((REFERENCE_YEAR_FIRST_WEEKDAY + day_of_year - 1) % 7)
        day_wh = sum(h0.hourly_w(kind, hour, day_of_year) for hour in range(24))
        total_wh += day_wh * h0.dynamisation(day_of_year)
    return total_wh / 1000.0


class HouseholdLoad:
    """The house's own consumption at any t."""

    def __init__(self, site: Site):
        kwh = bounded_rating(site.household_param("kwh_per_year"), MAX_KWH_PER_YEAR)
        size = kwh / REFERENCE_KWH_PER_YEAR
        self._rates = tuple(tuple(min(MAX_START_PROBABILITY_PER_HOUR, r * size)
                                  for r in a.starts_per_hour) for a in APPLIANCES)
        appliance_kwh = sum(sum(rates) * a.mean_energy_wh() for a, rates in zip(APPLIANCES, self._rates))
        appliance_kwh *= 365.0 / 1000.0
        self._base_factor = max(kwh * MIN_BASE_SHARE, kwh - appliance_kwh) / profile_kwh_per_year()
        self._keys = tuple(stream_key(site.seed, f"load/{a.name}") for a in APPLIANCES)
        self._k_slow = stream_key(site.seed, "load/noise-slow")
        self._k_fast = stream_key(site.seed, "load/noise-fast")
        self._profile_memo: tuple[tuple | None, tuple[float, float, float]] = (None, (0.0, 0.0, 0.0))
        self._events_memo: tuple[tuple | None, tuple] = (None, ())

    def power_w(self, t: float, local: LocalTime) -> float:
        return self.base_w(t, local) + sum(self._appliance_w(i, t, local) for i in range(len(APPLIANCES)))

    def components_w(self, t: float, local: LocalTime) -> tuple[float, tuple[float, ...]]:
        """(base load, each appliance in APPLIANCES order); base + sum(appliances) is
        `power_w` bit for bit."""
        return self.base_w(t, local), tuple(self._appliance_w(i, t, local) for i in range(len(APPLIANCES)))

    def base_w(self, t: float, local: LocalTime) -> float:
        x = local.hour - 0.5
        hour = math.floor(x)
        f = x - hour
        left, right, dynamisation = self._profile_hour(local, hour)
        noise = (1.0 + NOISE_SLOW_SD * value_noise(self._k_slow, t, NOISE_SLOW_PERIOD_S)
                 + NOISE_FAST_SD * value_noise(self._k_fast, t, NOISE_FAST_PERIOD_S))
        shape = (left * (1.0 - f) + right * f) * dynamisation
        return shape * self._base_factor * clamp(noise, NOISE_FACTOR_MIN, NOISE_FACTOR_MAX)

    def _profile_hour(self, local: LocalTime, hour: int) -> tuple[float, float, float]:
        """(profile of `hour`, of the next hour, the day's dynamisation factor), remembered
        for the hour at hand."""
        key = (hour, local.weekday, local.day_of_year)
        if self._profile_memo[0] != key:
            self._profile_memo = (key, (self._profile_w(local, hour), self._profile_w(local, hour + 1),
                                        h0.dynamisation(local.day_of_year)))
        return self._profile_memo[1]

    def _profile_w(self, local: LocalTime, hour: int) -> float:
        """Profile value of `hour` (may be -1 or 24: the neighbouring day's hour)."""
        weekday = (local.weekday + hour // 24) % 7
        return h0.hourly_w(h0.day_type(weekday), hour % 24, local.day_of_year)

    def _appliance_w(self, index: int, t: float, local: LocalTime) -> float:
        appliance = APPLIANCES[index]
        for start, duration in self._events(math.floor(t / 3600.0), local.utc_offset_s)[index]:
            if start <= t < start + duration:
                return appliance.power_w(t - start)
        return 0.0

    def _events(self, bucket: int, utc_offset_s: float) -> tuple[tuple[tuple[float, float], ...], ...]:
        """Per appliance, (start, duration) of each event that may still run in hour `bucket`,
        latest first (the hour's event wins over an older one still running); remembered for
        the hour at hand."""
        key = (bucket, utc_offset_s)
        if self._events_memo[0] == key:
            return self._events_memo[1]
        events = []
        for appliance, key_, rates in zip(APPLIANCES, self._keys, self._rates):
            found = []
            for b in range(bucket, bucket - math.ceil(appliance.max_s / 3600.0) - 1, -1):
                local_hour = math.floor(((b * 3600.0 + utc_offset_s) % 86400.0) / 3600.0)
                if uniform(key_, b) >= rates[local_hour]:
                    continue
                duration = appliance.min_s + (appliance.max_s - appliance.min_s) * uniform(key_, b, 1)
                found.append((b * 3600.0 + 3600.0 * uniform(key_, b, 2), duration))
            events.append(tuple(found))
        self._events_memo = (key, tuple(events))
        return self._events_memo[1]
