"""Scenarios made physical: faults and forced weather in the household model (real models).

Each fault's effect on every device and on the grid balance (total and per phase, on the
unrounded internals), alarms raised once and cleared once over a stepped window, energy
registers that agree with the powers (also across sub-stepped fast-forward), the heat
pump's catch-up after a fault, forced weather, daily windows across midnight and the DST
changes, no effect outside a window, bit-identical numbers from independently built models,
and a device's `view` equal to the site's snapshot bit for bit (issue 18).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from c8ysim.sim import DeviceSpec, Site, build_model
from c8ysim.sim.clock import local_time
from c8ysim.sim.heatpump import FAULT_MODE, HEATING, OFF, RECOVERY_MAX_S, STANDBY_MAX_W, STANDBY_MIN_W
from c8ysim.sim.household import Household, grid_balance_w
from c8ysim.sim.scenarios import NO_FAULTS, Window, Windows, honoured
from c8ysim.sim.weather import CLEAR, MIXED, OVERCAST, THERMAL_LAG_S
from c8ysim.site import COMMS_LOSS, FAULT, WEATHER, Scenario

BERLIN = (52.52, 13.405)
DEVICES = (DeviceSpec("pv", "roof"),  # single-phase, L1
           DeviceSpec("pv", "garage", (("peak_kw", 8.0), ("inverter_kw", 6.0), ("azimuth_deg", 200.0))),
           DeviceSpec("heatpump", "hp"),  # three-phase
           DeviceSpec("heatpump", "annex", (("phases", 1.0), ("phase", 2.0), ("rated_kw", 2.0))),
           DeviceSpec("grid", "meter"))
NAMES = tuple(d.name for d in DEVICES)
ENERGY_3P, ENERGY_1P = "c8y_ThreePhaseEnergyMeasurement", "c8y_SinglePhaseEnergyMeasurement"


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def site(*scenarios: Scenario, devices=DEVICES, seed: int = 42) -> Site:
    return Site(*BERLIN, "Europe/Berlin", seed, devices=devices, scenarios=tuple(scenarios))


def fault(name: str, device: str, start: float, duration_s: float) -> Scenario:
    return Scenario(FAULT, name, device, duration_s, start=start)


def solar_day(t: float) -> int:
    return math.floor((t + BERLIN[1] * 240.0) / 86400.0)


def first_day(day_type: str, after: float, seed: int = 42) -> float:
    """UTC midnight of the first day of `day_type` at or after `after` (a midnight)."""
    weather = Household(site(seed=seed)).weather
    for day in range(90):
        start = after + day * 86400.0
        if weather.day_type(solar_day(start + 43200.0)) == day_type:
            return start
    raise AssertionError(f"no {day_type} day in 90 days")


def power(reading, name: str) -> float:
    return reading.value(reading.energy_fragment(), name)


def volts(reading) -> list[float]:
    return list(reading.fragment("c8y_VoltageMeasurement").values())


def amps(reading) -> list[float]:
    return list(reading.fragment("c8y_CurrentMeasurement").values())


def phase_balance(snap, household: Household) -> tuple[float, float, float]:
    """load + heat pumps - PV on each phase, recomputed from the snapshot's devices."""
    phases = list(snap.phase_load_w)
    for sign, outputs in ((1.0, {n: h.power_w for n, h in snap.heatpumps.items()}),
                          (-1.0, {n: p.ac_w for n, p in snap.pv.items()})):
        for name, watts in outputs.items():
            place = household.placement[name]
            for n in place.phases:
                phases[n] += sign * watts / len(place.phases)
    return tuple(phases)


def assert_balanced(snap, household: Household) -> None:
    """The balance on the unrounded internals, with the faulted devices' real powers."""
    hp_w = [h.power_w for h in snap.heatpumps.values()]
    pv_w = [p.ac_w for p in snap.pv.values()]
    assert snap.grid_w == grid_balance_w(snap.load_w, hp_w, pv_w)
    assert sum(snap.phase_load_w) == pytest.approx(snap.load_w, rel=1e-12, abs=1e-9)
    for got, expected in zip(snap.grid_phase_w, phase_balance(snap, household)):
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert sum(snap.grid_phase_w) == pytest.approx(snap.grid_w, rel=1e-12, abs=1e-9)


