"""The household standard load profile: hourly shape tables and the dynamisation factor.

Owns data only. The tables are hourly means, in W per 1000 kWh/a, of the BDEW H25
household profile (successor of H0): winter = mean of Dec, Jan, Feb; summer = mean of
Jun, Jul, Aug; day types WT (Mon-Fri), SA (Saturday), FT (Sunday; public holidays are not
modelled). Like H0, H25 is published undynamised: the BDEW 4th-degree polynomial of the
day of year (1.24 in January, ~0.8 in summer) scales it to the seasonal consumption.
"""

from __future__ import annotations

import math

WORKDAY, SATURDAY, SUNDAY = "WT", "SA", "FT"

H0_WINTER_W = {
    WORKDAY: (74, 64, 61, 60, 63, 72, 94, 102, 96, 92, 92, 101,
              104, 103, 101, 105, 120, 147, 167, 167, 152, 136, 119, 96),
    SATURDAY: (81, 69, 63, 61, 62, 63, 74, 95, 117, 129, 138, 150,
               149, 142, 139, 139, 148, 166, 175, 165, 148, 134, 123, 103),
    SUNDAY: (85, 73, 67, 64, 63, 64, 72, 90, 116, 137, 155, 174,
             167, 153, 144, 141, 147, 167, 179, 170, 152, 135, 118, 96),
}
H0_SUMMER_W = {
    WORKDAY: (94, 82, 76, 75, 77, 86, 103, 111, 108, 108, 110, 120,
              126, 122, 118, 119, 128, 146, 165, 171, 168, 161, 146, 117),
    SATURDAY: (102, 88, 80, 78, 77, 79, 91, 113, 136, 149, 157, 169,
               169, 160, 155, 152, 153, 160, 169, 167, 162, 156, 147, 126),
    SUNDAY: (105, 90, 82, 78, 77, 78, 86, 106, 134, 157, 174, 192,
             186, 168, 157, 151, 150, 163, 175, 176, 171, 162, 145, 115),
}
MID_WINTER_DAY_OF_YEAR = 15  # the winter table applies fully on 15 January
DAYS_PER_YEAR = 365.25


def day_type(weekday: int) -> str:
    """Monday = 0 ... Sunday = 6."""
    return SUNDAY if weekday == 6 else SATURDAY if weekday == 5 else WORKDAY


def dynamisation(day_of_year: float) -> float:
    """BDEW dynamisation polynomial for the H0/H25 household profiles."""
    d = day_of_year
    return -3.92e-10 * d ** 4 + 3.2e-7 * d ** 3 - 7.02e-5 * d ** 2 + 2.1e-3 * d + 1.24


def winter_weight(day_of_year: float) -> float:
    """1 in mid-January, 0 in mid-July: the blend between the two tables."""
    return 0.5 + 0.5 * math.cos(2.0 * math.pi * (day_of_year - MID_WINTER_DAY_OF_YEAR) / DAYS_PER_YEAR)


def hourly_w(kind: str, hour: int, day_of_year: float) -> float:
    """Profile value (W per 1000 kWh/a, undynamised) of one hour of one day type."""
    w = winter_weight(day_of_year)
    return w * H0_WINTER_W[kind][hour] + (1.0 - w) * H0_SUMMER_W[kind][hour]
