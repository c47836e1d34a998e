"""Heat pump model: weather dependence, summer standby, COP, flow temperature, cycling."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c8ysim.sim import DeviceSpec, Site, build_model
from c8ysim.sim.clock import local_time
from c8ysim.sim.heatpump import (COP_MAX, COP_MIN, HEATING, HOT_WATER, STANDBY, annual_degree_hours_kh,
                                cop, flow_temperature_c)
from c8ysim.sim.household import Household


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def site(seed: int = 42, **hp: float) -> Site:
    return Site(52.52, 13.405, "Europe/Berlin", seed,
                devices=(DeviceSpec("heatpump", "hp", tuple(hp.items())),))


def outputs(household: Household, start: float, days: float, step_s: float):
    hp = household.heatpumps["hp"]
    for i in range(int(days * 86400 / step_s)):
        t = start + i * step_s
        weather = household.weather.at(t)
        yield t, weather, hp.output(t, weather, local_time(t, household.tz))


def test_flow_temperature_formula():
    assert flow_temperature_c(0.0) == 45.0
    assert flow_temperature_c(5.0) == pytest.approx(39.0)
    assert flow_temperature_c(-10.0) == 55.0  # clamped
    assert flow_temperature_c(20.0) == 30.0  # clamped


def test_reported_flow_temperature_follows_outdoor_temperature():
    model = build_model(site(), "hp")
    checked = 0
    for i in range(400):
        t = utc("2024-01-10T10:00:00") + i * 1800
        _, reading = model.step(model.initial_state(), t, 1.0)
        snap = model.household.snapshot(t)
        hp = snap.heatpumps["hp"]
        if hp.mode == HEATING and not hp.defrost:
            checked += 1
            expected = min(55.0, max(30.0, 45.0 - 1.2 * snap.weather.temp_c))
            temps = reading.fragment("c8ysim_HeatPumpTemperature")
            assert temps["flow"] == pytest.approx(expected, abs=0.051)
            assert temps["outdoor"] == pytest.approx(snap.weather.temp_c, abs=0.051)
            assert expected - 7.6 < temps["return"] < temps["flow"]  # it delivers heat
            assert reading.fragment("c8y_TemperatureMeasurement") == {}  # T is a device's own
    assert checked > 50


def test_cop_regression_and_band():
    assert cop(7.0, 35.0) == pytest.approx(0.154 * 7 - 0.0876 * 35 + 7.045)
    assert cop(-7.0, 35.0) == pytest.approx(2.9, abs=0.05)
    assert cop(-20.0, 55.0) == COP_MIN
    assert cop(30.0, 30.0) == COP_MAX


@settings(max_examples=200, deadline=None)
@given(st.floats(-30.0, 40.0))
def test_cop_always_within_band(temp_c):
    assert COP_MIN <= cop(temp_c, flow_temperature_c(temp_c)) <= COP_MAX


def test_more_power_on_cold_days_than_on_mild_days():
    household = Household(site())
    daily = {}
    for t, weather, out in outputs(household, utc("2024-01-01T00:00:00"), 120, 900.0):
        day = int((t - utc("2024-01-01T00:00:00")) // 86400)
        temps, watts = daily.setdefault(day, ([], []))
        temps.append(weather.temp_c)
        watts.append(out.power_w)
    cold = [sum(w) / len(w) for tmp, w in daily.values() if sum(tmp) / len(tmp) < 2.0]
    mild = [sum(w) / len(w) for tmp, w in daily.values() if sum(tmp) / len(tmp) > 8.0]
    assert len(cold) >= 5 and len(mild) >= 5
    assert sum(cold) / len(cold) > 2.0 * sum(mild) / len(mild)


def test_summer_is_standby_apart_from_hot_water():
    household = Household(site())
    modes = []
    for _, _, out in outputs(household, utc("2024-07-01T00:00:00"), 45, 300.0):
        modes.append(out.mode)
        if out.mode == STANDBY:
            assert 20.0 <= out.power_w <= 50.0
    heating_share = modes.count(HEATING) / (len(modes) - modes.count(HOT_WATER))
    assert heating_share < 0.03
    assert modes.count(HOT_WATER) > 45 * 6  # at least one 30-minute cycle a day


def test_hot_water_cycle_every_morning():
    household = Household(site())
    mornings = set()
    for t, _, out in outputs(household, utc("2024-07-01T00:00:00"), 14, 300.0):
        local = local_time(t, household.tz)
        if out.mode == HOT_WATER and 5.0 <= local.hour < 8.0:
            mornings.add(local.day_of_year)
            assert out.flow_temp_c == 55.0 or out.defrost
    assert len(mornings) == 14


def test_power_limits_and_cycling_below_minimum_modulation():
    household = Household(site(rated_kw=3.0))
    samples = [out for _, _, out in outputs(household, utc("2024-03-15T00:00:00"), 12, 60.0)]
    running = [out.power_w for out in samples if out.mode == HEATING and not out.defrost]
    assert min(running) >= 0.3 * 3000.0 - 1e-9 and max(running) <= 3000.0
    # heating runs at minimum modulation (900 W, 630 W while defrosting) between standby
    # periods are on/off cycles: 20-40 min on, 10-30 min off
    runs = [(mode, [o.power_w for o in group])
            for mode, group in itertools.groupby(samples, lambda o: o.mode)]
    triples = list(zip(runs, runs[1:], runs[2:]))
    cycles = [len(w) for (a, _), (mode, w), (b, _) in triples
              if mode == HEATING and a == b == STANDBY and max(w) <= 900.0 + 1e-6]
    pauses = [len(w) for (a, wa), (mode, w), (b, wb) in triples
              if mode == STANDBY and a == b == HEATING and max(wa + wb) <= 900.0 + 1e-6]
    assert len(cycles) > 20 and len(pauses) > 20
    assert all(19 <= n <= 41 for n in cycles)
    assert min(pauses) >= 9


def test_defrost_only_in_band_and_reported_as_event_once_per_start():
    model = build_model(site(), "hp")
    state = model.initial_state()
    events, defrost_ticks = 0, 0
    start = utc("2024-02-01T00:00:00")
    for i in range(2 * 4320):  # two days at 20 s
        t = start + i * 20.0
        state, reading = model.step(state, t, 20.0)
        flag = model.household.snapshot(t).heatpumps["hp"].defrost  # an event, not a series
        if flag:
            defrost_ticks += 1
            temp = model.household.snapshot(t).weather.temp_c
            assert -7.0 <= temp <= 5.0
        for event in reading.events:
            assert event.type == "c8ysim_Defrost" and flag
            events += 1
    assert events >= 3
    assert defrost_ticks >= events * 11  # each defrost lasts at least 4 minutes


def test_annual_space_heat_matches_building_demand():
    household = Household(site(building_kwh_per_year=12000.0))
    heat_kwh = sum(out.heat_w for _, _, out in outputs(household, utc("2023-01-01T00:00:00"), 365, 3600.0)
                   if out.mode == HEATING) / 1000.0
    assert 12000.0 * 0.85 < heat_kwh < 12000.0 * 1.15
    assert 40000.0 < annual_degree_hours_kh(52.52) < 70000.0


def test_zero_rating_is_always_off():
    household = Household(site(rated_kw=0.0))
    for _, _, out in outputs(household, utc("2024-01-15T00:00:00"), 1, 600.0):
        assert out.mode == STANDBY and out.power_w <= 50.0


def test_thermal_register_power_cop_and_return_temperature_agree():
    """What DataHub needs for the seasonal performance factor: the thermal register integrates
    the thermal power, the COP series is thermal over electrical power, and the return
    temperature carries the heat (thermal power = m c_p (flow - return))."""
    model = build_model(site(), "hp")
    unit = model.household.heatpumps["hp"]
    state, heat_kwh, running = model.initial_state(), 0.0, 0
    start = utc("2024-01-20T00:00:00")
    for i in range(1, 1441):  # a winter day at 60 s
        t = start + i * 60.0
        before = state["registers"]["heat"]
        state, reading = model.step(state, t, 60.0)
        assert state["registers"]["heat"] >= before
        out = model.household.snapshot(t).heatpumps["hp"]
        heat_kwh += out.heat_w * 60.0 / 3.6e6
        electrical = reading.value("c8y_ThreePhaseEnergyMeasurement", "P+")
        thermal = reading.value("c8ysim_ThermalPower", "heat")
        assert reading.value("c8ysim_ThermalEnergy", "heat") == round(state["registers"]["heat"], 4)
        cop = reading.value("c8ysim_COP", "COP")
        temps = reading.fragment("c8ysim_HeatPumpTemperature")
        if thermal > 0.0:
            running += 1
            assert cop == pytest.approx(thermal / electrical, abs=0.006)
            assert thermal == pytest.approx(out.heat_w, abs=0.051)
            assert out.heat_w == pytest.approx(
                unit.flow_w_per_k * (out.flow_temp_c - out.return_temp_c), rel=1e-9)
            assert 0.0 < temps["flow"] - temps["return"] <= 7.6
        else:
            assert cop == 0.0
            assert temps["return"] >= temps["flow"]  # standby: equal; defrost: the coil is cold
    assert running > 300
    assert state["registers"]["heat"] == pytest.approx(heat_kwh, rel=1e-9)
    spf = state["registers"]["heat"] / state["registers"]["A+"]
    assert 2.0 < spf < 5.0, spf


def test_three_phase_by_default_single_phase_on_request():
    three = build_model(site(), "hp")
    single = build_model(site(phases=1.0, phase=2.0), "hp")
    t = utc("2024-01-20T07:00:00")
    _, r3 = three.step(three.initial_state(), t, 1.0)
    _, r1 = single.step(single.initial_state(), t, 1.0)
    power = r3.value("c8y_ThreePhaseEnergyMeasurement", "P+")
    phases = [r3.value("c8y_ThreePhaseEnergyMeasurement", f"P+:{n}") for n in (1, 2, 3)]
    assert power > 500.0 and round(sum(phases) * 10) == round(power * 10)
    assert set(r3.fragment("c8y_VoltageMeasurement")) == {"voltage:1", "voltage:2", "voltage:3"}
    assert r1.value("c8y_SinglePhaseEnergyMeasurement", "P+") == power
    assert r1.energy_fragment() == "c8y_SinglePhaseEnergyMeasurement"
    volts = r1.value("c8y_VoltageMeasurement", "voltage")
    assert volts == round(single.household.snapshot(t).phase_voltage_v[1], 1)  # on L2
    assert r1.value("c8y_CurrentMeasurement", "current") == pytest.approx(power / (volts * 0.95), abs=0.002)