def run(model, times: list[float], dt: float | None = None):
    """Step `model` through `times`; (readings, states, raised, cleared) over the run."""
    state, readings, states, raised, cleared = model.initial_state(), [], [], [], []
    previous = None
    for t in times:
        step = dt if dt is not None else (t - previous if previous is not None else 10.0)
        state, reading = model.step(state, t, step)
        readings.append(reading)
        states.append(state)
        raised += [(t, a) for a in reading.alarms_raised]
        cleared += [(t, kind) for kind in reading.alarms_cleared]
        previous = t
    return readings, states, raised, cleared


def grid(start: float, end: float, step_s: float) -> list[float]:
    return [start + i * step_s for i in range(int((end - start) / step_s) + 1)]


# -- which scenarios the models honour ---------------------------------------------------------

def test_only_scenarios_the_models_can_act_on_are_honoured():
    t = utc("2024-06-01T10:00:00")
    kept = [fault("inverter_trip", "roof", t, 60.0), fault("outage", "meter", t, 60.0),
            Scenario(WEATHER, "cloudy", "", 60.0, daily_at_s=3600.0)]
    dropped = [fault(COMMS_LOSS, "roof", t, 60.0),  # the uplink's, not the model's
               fault("inverter_trip", "hp", t, 60.0),  # not a heat pump's fault
               fault("outage", "nowhere", t, 60.0),  # no such device
               fault("inverter_trip", "roof", t, 0.0),  # no window
               fault("inverter_trip", "roof", t, math.inf),
               Scenario(FAULT, "inverter_trip", "roof", 60.0),  # not anchored yet
               Scenario(WEATHER, "stormy", "", 60.0, start=t)]
    assert honoured(site(*dropped, *kept)) == tuple(kept)


def test_comms_loss_changes_no_reading():
    t0 = utc("2024-06-01T10:00:00")
    lost = site(fault(COMMS_LOSS, "meter", t0, 3600.0), fault(COMMS_LOSS, "roof", t0, 3600.0))
    times = grid(t0 - 60.0, t0 + 3700.0, 30.0)
    for name in NAMES:
        assert run(build_model(lost, name), times) == run(build_model(site(), name), times)


# -- inverter trip -----------------------------------------------------------------------------

def test_inverter_trip_on_all_devices_and_on_the_balance():
    day = first_day(CLEAR, utc("2024-06-01T00:00:00"))
    start, duration = day + 10 * 3600.0 + 7.0, 1800.0
    tripped, plain = Household(site(fault("inverter_trip", "roof", start, duration))), Household(site())
    for t in grid(start, start + duration - 1.0, 97.0):
        snap, ref = tripped.snapshot(t), plain.snapshot(t)
        assert snap.faults.tripped == {"roof"} and not snap.faults.outage
        roof = snap.pv["roof"]
        assert roof.ac_w == 0.0 and roof.dc_w == 0.0 and not roof.clipped
        assert roof.poa_w_m2 == ref.pv["roof"].poa_w_m2 > 500.0  # the sun still shines on it
        assert snap.pv["garage"] == ref.pv["garage"] and snap.heatpumps == ref.heatpumps
        assert snap.load_w == ref.load_w
        assert_balanced(snap, tripped)
        # the meter sees the missing generation, on the roof's phase (L1) only
        assert snap.grid_w - ref.grid_w == pytest.approx(ref.pv["roof"].ac_w, abs=1e-6)
        assert snap.grid_phase_w[0] - ref.grid_phase_w[0] == pytest.approx(ref.pv["roof"].ac_w, abs=1e-6)
        assert snap.grid_phase_w[1:] == ref.grid_phase_w[1:]
    t = start + 600.0
    roof = build_model(tripped.site, "roof")
    _, reading = roof.step(roof.initial_state(), t, 10.0)
    assert power(reading, "P-") == 0.0 and amps(reading) == [0.0]
    assert volts(reading) == [round(tripped.snapshot(t).phase_voltage_v[0], 1)] and volts(reading)[0] > 207.0
    meter = build_model(tripped.site, "meter")
    _, reading = meter.step(meter.initial_state(), t, 10.0)
    snap = tripped.snapshot(t)
    assert power(reading, "P+") - power(reading, "P-") == pytest.approx(snap.grid_w, abs=0.15)


