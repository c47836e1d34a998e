"""PV array and inverter: from sun and weather to AC output power.

Owns the PV chain, each step a textbook formula:
Haurwitz clear-sky GHI -> times the clear-sky index k -> Erbs split into beam and
diffuse -> isotropic (Liu-Jordan) transposition onto the tilted plane, with ground
albedo -> Faiman cell temperature -> PVWatts DC (gamma = -0.004 /K) minus 10 % system
losses -> PVWatts inverter efficiency curve, AC output clipped at the inverter rating.
Berlin, 5 kWp, 30 deg south: ~1040 kWh/m2 GHI, ~1000 kWh/kWp per year.

Reported electrical side: the AC output of the inverter, at the shared grid voltage,
current = P_ac / V (unity power factor). At night P, and therefore I, are exactly 0.

Every function here is total (issue 13, defect 10): defined, finite and physically bounded
for any finite input, including the first second of sunrise, when GHI underflows into
subnormal numbers (and the PVWatts zeta to exactly 0), ratings from 1e-300 to 1e308 kW
(capped at MAX_RATING_KW) and any tilt or azimuth.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from c8ysim.sim import DeviceSpec
from c8ysim.sim.noise import bounded_rating
from c8ysim.sim.sun import SunPosition
from c8ysim.sim.weather import Weather

HAURWITZ_SCALE_W_M2 = 1098.0
HAURWITZ_EXTINCTION = 0.059
MAX_BEAM_ZENITH_DEG = 87.0  # below ~3 deg elevation all light is treated as diffuse
GROUND_ALBEDO = 0.2
FAIMAN_U0_W_M2K = 25.0
FAIMAN_U1_W_M3SK = 6.84
STC_IRRADIANCE_W_M2 = 1000.0
STC_CELL_TEMP_C = 25.0
GAMMA_PDC_PER_K = -0.004
DC_LOSS_FRACTION = 0.10  # PVWatts-style soiling, wiring, mismatch, reflection, ageing
INVERTER_NOMINAL_EFFICIENCY = 0.96
PVWATTS_REFERENCE_EFFICIENCY = 0.9637
_COS_MAX_BEAM_ZENITH = math.cos(math.radians(MAX_BEAM_ZENITH_DEG))
MAX_RATING_KW = 1e6  # 1 GW: far beyond any household; keeps every W and kWh figure finite
MAX_TILT_DEG = 180.0
# PVWatts: P_ac = eta * Pdc is negative below zeta ~0.00599 (the inverter's own consumption
# exceeds its input; 0 is delivered) and largest at zeta = 0.9858 / (2 * 0.0162) ~ 30.4;
# beyond that the fit would fall back to 0, where a real inverter simply keeps clipping.
PVWATTS_ZETA_MIN = 0.005
PVWATTS_ZETA_PEAK = 0.9858 / (2.0 * 0.0162)


class PvOutput(NamedTuple):
    ac_w: float          # delivered AC power after clipping (>= 0)
    available_ac_w: float  # AC power the inverter would deliver without clipping
    dc_w: float
    poa_w_m2: float
    cell_temp_c: float

    @property
    def clipped(self) -> bool:
        return self.available_ac_w > self.ac_w


def haurwitz_ghi(cos_zenith: float) -> float:
    """Clear-sky global horizontal irradiance, W/m2 (0 with the sun below the horizon)."""
    if cos_zenith <= 0.0:
        return 0.0
    return HAURWITZ_SCALE_W_M2 * cos_zenith * math.exp(-HAURWITZ_EXTINCTION / cos_zenith)


def erbs_diffuse_fraction(kt: float) -> float:
    """Erbs et al. (1982): diffuse share of GHI from the clearness index kt."""
    if kt <= 0.22:
        return 1.0 - 0.09 * kt
    if kt <= 0.80:
        return 0.9511 - 0.1604 * kt + 4.388 * kt ** 2 - 16.638 * kt ** 3 + 12.336 * kt ** 4
    return 0.165


class Sky(NamedTuple):
    """The light of one instant on a horizontal plane, split for transposition: the same for
    every array of the site, so a site computes it once per instant (`sky`)."""

    ghi: float
    dhi: float
    dni: float
    cos_zenith: float
    sin_zenith: float
    azimuth_deg: float  # the sun's, reduced to [0, 360)


def sky(ghi: float, sun: SunPosition) -> Sky | None:
    """GHI split into diffuse (Erbs) and beam; None without light from above the horizon."""
    cz = sun.cos_zenith
    if not (ghi > 0.0 and cz > 0.0):  # no light, or none from above the horizon
        return None
    extraterrestrial_horizontal = sun.extraterrestrial_w_m2 * cz
    kt = min(1.0, ghi / extraterrestrial_horizontal) if extraterrestrial_horizontal > 0.0 else 1.0
    dhi = ghi * erbs_diffuse_fraction(kt) if cz > _COS_MAX_BEAM_ZENITH else ghi
    dni = (ghi - dhi) / cz if cz > _COS_MAX_BEAM_ZENITH else 0.0
    sz = math.sqrt(max(0.0, 1.0 - cz * cz))
    return Sky(ghi, dhi, dni, cz, sz, sun.azimuth_deg % 360.0)


def on_plane(light: Sky | None, cos_tilt: float, sin_tilt: float, azimuth_deg: float) -> float:
    """Isotropic transposition of `light` onto a plane (`azimuth_deg` in [0, 360)); W/m2."""
    if light is None:
        return 0.0
    # Each angle reduced first: the difference of two huge ones would be infinite.
    relative_deg = light.azimuth_deg - azimuth_deg
    cos_aoi = (light.cos_zenith * cos_tilt
               + light.sin_zenith * sin_tilt * math.cos(math.radians(relative_deg)))
    return (light.dni * max(0.0, cos_aoi) + light.dhi * (1.0 + cos_tilt) / 2.0
            + light.ghi * GROUND_ALBEDO * (1.0 - cos_tilt) / 2.0)


def plane_of_array(ghi: float, sun: SunPosition, tilt_rad: float, azimuth_deg: float) -> float:
    """Isotropic transposition of GHI onto a plane; W/m2."""
    return on_plane(sky(ghi, sun), math.cos(tilt_rad), math.sin(tilt_rad), azimuth_deg % 360.0)


def faiman_cell_temp_c(poa: float, temp_air_c: float, wind_m_s: float) -> float:
    """Cell temperature; a negative (or NaN) wind speed counts as calm (U >= U0 > 0)."""
    return temp_air_c + poa / (FAIMAN_U0_W_M2K + FAIMAN_U1_W_M3SK * max(0.0, wind_m_s))


def pvwatts_dc_w(poa: float, cell_temp_c: float, pdc0_w: float) -> float:
    return pdc0_w * poa / STC_IRRADIANCE_W_M2 * (1.0 + GAMMA_PDC_PER_K * (cell_temp_c - STC_CELL_TEMP_C))


def pvwatts_ac_w(pdc_w: float, inverter_ac_w: float) -> float:
    """PVWatts inverter efficiency curve, *before* clipping; 0 for tiny or no input.

    Total: zeta = Pdc / Pdc0 underflows to 0 when a subnormal GHI at sunrise reaches the
    inverter (defect 10: ZeroDivisionError) and overflows to inf on a tiny inverter; below
    PVWATTS_ZETA_MIN the curve is negative anyway, above PVWATTS_ZETA_PEAK it is held at
    its maximum (far above the rating: the inverter clips)."""
    if not (pdc_w > 0.0 and inverter_ac_w > 0.0):
        return 0.0
    pdc0_w = inverter_ac_w / INVERTER_NOMINAL_EFFICIENCY
    zeta = pdc_w / pdc0_w
    if not zeta >= PVWATTS_ZETA_MIN:
        return 0.0
    if zeta > PVWATTS_ZETA_PEAK:
        zeta, pdc_w = PVWATTS_ZETA_PEAK, pdc0_w * PVWATTS_ZETA_PEAK
    eta = INVERTER_NOMINAL_EFFICIENCY / PVWATTS_REFERENCE_EFFICIENCY * (
        -0.0162 * zeta - 0.0059 / zeta + 0.9858)
    return max(0.0, eta * pdc_w)


class PvArray:
    """One configured PV system (array + inverter)."""

    def __init__(self, spec: DeviceSpec):
        self.name = spec.name
        self.pdc0_w = bounded_rating(spec.param("peak_kw"), MAX_RATING_KW) * 1000.0
        self.inverter_w = bounded_rating(spec.param("inverter_kw"), MAX_RATING_KW) * 1000.0
        self.tilt_rad = math.radians(bounded_rating(spec.param("tilt_deg"), MAX_TILT_DEG))
        azimuth = spec.param("azimuth_deg")
        self.azimuth_deg = azimuth if 0.0 <= azimuth < 360.0 else (
            azimuth % 360.0 if math.isfinite(azimuth) else 180.0)
        self._cos_tilt, self._sin_tilt = math.cos(self.tilt_rad), math.sin(self.tilt_rad)

    def output(self, sun: SunPosition, weather: Weather) -> PvOutput:
        return self.output_in(sky(haurwitz_ghi(sun.cos_zenith) * weather.clear_index, sun), weather)

    def output_in(self, light: Sky | None, weather: Weather) -> PvOutput:
        """`output` from the site's `sky` at the instant (computed once for all arrays)."""
        poa = on_plane(light, self._cos_tilt, self._sin_tilt, self.azimuth_deg)
        cell = faiman_cell_temp_c(poa, weather.temp_c, weather.wind_m_s)
        dc = max(0.0, pvwatts_dc_w(poa, cell, self.pdc0_w)) * (1.0 - DC_LOSS_FRACTION)
        available = pvwatts_ac_w(dc, self.inverter_w)
        return PvOutput(min(available, self.inverter_w), available, dc, poa, cell)

    def ac_w_in(self, light: Sky | None, weather: Weather) -> float:
        """`output_in(...).ac_w` alone (what another device's phase balance needs)."""
        poa = on_plane(light, self._cos_tilt, self._sin_tilt, self.azimuth_deg)
        cell = faiman_cell_temp_c(poa, weather.temp_c, weather.wind_m_s)
        dc = max(0.0, pvwatts_dc_w(poa, cell, self.pdc0_w)) * (1.0 - DC_LOSS_FRACTION)
        return min(pvwatts_ac_w(dc, self.inverter_w), self.inverter_w)
