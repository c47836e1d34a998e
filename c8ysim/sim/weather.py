"""Shared weather of the site: outdoor temperature, clear-sky index and wind.

Owns the climate every device sees. All of it is a pure function of (site, t):

- Daily mean temperature = annual mean + seasonal cosine (coldest ~20 Jan, hemisphere
  aware) + synoptic value noise (knots every 2.5 days, SD 3 K). The annual mean and
  amplitude are a crude latitude fit calibrated on central Europe (Berlin ~9.7 C, +/-9.5 K).
- Air temperature = daily mean + diurnal shape (minimum at sunrise, maximum at 15:00 solar
  time; its amplitude follows the day's cloudiness, so clear days swing more) + local
  value noise (knots every 4 h, SD 1 K).
- Clear-sky index k in [0.05, 1.0]: one day type per solar day (clear / mixed / overcast,
  drawn with season-dependent odds) plus minute-scale value noise; on mixed days a
  cloud field is thresholded through a logistic edge, giving sun/cloud alternation.
  Day types switch at solar midnight, when k does not matter.
- Wind speed (for the PV cell temperature): mean 3 m/s with slow noise.

Forced weather (a `weather` scenario, `c8ysim.site`; `scenarios.Windows`): during its window
the day type is the forced one (`clear` -> clear, `cloudy` -> mixed, `overcast` ->
overcast) for the clear-sky index, drawn from the same seeded streams as a natural day of
that type. Clouds come and go as a front does: k moves from the natural to the forced
value over CLOUD_EDGE_S (smoothstep, at most a quarter of the window) after the window
opens and back over the same time before it closes, so nothing changes outside the window
and the PV output has no one-second step. The air has thermal inertia, so the temperature
follows the forced sky more slowly: the diurnal swing's clearness moves to the forced
day type's over THERMAL_LAG_S after the window opens (a clear afternoon forced overcast is
up to 3.5 K cooler after the hour and a half, the swing's difference at its warmest) and
back over THERMAL_LAG_S after it ends: the PV output outside the window differs only
through the air (cell) temperature, for THERMAL_LAG_S after the window. Both are
continuous in t, and so is everything computed from the temperature (COP, heat demand).
The daily mean (what the building and the heating limit feel) is not forced: a few hours
of clouds do not change the synoptic situation. Overlapping windows blend in order of
their start; `Weather.day_type` is the latest-started window's. A site without weather
scenarios computes exactly what it did before: the forcing is a branch that is not taken.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

from c8ysim.sim import Site
from c8ysim.sim.clock import season_angle, solar_days, summerness, wrap_longitude
from c8ysim.sim.noise import clamp, stream_key, uniform, value_noise
from c8ysim.sim.scenarios import Windows, honoured
from c8ysim.site import WEATHER

MEAN_AT_EQUATOR_C = 27.0
MEAN_LAPSE_C_PER_DEG_LAT = 0.33
SEASONAL_AMPLITUDE_C_PER_DEG_LAT = 0.18
DIURNAL_HALF_SWING_CLEAR_C = 5.0
DIURNAL_HALF_SWING_OVERCAST_C = 1.5
WARMEST_SOLAR_HOUR = 15.0
SUNRISE_EARLIEST_H, SUNRISE_LATEST_H = 3.0, 9.0
SYNOPTIC_SD_C, SYNOPTIC_PERIOD_S = 3.0, 2.5 * 86400.0
LOCAL_SD_C, LOCAL_PERIOD_S = 1.0, 4 * 3600.0
MAX_DECLINATION_DEG = 23.44
SOLSTICE_BEFORE_COLDEST_RAD = 2.0 * math.pi * 30.0 / 365.2422  # 21 Dec is 30 days before 20 Jan

CLEAR, MIXED, OVERCAST = "clear", "mixed", "overcast"
CLEARNESS = {CLEAR: 1.0, MIXED: 0.6, OVERCAST: 0.15}  # drives the diurnal amplitude
K_MIN, K_MAX = 0.05, 1.0
CLEAR_K, CLEAR_K_SD, CLEAR_K_PERIOD_S = 0.975, 0.02, 60.0
OVERCAST_K, OVERCAST_K_SD, OVERCAST_K_PERIOD_S = 0.22, 0.08, 20 * 60.0
OVERCAST_K_FAST_SD, FAST_PERIOD_S = 0.03, 60.0
MIXED_SUN_K, MIXED_SHADE_K = 1.0, 0.25
MIXED_FIELD_PERIODS_S = ((0.8, 12 * 60.0), (0.6, 90.0))
MIXED_EDGE_WIDTH = 0.15
WIND_MEAN_M_S, WIND_SD_M_S, WIND_PERIOD_S = 3.0, 1.5, 6 * 3600.0
WIND_MIN_M_S, WIND_MAX_M_S = 0.2, 15.0
FORCED_DAY_TYPES = {"clear": CLEAR, "cloudy": MIXED, "overcast": OVERCAST}  # WEATHER_KINDS
CLOUD_EDGE_S = 120.0  # a front crossing the roof
THERMAL_LAG_S = 90 * 60.0  # the air temperature following forced clouds


class Weather(NamedTuple):
    temp_c: float
    daily_mean_c: float  # without the diurnal swing: what a building (and a heating limit) feels
    clear_index: float
    wind_m_s: float
    day_type: str


DRY_BELOW_LATITUDE_DEG = 50.0  # south of this, clear days grow more common (Mediterranean)
DRY_RAMP_DEG = 12.0  # fully "dry" odds 12 degrees further south (Madrid, Seville)


def day_type_odds(summer: float, latitude: float = 52.5) -> tuple[float, float]:
    """(P(clear), P(overcast)) for summerness in [-1, 1]; central European at 50 degrees
    and north, shifting towards clear skies further south (a rough fit: Berlin ~1 000,
    Madrid ~1 450 kWh/kWp a year)."""
    dry = clamp((DRY_BELOW_LATITUDE_DEG - abs(latitude)) / DRY_RAMP_DEG, 0.0, 1.0)
    return (0.25 + 0.10 * summer + dry * (0.30 + 0.10 * summer),
            (0.35 - 0.15 * summer) * (1.0 - 0.7 * dry))


def diurnal_shape(solar_hour: float, sunrise_hour: float) -> float:
    """-1 at sunrise, +1 at WARMEST_SOLAR_HOUR, half-cosines in between (continuous).
    Sunrise is held in SUNRISE_EARLIEST_H..SUNRISE_LATEST_H, so neither half is empty."""
    sunrise_hour = clamp(sunrise_hour, SUNRISE_EARLIEST_H, SUNRISE_LATEST_H)
    if sunrise_hour <= solar_hour <= WARMEST_SOLAR_HOUR:
        return -math.cos(math.pi * (solar_hour - sunrise_hour) / (WARMEST_SOLAR_HOUR - sunrise_hour))
    since_peak = (solar_hour - WARMEST_SOLAR_HOUR) % 24.0
    return math.cos(math.pi * since_peak / (sunrise_hour + 24.0 - WARMEST_SOLAR_HOUR))


def sunrise_solar_hour(t: float, latitude: float) -> float:
    """Approximate sunrise in solar hours from a cosine declination, clamped to 3..9 h."""
    declination = -MAX_DECLINATION_DEG * math.cos(season_angle(t, 1.0) + SOLSTICE_BEFORE_COLDEST_RAD)
    x = -math.tan(math.radians(latitude)) * math.tan(math.radians(declination))
    half_day_h = math.degrees(math.acos(clamp(x, -1.0, 1.0))) / 15.0
    return clamp(12.0 - half_day_h, SUNRISE_EARLIEST_H, SUNRISE_LATEST_H)


def seasonal_mean_c(t: float, latitude: float) -> float:
    """The noise-free daily mean temperature: annual mean + seasonal cosine."""
    mean = MEAN_AT_EQUATOR_C - MEAN_LAPSE_C_PER_DEG_LAT * abs(latitude)
    return mean - SEASONAL_AMPLITUDE_C_PER_DEG_LAT * abs(latitude) * math.cos(season_angle(t, latitude))


def diurnal_c(t: float, latitude: float, longitude: float, clearness: float) -> float:
    """The diurnal deviation from the daily mean for a day clearness in [0, 1]."""
    low, high = DIURNAL_HALF_SWING_OVERCAST_C, DIURNAL_HALF_SWING_CLEAR_C
    swing = low + (high - low) * clearness
    solar_hour = (solar_days(t, longitude) % 1.0) * 24.0
    return swing * diurnal_shape(solar_hour, sunrise_solar_hour(t, latitude))


@lru_cache(maxsize=256)
def _day_type(key: int, day: int, latitude: float, longitude: float) -> str:
    noon_t = (day + 0.5) * 86400.0 - longitude * 240.0
    p_clear, p_overcast = day_type_odds(summerness(noon_t, latitude), latitude)
    u = uniform(key, day)
    return CLEAR if u < p_clear else OVERCAST if u < p_clear + p_overcast else MIXED


def _smoothstep(x: float) -> float:
    """0 below 0, 1 above 1, 3x^2 - 2x^3 between (continuous, flat at both ends)."""
    x = clamp(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class WeatherModel:
    """The weather of one site (seeded streams), evaluated at any t."""

    def __init__(self, site: Site):
        self.latitude, self.longitude = site.latitude, wrap_longitude(site.longitude)
        key = lambda name: stream_key(site.seed, f"weather/{name}")  # noqa: E731
        self._k_day, self._k_threshold = key("day-type"), key("mixed-threshold")
        self._k_synoptic, self._k_local = key("temp-synoptic"), key("temp-local")
        self._k_cloud_slow, self._k_cloud_fast = key("cloud-slow"), key("cloud-fast")
        self._k_wind = key("wind")
        forced = [s for s in honoured(site) if s.what == WEATHER]
        self._forcing = Windows(forced, THERMAL_LAG_S, site.timezone) if forced else None

    def at(self, t: float) -> Weather:
        kind = self.day_type(math.floor(solar_days(t, self.longitude)))
        temp, daily = self.temperatures_c(t)
        if self._forcing is not None and self._forcing.near(t):
            return self._forced_at(t, kind, temp, daily)
        return Weather(temp, daily, self.clear_index(t, kind), self.wind_m_s(t), kind)

    def _forced_at(self, t: float, kind: str, temp: float, daily: float) -> Weather:
        k = self.clear_index(t, kind)
        for window in self._forcing.near(t):
            if window.holds(t):
                forced = FORCED_DAY_TYPES[window.scenario.name]
                edge = min(CLOUD_EDGE_S, (window.end - window.start) / 4.0)
                w = _smoothstep(min(t - window.start, window.end - t) / edge)
                k = k * (1.0 - w) + self.clear_index(t, forced) * w
                kind = forced
        return Weather(temp, daily, clamp(k, K_MIN, K_MAX), self.wind_m_s(t), kind)

    def day_type(self, day: int) -> str:
        return _day_type(self._k_day, day, self.latitude, self.longitude)

    def clearness(self, t: float) -> float:
        """Day clearness blended between solar noons, so temperature never jumps."""
        x = solar_days(t, self.longitude) - 0.5
        day = math.floor(x)
        w = (x - day) ** 2 * (3.0 - 2.0 * (x - day))
        natural = CLEARNESS[self.day_type(day)] * (1.0 - w) + CLEARNESS[self.day_type(day + 1)] * w
        if self._forcing is None:
            return natural
        for window in self._forcing.near(t):  # the air follows forced clouds with a lag
            full = _smoothstep(min(1.0, (window.end - window.start) / THERMAL_LAG_S))
            if window.holds(t):
                weight = _smoothstep(min(1.0, (t - window.start) / THERMAL_LAG_S))
            else:
                weight = full * (1.0 - _smoothstep(min(1.0, (t - window.end) / THERMAL_LAG_S)))
            forced = CLEARNESS[FORCED_DAY_TYPES[window.scenario.name]]
            natural = natural * (1.0 - weight) + forced * weight
        return natural

    def temperatures_c(self, t: float) -> tuple[float, float]:
        """(air temperature, smoothed daily mean) at t."""
        daily = (seasonal_mean_c(t, self.latitude)
                 + SYNOPTIC_SD_C * value_noise(self._k_synoptic, t, SYNOPTIC_PERIOD_S))
        air = (daily + diurnal_c(t, self.latitude, self.longitude, self.clearness(t))
               + LOCAL_SD_C * value_noise(self._k_local, t, LOCAL_PERIOD_S))
        return air, daily

    def clear_index(self, t: float, kind: str) -> float:
        if kind == CLEAR:
            k = CLEAR_K + CLEAR_K_SD * value_noise(self._k_cloud_fast, t, CLEAR_K_PERIOD_S)
        elif kind == OVERCAST:
            k = (OVERCAST_K + OVERCAST_K_SD * value_noise(self._k_cloud_slow, t, OVERCAST_K_PERIOD_S)
                 + OVERCAST_K_FAST_SD * value_noise(self._k_cloud_fast, t, FAST_PERIOD_S))
        else:
            k = self._mixed_k(t)
        return clamp(k, K_MIN, K_MAX)

    def _mixed_k(self, t: float) -> float:
        (w_slow, p_slow), (w_fast, p_fast) = MIXED_FIELD_PERIODS_S
        field = (w_slow * value_noise(self._k_cloud_slow, t, p_slow)
                 + w_fast * value_noise(self._k_cloud_fast, t, p_fast))
        threshold = uniform(self._k_threshold, math.floor(solar_days(t, self.longitude))) - 0.5
        shade = 1.0 / (1.0 + math.exp(-clamp((field - threshold) / MIXED_EDGE_WIDTH, -50.0, 50.0)))
        return MIXED_SUN_K - (MIXED_SUN_K - MIXED_SHADE_K) * shade

    def wind_m_s(self, t: float) -> float:
        wind = WIND_MEAN_M_S + WIND_SD_M_S * value_noise(self._k_wind, t, WIND_PERIOD_S)
        return clamp(wind, WIND_MIN_M_S, WIND_MAX_M_S)