def test_inverter_trip_alarm_is_raised_once_and_cleared_once():
    day = first_day(CLEAR, utc("2024-06-01T00:00:00"))
    start, duration = day + 11 * 3600.0 + 3.0, 1200.0
    model = build_model(site(fault("inverter_trip", "roof", start, duration)), "roof")
    readings, states, raised, cleared = run(model, grid(start - 600.0, start + duration + 600.0, 10.0))
    trips = [(t, a) for t, a in raised if a.type == "c8ysim_InverterTrip"]
    assert len(trips) == 1 and start <= trips[0][0] < start + 10.0
    assert trips[0][1].severity == "MAJOR"
    ends = [t for t, kind in cleared if kind == "c8ysim_InverterTrip"]
    assert len(ends) == 1 and start + duration <= ends[0] < start + duration + 10.0
    assert "c8ysim_InverterTrip" not in states[-1]["alarms"]
    for reading in readings:
        inside = start <= reading.time < start + duration
        assert (power(reading, "P-") == 0.0) == inside  # a clear noon produces outside it


def test_trip_registers_do_not_move_also_when_fast_forwarded_across_the_window():
    day = first_day(CLEAR, utc("2024-06-01T00:00:00"))
    start, duration = day + 10 * 3600.0, 7200.0
    scenarios = (fault("inverter_trip", "roof", start, duration),)
    model = build_model(site(*scenarios), "roof")
    state, _ = model.step(model.initial_state(), start, 0.0)
    state, _ = model.step(state, start + duration, duration)  # sub-stepped, every sample tripped
    assert state["registers"]["A-"] == 0.0
    plain = build_model(site(), "roof")
    state, _ = plain.step(plain.initial_state(), start, 0.0)
    assert plain.step(state, start + duration, duration)[0]["registers"]["A-"] > 5.0
    # the meter's sub-steps honour the trip too: it imports what the roof did not deliver
    meters = [build_model(site(*s), "meter") for s in (scenarios, ())]
    imports = [m.step(m.step(m.initial_state(), start, 0.0)[0], start + duration, duration)[0]["registers"]
               for m in meters]
    assert imports[0]["A+"] - imports[0]["A-"] > imports[1]["A+"] - imports[1]["A-"] + 5.0


# -- compressor fault and the catch-up after it -------------------------------------------------

WINTER_FAULT_START = utc("2024-01-15T09:00:00")
WINTER_FAULT_S = 3 * 3600.0


def test_compressor_fault_on_all_devices_and_on_the_balance():
    broken = site(fault("compressor_fault", "hp", WINTER_FAULT_START, WINTER_FAULT_S))
    house, plain = Household(broken), Household(site())
    for t in grid(WINTER_FAULT_START, WINTER_FAULT_START + WINTER_FAULT_S - 1.0, 131.0):
        snap, ref = house.snapshot(t), plain.snapshot(t)
        hp = snap.heatpumps["hp"]
        assert snap.faults.broken == {"hp"}
        assert STANDBY_MIN_W <= hp.power_w <= STANDBY_MAX_W and hp.heat_w == 0.0 and hp.cop == 0.0
        assert hp.mode == FAULT_MODE and not hp.defrost
        assert 20.0 <= hp.flow_temp_c == hp.return_temp_c <= 55.0  # the water cools towards the rooms
        assert snap.heatpumps["annex"] == ref.heatpumps["annex"] and snap.pv == ref.pv
        assert_balanced(snap, house)
        assert snap.grid_w - ref.grid_w == pytest.approx(hp.power_w - ref.heatpumps["hp"].power_w, abs=1e-6)
    hp_model = build_model(broken, "hp")
    readings, states, raised, cleared = run(
        hp_model, grid(WINTER_FAULT_START - 300.0, WINTER_FAULT_START + WINTER_FAULT_S + 300.0, 10.0))
    faults = [(t, a) for t, a in raised if a.type == "c8ysim_CompressorFault"]
    assert len(faults) == 1 and faults[0][1].severity == "MAJOR"
    assert [t for t, kind in cleared if kind == "c8ysim_CompressorFault"] == [WINTER_FAULT_START + WINTER_FAULT_S]
    inside = [r for r in readings if WINTER_FAULT_START <= r.time < WINTER_FAULT_START + WINTER_FAULT_S]
    assert all(r.value("c8ysim_COP", "COP") == 0.0 and r.value("c8ysim_ThermalPower", "heat") == 0.0
               for r in inside)
    flows = [r.value("c8ysim_HeatPumpTemperature", "flow") for r in inside]
    assert flows[0] > flows[-1] > 20.0 and flows[-1] < 21.0  # three hours: near room temperature
    heat = [s["registers"]["heat"] for r, s in zip(readings, states)
            if WINTER_FAULT_START + 10.0 <= r.time < WINTER_FAULT_START + WINTER_FAULT_S]
    assert heat[0] == heat[-1]  # the thermal register stands still


