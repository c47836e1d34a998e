"""PV inverter model: night, solar noon, seasons, inverter limit, clipping alarm."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest

from c8ysim.sim import DeviceSpec, Site, build_model
from c8ysim.sim.household import Household
from c8ysim.sim.pv import (INVERTER_NOMINAL_EFFICIENCY, PvArray, erbs_diffuse_fraction,
                          faiman_cell_temp_c, haurwitz_ghi, pvwatts_ac_w)
from c8ysim.sim.sun import sun_position
from c8ysim.sim.weather import CLEAR, Weather

BERLIN = (52.52, 13.405)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def site(seed: int = 42, **pv: float) -> Site:
    return Site(*BERLIN, "Europe/Berlin", seed,
                devices=(DeviceSpec("pv", "roof", tuple(pv.items())), DeviceSpec("heatpump", "hp"),
                         DeviceSpec("grid", "meter")))


def fixed_weather(temp_c: float = 20.0, k: float = 1.0) -> Weather:
    return Weather(temp_c, temp_c, k, 2.0, CLEAR)


def solar_day(t: float) -> int:
    return math.floor((t + BERLIN[1] * 240.0) / 86400.0)


def first_clear_day(household: Household, after: float) -> float:
    """UTC midnight of the first clear day at or after `after` (a midnight)."""
    for day in range(60):
        start = after + day * 86400
        if household.weather.day_type(solar_day(start + 43200)) == CLEAR:
            return start
    raise AssertionError("no clear day in 60 days")


def test_sun_position_matches_known_geometry():
    # Berlin, June solstice near solar noon: elevation = 90 - 52.52 + 23.44, sun due south
    sun = sun_position(utc("2024-06-21T11:07:00"), *BERLIN)
    assert math.degrees(math.asin(sun.cos_zenith)) == pytest.approx(60.9, abs=0.3)
    assert sun.azimuth_deg == pytest.approx(180.0, abs=3.0)
    morning = sun_position(utc("2024-06-21T05:00:00"), *BERLIN)
    assert 45.0 < morning.azimuth_deg < 110.0  # north-east to east in the morning
    assert sun_position(utc("2024-12-21T23:00:00"), *BERLIN).cos_zenith < -0.5


def test_formula_building_blocks():
    assert haurwitz_ghi(1.0) == pytest.approx(1098.0 * math.exp(-0.059))
    assert haurwitz_ghi(0.0) == 0.0 and haurwitz_ghi(-0.3) == 0.0
    assert erbs_diffuse_fraction(0.1) > erbs_diffuse_fraction(0.5) > erbs_diffuse_fraction(0.9) == 0.165
    assert faiman_cell_temp_c(1000.0, 20.0, 1.0) == pytest.approx(20.0 + 1000.0 / 31.84)
    # PVWatts: at the inverter's DC rating the efficiency is exactly the nominal one
    assert pvwatts_ac_w(4600.0 / INVERTER_NOMINAL_EFFICIENCY, 4600.0) == pytest.approx(4600.0)
    assert pvwatts_ac_w(0.0, 4600.0) == 0.0


def test_zero_power_and_current_at_night_all_year():
    household = Household(site())
    nights = 0
    start = utc("2023-01-01T00:00:00")
    for day in range(0, 365, 5):
        for half_hour in range(48):
            t = start + day * 86400 + half_hour * 1800
            snap = household.snapshot(t)
            if snap.sun.cos_zenith <= 0.0:
                nights += 1
                assert snap.pv["roof"].ac_w == 0.0
    assert nights > 73 * 12  # Berlin has at least 6 h of night even at midsummer
    model = build_model(site(), "roof")
    for day in range(0, 365, 30):
        _, reading = model.step(model.initial_state(), start + day * 86400 + 23 * 3600, 1.0)
        assert reading.value("c8y_SinglePhaseEnergyMeasurement", "P-") == 0.0
        assert reading.value("c8y_CurrentMeasurement", "current") == 0.0


def test_peak_is_near_solar_noon():
    array = PvArray(DeviceSpec("pv", "roof"))
    for day in ("2024-03-20", "2024-06-21", "2024-09-22", "2024-12-21"):
        start = utc(f"{day}T00:00:00")
        times = [start + m * 60 for m in range(1440)]
        best = max(times, key=lambda t: array.output(sun_position(t, *BERLIN), fixed_weather()).ac_w)
        solar_noon_utc_h = 12.0 - BERLIN[1] / 15.0
        assert abs((best - start) / 3600.0 - solar_noon_utc_h) < 0.3  # equation of time < 17 min


def test_peak_on_real_clear_days_is_near_solar_noon():
    household = Household(site())
    clear_days = 0
    for day in range(150, 210):
        start = utc("2024-01-01T00:00:00") + day * 86400
        if household.weather.day_type(solar_day(start + 43200)) != CLEAR:
            continue
        clear_days += 1
        times = [start + 5 * 3600 + m * 600 for m in range(72)]  # 05:00-17:00 UTC
        best = max(times, key=lambda t: household.snapshot(t).pv["roof"].ac_w)
        assert abs((best - start) / 3600.0 - 11.1) < 1.5
    assert clear_days >= 8


def test_summer_noon_beats_winter_noon():
    array = PvArray(DeviceSpec("pv", "roof"))
    summer = array.output(sun_position(utc("2024-06-21T11:07:00"), *BERLIN), fixed_weather(25.0)).ac_w
    winter = array.output(sun_position(utc("2024-12-21T11:07:00"), *BERLIN), fixed_weather(0.0)).ac_w
    assert summer > 1.5 * winter > 0.0
    household = Household(site())
    june = [household.snapshot(utc("2024-06-01T11:00:00") + d * 86400).pv["roof"].ac_w for d in range(30)]
    december = [household.snapshot(utc("2024-12-01T11:00:00") + d * 86400).pv["roof"].ac_w for d in range(30)]
    assert sum(june) > 2.0 * sum(december)


@pytest.mark.parametrize("peak_kw,inverter_kw", [(5.0, 4.6), (9.0, 3.0)])
def test_never_above_inverter_rating(peak_kw, inverter_kw):
    model = build_model(site(peak_kw=peak_kw, inverter_kw=inverter_kw), "roof")
    start = utc("2024-04-01T09:00:00")
    highest = 0.0
    for i in range(2000):
        t = start + (i % 200) * 86400 * 0.5 + (i // 200) * 1800
        _, reading = model.step(model.initial_state(), t, 1.0)
        highest = max(highest, reading.value("c8y_SinglePhaseEnergyMeasurement", "P-"))
    assert highest <= inverter_kw * 1000.0
    assert highest > 0.5 * inverter_kw * 1000.0


def test_clipping_alarm_raised_and_cleared_on_an_oversized_array():
    model = build_model(site(peak_kw=9.0, inverter_kw=3.0), "roof")
    state = model.initial_state()
    start = first_clear_day(model.household, utc("2024-06-01T00:00:00"))
    raised, cleared, last_clipping = [], [], None
    for minute in range(1440):
        t = start + minute * 60
        state, reading = model.step(state, t, 60.0)
        watts = reading.value("c8y_SinglePhaseEnergyMeasurement", "P-")
        assert watts <= 3000.0
        if watts == 3000.0:
            last_clipping = t
        if any(a.type == "c8ysim_InverterClipping" for a in reading.alarms_raised):
            assert watts == 3000.0
            raised.append(t)
        if "c8ysim_InverterClipping" in reading.alarms_cleared:
            assert t - last_clipping >= 15 * 60
            cleared.append(t)
    assert len(raised) == len(cleared) == 1  # one sunny spell, one alarm
    assert cleared[0] - raised[0] > 4 * 3600
    assert "c8ysim_InverterClipping" not in state["alarms"]


def test_clipping_alarm_severity_and_mixed_day_rate():
    model = build_model(site(peak_kw=9.0, inverter_kw=3.0), "roof")
    state, raised = model.initial_state(), []
    start = utc("2024-05-30T00:00:00")  # a mixed day for seed 42
    assert model.household.weather.day_type(solar_day(start + 43200)) == "mixed"
    for i in range(2880):
        state, reading = model.step(state, start + i * 30.0, 30.0)
        raised += [a for a in reading.alarms_raised if a.type == "c8ysim_InverterClipping"]
    assert raised and all(a.severity == "WARNING" for a in raised)
    assert len(raised) < 20  # cloud gaps shorter than 15 minutes do not re-raise


def test_current_is_ac_power_over_grid_voltage():
    model = build_model(site(), "roof")
    _, reading = model.step(model.initial_state(), utc("2024-05-10T11:00:00"), 1.0)
    watts = reading.value("c8y_SinglePhaseEnergyMeasurement", "P-")
    volts = reading.value("c8y_VoltageMeasurement", "voltage")
    assert watts > 0.0
    assert reading.value("c8y_CurrentMeasurement", "current") == pytest.approx(watts / volts, abs=0.01)
    assert reading.type == "c8ysim_PvInverter"
