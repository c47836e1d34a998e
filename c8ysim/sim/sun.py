"""Sun position from the NOAA solar calculator formulas (Meeus, low precision).

Owns the geometry: for epoch seconds t (UTC) and a place, the cosine of the solar zenith
angle, the solar azimuth (degrees clockwise from north) and the extraterrestrial
irradiance (solar constant corrected for the Earth-Sun distance). Accuracy is about 0.01
degree for years 1800-2100, far better than a household simulation needs. Atmospheric
refraction is ignored (it only matters within a degree of the horizon). Total: every
argument of asin/atan2/sqrt is in its domain for any latitude in [-90, 90], any longitude
(wrapped) and any time; cos_zenith is held in [-1, 1].
"""

from __future__ import annotations

import math
from typing import NamedTuple

from c8ysim.sim.clock import wrap_longitude

SOLAR_CONSTANT_W_M2 = 1361.0
JULIAN_DAY_AT_EPOCH = 2440587.5
JULIAN_DAY_J2000 = 2451545.0
DAYS_PER_JULIAN_CENTURY = 36525.0
_RAD = math.pi / 180.0


class SunPosition(NamedTuple):
    cos_zenith: float
    azimuth_deg: float
    extraterrestrial_w_m2: float

    @property
    def up(self) -> bool:
        return self.cos_zenith > 0.0


def _julian_century(t: float) -> float:
    return (t / 86400.0 + JULIAN_DAY_AT_EPOCH - JULIAN_DAY_J2000) / DAYS_PER_JULIAN_CENTURY


def _orbit(jc: float) -> tuple[float, float, float, float]:
    """Geometric mean longitude L0, mean anomaly M (degrees), eccentricity, centre eq."""
    l0 = (280.46646 + jc * (36000.76983 + jc * 0.0003032)) % 360.0
    m = 357.52911 + jc * (35999.05029 - 0.0001537 * jc)
    ecc = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc)
    centre = (math.sin(m * _RAD) * (1.914602 - jc * (0.004817 + 0.000014 * jc))
              + math.sin(2 * m * _RAD) * (0.019993 - 0.000101 * jc)
              + math.sin(3 * m * _RAD) * 0.000289)
    return l0, m, ecc, centre


def _obliquity_deg(jc: float) -> float:
    mean = 23.0 + (26.0 + (21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))) / 60.0) / 60.0
    return mean + 0.00256 * math.cos((125.04 - 1934.136 * jc) * _RAD)


def _equation_of_time_min(l0: float, m: float, ecc: float, obliq: float) -> float:
    y = math.tan(obliq * _RAD / 2.0) ** 2
    l0r, mr = l0 * _RAD, m * _RAD
    e = (y * math.sin(2 * l0r) - 2 * ecc * math.sin(mr)
         + 4 * ecc * y * math.sin(mr) * math.cos(2 * l0r)
         - 0.5 * y * y * math.sin(4 * l0r) - 1.25 * ecc * ecc * math.sin(2 * mr))
    return 4.0 * e / _RAD


def sun_position(t: float, latitude: float, longitude: float) -> SunPosition:
    jc = _julian_century(t)
    l0, m, ecc, centre = _orbit(jc)
    obliq = _obliquity_deg(jc)
    apparent_long = l0 + centre - 0.00569 - 0.00478 * math.sin((125.04 - 1934.136 * jc) * _RAD)
    decl = math.asin(math.sin(obliq * _RAD) * math.sin(apparent_long * _RAD))
    true_solar_min = ((t % 86400.0) / 60.0 + _equation_of_time_min(l0, m, ecc, obliq)
                      + 4.0 * wrap_longitude(longitude)) % 1440.0
    hour_angle = (true_solar_min / 4.0 - 180.0) * _RAD
    lat = latitude * _RAD
    cos_zenith = (math.sin(lat) * math.sin(decl)
                  + math.cos(lat) * math.cos(decl) * math.cos(hour_angle))
    azimuth = math.atan2(math.sin(hour_angle),
                         math.cos(hour_angle) * math.sin(lat) - math.tan(decl) * math.cos(lat))
    distance_au = 1.000001018 * (1 - ecc * ecc) / (1 + ecc * math.cos((m + centre) * _RAD))
    return SunPosition(max(-1.0, min(1.0, cos_zenith)), (azimuth / _RAD + 180.0) % 360.0,
                       SOLAR_CONSTANT_W_M2 / (distance_au * distance_au))