def test_compressor_fault_registers_follow_standby_also_fast_forwarded():
    start, duration = WINTER_FAULT_START, WINTER_FAULT_S
    model = build_model(site(fault("compressor_fault", "hp", start, duration)), "hp")
    state, _ = model.step(model.initial_state(), start, 0.0)
    state, _ = model.step(state, start + duration, duration)
    assert state["registers"]["heat"] == 0.0
    assert 0.0 < state["registers"]["A+"] <= STANDBY_MAX_W * duration / 3.6e6


def test_after_a_compressor_fault_the_heat_pump_catches_up_at_rated_power():
    end = WINTER_FAULT_START + WINTER_FAULT_S
    broken = site(fault("compressor_fault", "hp", WINTER_FAULT_START, WINTER_FAULT_S))
    house, plain = Household(broken), Household(site())
    unit = house.heatpumps["hp"]
    recovery = unit.recovery_s(WINTER_FAULT_START, end)
    assert 600.0 < recovery <= RECOVERY_MAX_S
    catching_up = [house.snapshot(t).heatpumps["hp"] for t in grid(end, end + recovery - 1.0, 60.0)]
    running = [hp for hp in catching_up if hp.mode == HEATING]
    assert len(running) > len(catching_up) // 2  # hot water may take a turn
    assert all(hp.power_w in (unit.rated_w, unit.rated_w * 0.7) for hp in running)  # 0.7: defrost
    normal = [plain.snapshot(t).heatpumps["hp"].power_w for t in grid(end, end + recovery - 1.0, 60.0)]
    assert sum(hp.power_w for hp in catching_up) > 1.3 * sum(normal)
    # afterwards it runs as it would have: the fault has no effect any more
    for t in grid(end + recovery, end + recovery + 3 * 3600.0, 61.0):
        assert house.snapshot(t).heatpumps == plain.snapshot(t).heatpumps
    # it makes up most of the heat it missed: over fault + catch-up, about what it would have delivered
    span = grid(WINTER_FAULT_START, end + recovery, 30.0)
    delivered = sum(house.snapshot(t).heatpumps["hp"].heat_w for t in span)
    usual = sum(plain.snapshot(t).heatpumps["hp"].heat_w for t in span)
    assert 0.75 * usual < delivered < 1.25 * usual


def test_no_catch_up_without_heating_demand():
    start = utc("2024-07-10T09:00:00")
    house = Household(site(fault("compressor_fault", "hp", start, 3600.0)))
    assert house.heatpumps["hp"].recovery_s(start, start + 3600.0) == 0.0
    plain = Household(site())
    for t in grid(start + 3600.0, start + 4 * 3600.0, 53.0):
        assert house.snapshot(t).heatpumps == plain.snapshot(t).heatpumps


def test_catch_up_is_a_pure_function_of_t():
    broken = site(fault("compressor_fault", "hp", WINTER_FAULT_START, WINTER_FAULT_S))
    end = WINTER_FAULT_START + WINTER_FAULT_S
    times = grid(end - 600.0, end + RECOVERY_MAX_S, 37.0)
    forwards = [Household(broken).heatpump_output("hp", t) for t in times]
    house = Household(broken)
    backwards = [house.heatpump_output("hp", t) for t in reversed(times)][::-1]
    assert forwards == backwards


# -- grid outage -------------------------------------------------------------------------------

