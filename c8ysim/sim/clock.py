"""Calendar arithmetic on epoch seconds: local wall-clock time and the season angle.

Owns the only use of zoneinfo. Everything that follows people (household load profile,
hot-water times) uses `local_time`; everything that follows the sun and the weather uses
solar time (longitude) and `season_angle`, which need no time zone at all.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

SECONDS_PER_DAY = 86400.0
TROPICAL_YEAR_DAYS = 365.2422
SECONDS_PER_DEGREE_LONGITUDE = 240.0  # the sun crosses 1 degree of longitude in 4 minutes
COLDEST_DAY_AFTER_EPOCH_DAYS = 19.0  # 20 January 1970: the climatological minimum (north)
_TWO_PI = 2.0 * math.pi


class LocalTime(NamedTuple):
    """Wall-clock time at the site: hour in [0, 24), weekday (Monday 0), day of year."""

    hour: float
    weekday: int
    day_of_year: int
    utc_offset_s: float


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_time(t: float, tz: ZoneInfo) -> LocalTime:
    stamp = datetime.fromtimestamp(t, tz)
    hour = stamp.hour + stamp.minute / 60.0 + (stamp.second + stamp.microsecond / 1e6) / 3600.0
    day_of_year = stamp.toordinal() - date(stamp.year, 1, 1).toordinal() + 1
    offset = stamp.utcoffset()
    return LocalTime(hour, stamp.weekday(), day_of_year, offset.total_seconds() if offset else 0.0)


def wrap_longitude(longitude: float) -> float:
    """The same meridian in [-180, 180] (unchanged there): 4e307 degrees east would otherwise
    turn solar time into inf and NaN."""
    if -180.0 <= longitude <= 180.0:
        return longitude
    return (longitude + 180.0) % 360.0 - 180.0 if math.isfinite(longitude) else 0.0


def solar_days(t: float, longitude: float) -> float:
    """Days since the epoch in local mean solar time (solar midnight at whole numbers)."""
    return (t + wrap_longitude(longitude) * SECONDS_PER_DEGREE_LONGITUDE) / SECONDS_PER_DAY


def season_angle(t: float, latitude: float) -> float:
    """0 at the coldest time of the year, pi at the warmest (southern hemisphere shifted)."""
    angle = _TWO_PI * (t / SECONDS_PER_DAY - COLDEST_DAY_AFTER_EPOCH_DAYS) / TROPICAL_YEAR_DAYS
    return angle + math.pi if latitude < 0 else angle


def summerness(t: float, latitude: float) -> float:
    """-1 in midwinter, +1 in midsummer, smooth in between."""
    return -math.cos(season_angle(t, latitude))