def test_outage_on_all_devices_and_on_the_balance():
    day = first_day(CLEAR, utc("2024-03-01T00:00:00"))
    start, duration = day + 11 * 3600.0 + 5.0, 900.0
    out = site(fault("outage", "meter", start, duration))
    house = Household(out)
    for t in grid(start, start + duration - 1.0, 41.0):
        snap = house.snapshot(t)
        assert snap.faults.outage and not snap.excursion
        assert snap.phase_voltage_v == (0.0, 0.0, 0.0) and snap.voltage_v == 0.0
        assert snap.load_w == 0.0 and snap.phase_load_w == (0.0, 0.0, 0.0)
        assert all(p.ac_w == 0.0 and p.poa_w_m2 > 0.0 for p in snap.pv.values())  # anti-islanding
        assert all(h.power_w == 0.0 and h.heat_w == 0.0 and h.mode == OFF for h in snap.heatpumps.values())
        assert snap.grid_w == 0.0 and snap.grid_phase_w == (0.0, 0.0, 0.0)
        assert_balanced(snap, house)
    times = grid(start - 300.0, start + duration + 300.0, 10.0)
    runs = {name: run(build_model(out, name), times) for name in NAMES}
    for name, (readings, states, raised, cleared) in runs.items():
        inside = [(r, s) for r, s in zip(readings, states) if start <= r.time < start + duration]
        assert inside and all(volts(r) and set(volts(r)) == {0.0} and set(amps(r)) == {0.0} for r, _ in inside)
        assert all((power(r, "P+") or 0.0) == 0.0 == (power(r, "P-") or 0.0) for r, _ in inside)
        # the registers do not move during the outage
        assert all(s["registers"] == inside[0][1]["registers"] for _, s in inside)
        # one root-cause alarm: the meter's; no device raises a voltage alarm for the missing grid
        types = [a.type for t, a in raised]
        assert "c8ysim_VoltageAlarm" not in types
        if name == "meter":
            outages = [(t, a) for t, a in raised if a.type == "c8ysim_GridOutage"]
            assert len(outages) == 1 and outages[0][1].severity == "CRITICAL"
            assert start <= outages[0][0] < start + 10.0
            assert [t for t, k in cleared if k == "c8ysim_GridOutage"] == [
                next(t for t in times if t >= start + duration)]
        else:
            assert types == [] or set(types) <= {"c8ysim_InverterClipping"}


def test_outage_registers_stand_still_when_fast_forwarded():
    start, duration = utc("2024-01-15T08:00:00"), 5400.0
    out = site(fault("outage", "meter", start, duration))
    for name in NAMES:
        model = build_model(out, name)
        state, _ = model.step(model.initial_state(), start - 3600.0, 0.0)
        state, _ = model.step(state, start, 3600.0)
        before = dict(state["registers"])
        state, _ = model.step(state, start + duration, duration)  # every sample inside
        assert state["registers"] == before, name


def test_voltage_alarm_active_when_the_grid_fails_is_left_as_it_was():
    model = build_model(site(), "meter")
    t = utc("2024-01-15T08:00:00")
    out = build_model(site(fault("outage", "meter", t, 600.0)), "meter")
    state = {**model.initial_state(), "alarms": ["c8ysim_VoltageAlarm"]}
    state, reading = out.step(state, t + 10.0, 10.0)
    assert "c8ysim_VoltageAlarm" in state["alarms"] and reading.alarms_cleared == ()
    state, reading = out.step(state, t + 700.0, 10.0)  # back: evaluated again, in band
    assert reading.alarms_cleared == ("c8ysim_VoltageAlarm", "c8ysim_GridOutage")


def test_heat_pumps_catch_up_after_an_outage_in_winter():
    start, duration = utc("2024-01-15T09:00:00"), 2 * 3600.0
    house, plain = Household(site(fault("outage", "meter", start, duration))), Household(site())
    end = start + duration
    for name in ("hp", "annex"):
        recovery = house.heatpumps[name].recovery_s(start, end)
        assert recovery > 300.0
        assert house.heatpumps[name].catching_up(end + recovery / 2)
        assert not plain.heatpumps[name].catching_up(end + recovery / 2)


# -- forced weather ----------------------------------------------------------------------------

def test_forced_overcast_noon_in_june_delivers_far_less_pv():
    day = first_day(CLEAR, utc("2024-06-01T00:00:00"))
    start, duration = day + 9 * 3600.0, 5 * 3600.0
    cloudy, plain = Household(site(Scenario(WEATHER, "overcast", "", duration, start=start))), Household(site())
    noon = [day + 11 * 3600.0 + i * 60.0 for i in range(60)]
    forced = sum(cloudy.snapshot(t).pv["roof"].ac_w for t in noon)
    clear = sum(plain.snapshot(t).pv["roof"].ac_w for t in noon)
    assert forced < 0.45 * clear
    assert {cloudy.snapshot(t).weather.day_type for t in noon} == {OVERCAST}
    assert plain.snapshot(noon[0]).weather.day_type == CLEAR
    # the air follows: a cooler afternoon than the clear one, by up to the swing's difference
    late = day + 13 * 3600.0
    assert 0.5 < plain.snapshot(late).weather.temp_c - cloudy.snapshot(late).weather.temp_c < 4.0


@pytest.mark.parametrize("kind, day_type", [("clear", CLEAR), ("cloudy", MIXED)])
def test_forced_clear_or_cloudy_on_an_overcast_day(kind, day_type):
    day = first_day(OVERCAST, utc("2024-05-01T00:00:00"))
    start, duration = day + 10 * 3600.0, 3 * 3600.0
    forced, plain = Household(site(Scenario(WEATHER, kind, "", duration, start=start))), Household(site())
    times = [start + 600.0 + i * 60.0 for i in range(150)]
    assert {forced.snapshot(t).weather.day_type for t in times} == {day_type}
    more = sum(forced.snapshot(t).pv["roof"].ac_w for t in times)
    assert more > 1.5 * sum(plain.snapshot(t).pv["roof"].ac_w for t in times)


def test_forced_weather_is_continuous_and_has_no_effect_outside_its_window():
    day = first_day(CLEAR, utc("2024-06-01T00:00:00"))
    start, duration = day + 10 * 3600.0 + 13.0, 2 * 3600.0
    scenario = Scenario(WEATHER, "overcast", "", duration, start=start)
    forced, plain = Household(site(scenario)), Household(site())
    end = start + duration
    for edge in (start, end):  # every second across both edges: no jumps
        series = [forced.weather.at(edge + s) for s in range(-300, 300)]
        assert max(abs(a.temp_c - b.temp_c) for a, b in zip(series, series[1:])) < 0.01
        assert max(abs(a.clear_index - b.clear_index) for a, b in zip(series, series[1:])) < 0.03
    for t in grid(start - 3 * 3600.0, start - 1.0, 7.0):
        assert forced.snapshot(t) == plain.snapshot(t)
    for t in grid(end, end + THERMAL_LAG_S - 1.0, 17.0):  # the sky clears at once, the air lags
        assert forced.weather.at(t).clear_index == plain.weather.at(t).clear_index
    for t in grid(end + THERMAL_LAG_S, end + 4 * 3600.0, 7.0):
        assert forced.snapshot(t) == plain.snapshot(t)


# -- daily windows: across midnight and DST ------------------------------------------------------

def alarm_spans(model, times: list[float], kind: str) -> list[tuple[float, float | None]]:
    _, _, raised, cleared = run(model, times, dt=times[1] - times[0])
    ups = [t for t, a in raised if a.type == kind]
    downs = [t for t, k in cleared if k == kind]
    return list(zip(ups, downs + [None] * (len(ups) - len(downs))))


def test_daily_window_across_midnight():
    daily = Scenario(FAULT, "inverter_trip", "roof", 2 * 3600.0, daily_at_s=23 * 3600.0)  # 23:00-01:00
    model = build_model(site(daily), "roof")
    times = grid(utc("2024-02-10T12:00:00"), utc("2024-02-12T12:00:00"), 60.0)
    # Berlin in February is UTC+1: 22:00-24:00 UTC, each night once
    assert alarm_spans(model, times, "c8ysim_InverterTrip") == [
        (utc("2024-02-10T22:00:00"), utc("2024-02-11T00:00:00")),
        (utc("2024-02-11T22:00:00"), utc("2024-02-12T00:00:00"))]
    house = Household(site(daily))
    assert house.faults.at(utc("2024-02-10T23:59:00")).tripped == {"roof"}
    assert house.faults.at(utc("2024-02-11T00:01:00")) is NO_FAULTS


@pytest.mark.parametrize("night, spans", [
    # spring forward (02:00 CET -> 03:00 CEST): 01:30-03:30 local wall clock is one real hour
    ("2024-03-31", [("2024-03-30T00:30:00", "2024-03-30T02:30:00"),
                    ("2024-03-31T00:30:00", "2024-03-31T01:30:00"),
                    ("2024-03-31T23:30:00", "2024-04-01T01:30:00")]),
    # fall back (03:00 CEST -> 02:00 CET): 01:30 CEST to 03:30 CET is three real hours
    ("2024-10-27", [("2024-10-25T23:30:00", "2024-10-26T01:30:00"),
                    ("2024-10-26T23:30:00", "2024-10-27T02:30:00"),
                    ("2024-10-28T00:30:00", "2024-10-28T02:30:00")]),
])
def test_daily_window_across_a_dst_change(night, spans):
    daily = Scenario(FAULT, "compressor_fault", "hp", 2 * 3600.0, daily_at_s=1.5 * 3600.0)
    model = build_model(site(daily), "hp")
    middle = utc(f"{night}T01:00:00")
    times = grid(middle - 36 * 3600.0, middle + 36 * 3600.0, 60.0)
    assert alarm_spans(model, times, "c8ysim_CompressorFault") == [(utc(a), utc(b)) for a, b in spans]
    tz = model.household.tz
    for t in times[::7]:  # the model's window is the Scenario's, with the site's offset at t
        holds = daily.window(t, local_time(t, tz).utc_offset_s) is not None
        assert (model.household.faults.at(t).broken == {"hp"}) == holds


DST_CHANGES = [utc("2024-03-31T01:00:00"), utc("2024-10-27T01:00:00"),  # Berlin
               utc("2024-04-06T15:00:00"), utc("2024-10-05T15:30:00")]  # Lord Howe: 30 minutes


@settings(max_examples=150, deadline=None)
@given(zone_name=st.sampled_from(["Europe/Berlin", "Australia/Lord_Howe", "UTC"]),
       windows=st.lists(st.tuples(st.booleans(), st.floats(-2 * 86400.0, 2 * 86400.0),
                                  st.floats(1.0, 3 * 86400.0)), min_size=1, max_size=5),
       memory=st.sampled_from([0.0, 600.0, RECOVERY_MAX_S]),
       base=st.sampled_from(DST_CHANGES), offsets=st.lists(st.floats(-2 * 86400.0, 2 * 86400.0),
                                                           min_size=1, max_size=20))
@example(zone_name="Australia/Lord_Howe", windows=[(True, 0.0, 1.0)], memory=RECOVERY_MAX_S,
         base=DST_CHANGES[2], offsets=[-1.192092896e-07])  # reads as the change: microseconds
def test_windows_are_exactly_the_scenarios_own(zone_name, windows, memory, base, offsets):
    """The per-slot shortcuts find what Scenario.window / last_end find, with the offset at t."""
    scenarios = [Scenario(FAULT, "inverter_trip", "roof", duration,
                          **({"daily_at_s": abs(at) % 86400.0} if daily else {"start": base + at}))
                 for daily, at, duration in windows]
    lookup = Windows(scenarios, memory, zone_name)
    tz = Household(Site(0.0, 0.0, zone_name, 1)).tz
    for t in sorted(base + x for x in offsets):
        offset = local_time(t, tz).utc_offset_s
        expected = Counter()
        for s in scenarios:
            window = s.window(t, offset)
            end = s.last_end(t, offset)
            if window is not None:
                expected[Window(s, *window)] += 1
            elif memory > 0.0 and end is not None and t - end < memory:
                expected[Window(s, end - s.duration_s, end)] += 1
        found = lookup.near(t)
        assert Counter(found) == expected
        assert [w.start for w in found] == sorted(w.start for w in found)


# -- determinism and the view ------------------------------------------------------------------

T0 = utc("2024-01-20T06:00:00")
SCENARIOS = st.one_of(
    st.builds(lambda f, d, s, n: fault(f, d, T0 + s, n),
              st.sampled_from(["inverter_trip"]), st.sampled_from(["roof", "garage"]),
              st.floats(0.0, 6 * 3600.0), st.floats(60.0, 4 * 3600.0)),
    st.builds(lambda d, s, n: fault("compressor_fault", d, T0 + s, n),
              st.sampled_from(["hp", "annex"]), st.floats(0.0, 6 * 3600.0), st.floats(60.0, 4 * 3600.0)),
    st.builds(lambda s, n: fault("outage", "meter", T0 + s, n),
              st.floats(0.0, 6 * 3600.0), st.floats(60.0, 3600.0)),
    st.builds(lambda k, s, n: Scenario(WEATHER, k, "", n, start=T0 + s),
              st.sampled_from(["clear", "cloudy", "overcast"]), st.floats(0.0, 6 * 3600.0),
              st.floats(60.0, 4 * 3600.0)),
    st.builds(lambda k, a, n: Scenario(WEATHER, k, "", n, daily_at_s=a),
              st.sampled_from(["clear", "overcast"]), st.floats(0.0, 86399.0), st.floats(60.0, 4 * 3600.0)),
)


@settings(max_examples=60, deadline=None)
@given(scenarios=st.lists(SCENARIOS, max_size=4), offset=st.floats(0.0, 8 * 3600.0))
def test_any_scenarios_balance_exactly_and_every_view_is_the_snapshot(scenarios, offset):
    t = T0 + offset
    house = Household(site(*scenarios))
    snap = house.snapshot(t)
    assert_balanced(snap, house)
    assert snap == Household(site(*scenarios)).snapshot(t)  # another process: the same bits
    for name in NAMES:
        view = house.view(name, t)
        phases = house.placement[name].phases
        assert view.volts == tuple(snap.phase_voltage_v[n] for n in phases)
        assert view.faults == snap.faults and view.weather == snap.weather
        if name in snap.pv:
            assert view.pv == snap.pv[name] == house.pv_output(name, t)
        if name in snap.heatpumps:
            assert view.heatpump == snap.heatpumps[name] == house.heatpump_output(name, t)
        if name == "meter":
            assert view.grid_phase_w == snap.grid_phase_w == house.grid_phases_w(t)
    assert house.grid_w(t) == snap.grid_w


@settings(max_examples=40, deadline=None)
@given(scenarios=st.lists(SCENARIOS, max_size=3), offset=st.floats(0.0, 8 * 3600.0),
       dt=st.sampled_from([1.0, 10.0, 3600.0]))
def test_independently_built_models_give_identical_readings(scenarios, offset, dt):
    t = T0 + offset
    for name in NAMES:
        a, b = build_model(site(*scenarios), name), build_model(site(*scenarios), name)
        sa, ra = a.step(a.initial_state(), t, dt)
        sb, rb = b.step(b.initial_state(), t, dt)
        assert (sa, ra) == (sb, rb)


@settings(max_examples=40, deadline=None)
@given(scenarios=st.lists(SCENARIOS, min_size=1, max_size=4), offset=st.floats(0.0, 12 * 3600.0))
def test_no_effect_long_after_every_window(scenarios, offset):
    """Once every window and what follows it (the air's lag, a heat pump's catch-up) is
    over, the readings are the scenario-free site's."""
    once = [s for s in scenarios if s.start is not None]
    last = max((s.start + s.duration_s for s in once), default=T0)
    t = max(last, T0 + 10 * 3600.0) + RECOVERY_MAX_S + THERMAL_LAG_S + offset
    daily = [s for s in scenarios if s.daily_at_s is not None]
    tz = Household(site()).tz
    local_offset = local_time(t, tz).utc_offset_s
    if any(s.window(t, local_offset) or (s.last_end(t, local_offset) or -math.inf) > t - RECOVERY_MAX_S
           - THERMAL_LAG_S for s in daily):
        return  # a daily window is near t
    for name in NAMES:
        a, b = build_model(site(*scenarios), name), build_model(site(), name)
        assert a.step(a.initial_state(), t, 10.0) == b.step(b.initial_state(), t, 10.0)


EVERY_FAULT = (fault("inverter_trip", "roof", T0 + 3600.0, 1800.0),
               fault("compressor_fault", "annex", T0 + 1800.0, 5400.0),
               fault("outage", "meter", T0 + 4 * 3600.0, 900.0),
               Scenario(WEATHER, "clear", "", 4 * 3600.0, daily_at_s=9 * 3600.0))


def _readings_json(times: list[float]) -> str:
    out = []
    for name in NAMES:
        readings, states, _, _ = run(build_model(site(*EVERY_FAULT), name), times)
        out += [[name, r.time, [list(s) for s in r.series], [a.type for a in r.alarms_raised],
                 list(r.alarms_cleared), st] for r, st in zip(readings, states)]
    return json.dumps(out)


def test_another_process_computes_identical_readings_with_every_fault():
    times = grid(T0, T0 + 6 * 3600.0, 97.0)
    script = ("import sys, json; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
              "import test_sim_faults as f; print(f._readings_json(json.loads(sys.argv[3])))")
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    here = Path(__file__).resolve().parent
    result = subprocess.run([sys.executable, "-c", script, str(here.parent), str(here), json.dumps(times)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    mine = json.loads(_readings_json(times))
    assert json.loads(result.stdout) == mine
    assert {alarm for row in mine for alarm in row[3]} == {
        "c8ysim_InverterTrip", "c8ysim_CompressorFault", "c8ysim_GridOutage"}
