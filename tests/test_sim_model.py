"""Device models as a whole: determinism, properties, alarms, state, weather, load, purity."""

from __future__ import annotations

import ast
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c8ysim.sim import Alarm, DeviceSpec, Site, build_model
from c8ysim.sim.alarms import transition
from c8ysim.sim.clock import local_time
from c8ysim.sim.household import Household
from c8ysim.sim.load import APPLIANCES
from c8ysim.sim.noise import stream_key, value_noise
from c8ysim.sim.voltage import ALARM_HIGH_V, ALARM_LOW_V
from c8ysim.sim.weather import diurnal_shape

SIM_DIR = Path(__file__).resolve().parents[1] / "c8ysim" / "sim"
START_2020 = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()
TEN_YEARS_S = 10 * 365.25 * 86400
NAMES = ("roof", "hp", "meter")


def site(seed: int = 42, latitude: float = 52.52, longitude: float = 13.405,
         timezone_name: str = "Europe/Berlin") -> Site:
    return Site(latitude, longitude, timezone_name, seed,
                devices=(DeviceSpec("pv", "roof"), DeviceSpec("heatpump", "hp"), DeviceSpec("grid", "meter")))


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def run(model, times: list[float]) -> list:
    state, out = model.initial_state(), []
    for t in times:
        state, reading = model.step(state, t, 30.0)
        out.append((reading, json.dumps(state, sort_keys=True)))
    return out


TIMES = [utc(2024, 1, 1) + i * 7919.0 for i in range(60)]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_numbers(name):
    assert run(build_model(site(7), name), TIMES) == run(build_model(site(7), name), TIMES)


@pytest.mark.parametrize("name", NAMES)
def test_different_seed_different_numbers(name):
    a, b = run(build_model(site(7), name), TIMES), run(build_model(site(8), name), TIMES)
    differing = sum(ra.series != rb.series for (ra, _), (rb, _) in zip(a, b))
    assert differing > len(TIMES) // 2


def test_noise_is_keyed_by_stream_and_continuous():
    k1, k2 = stream_key(1, "x"), stream_key(1, "y")
    assert k1 != k2 and stream_key(1, "x") == k1
    values = [value_noise(k1, t, 60.0) for t in range(0, 6000, 1)]
    assert max(abs(a - b) for a, b in zip(values, values[1:])) < 0.2
    mean = sum(values) / len(values)
    assert -1.0 < mean < 1.0 and 0.2 < sum(v * v for v in values) / len(values) < 3.0


@settings(max_examples=60, deadline=None)
@given(t=st.floats(START_2020, START_2020 + TEN_YEARS_S), dt=st.floats(0.0, 3600.0),
       name=st.sampled_from(NAMES))
def test_any_time_any_dt_gives_sane_readings(t, dt, name):
    model = build_model(site(), name)
    state, reading = model.step(model.initial_state(), t, dt)
    assert reading.time == t
    assert all(math.isfinite(s.value) for s in reading.series)
    currents = reading.fragment("c8y_CurrentMeasurement").values()
    assert currents and min(currents) >= 0.0
    assert all(v >= 0.0 for v in state["registers"].values())
    volts = reading.fragment("c8y_VoltageMeasurement").values()
    raised = {a.type for a in reading.alarms_raised}
    if not all(ALARM_LOW_V <= v <= ALARM_HIGH_V for v in volts):
        assert model.household.snapshot(t).excursion and "c8ysim_VoltageAlarm" in raised
    else:
        assert "c8ysim_VoltageAlarm" not in raised
    assert json.loads(json.dumps(state)) == state


@settings(max_examples=200, deadline=None)
@given(t=st.floats(START_2020, START_2020 + TEN_YEARS_S))
def test_weather_stays_in_range(t):
    weather = Household(site()).weather.at(t)
    assert 0.05 <= weather.clear_index <= 1.0
    assert -35.0 < weather.temp_c < 45.0 and 0.0 < weather.wind_m_s <= 15.0


def test_voltage_excursions_are_rare_but_happen_and_raise_then_clear_the_alarm():
    household = Household(site())
    outside = [t for t in (START_2020 + i * 30.0 for i in range(365 * 2880))
               if household.voltage.excursion_v(t) is not None]
    minutes_per_month = len(outside) * 0.5 / 12
    assert 1.0 < minutes_per_month < 20.0
    first = outside[0]
    model = build_model(site(), "meter")
    state, raised, cleared = model.initial_state(), [], []
    for i in range(-60, 120):
        state, reading = model.step(state, first + i * 5.0, 5.0)
        raised += reading.alarms_raised
        cleared += reading.alarms_cleared
    assert [a.type for a in raised] == ["c8ysim_VoltageAlarm"] and raised[0].severity == "MAJOR"
    assert cleared == ["c8ysim_VoltageAlarm"] and state["alarms"] == []


def test_normal_voltage_stays_in_band_and_rises_while_exporting():
    household = Household(site())
    t = utc(2024, 2, 1, 3)
    quiet, exporting = household.voltage.at(t, 0.0), household.voltage.at(t, 4000.0)
    assert exporting == pytest.approx(quiet + 4.8)
    for i in range(5000):
        v = household.voltage.at(START_2020 + i * 3607.0, 20000.0 * (i % 2))
        assert ALARM_LOW_V <= v <= ALARM_HIGH_V or household.voltage.excursion_v(START_2020 + i * 3607.0)


def test_each_phase_falls_with_its_import_and_rises_with_its_export_within_the_band():
    voltage = Household(site()).voltage
    t = utc(2024, 2, 1, 3)
    idle = voltage.phases_v(t, (0.0, 0.0, 0.0))
    assert len(set(idle)) == 3  # each phase has its own offset
    loaded = voltage.phases_v(t, (2000.0, 0.0, -1000.0))  # a kettle on L1, export on L3
    assert loaded[0] == pytest.approx(idle[0] - 7.2) and loaded[1] == idle[1]
    assert loaded[2] == pytest.approx(idle[2] + 3.6)
    balanced = voltage.phases_v(t, (-4000 / 3, -4000 / 3, -4000 / 3))
    assert sum(balanced) / 3 == pytest.approx(voltage.at(t, 4000.0), abs=2.0)  # offsets aside
    for i in range(3000):
        when = START_2020 + i * 3607.0
        flows = tuple(30000.0 * ((i + n) % 3 - 1) for n in range(3))  # +-30 kW: clamped
        if voltage.excursion_v(when) is None:
            assert all(ALARM_LOW_V < v < ALARM_HIGH_V for v in voltage.phases_v(when, flows))


def test_alarm_transitions():
    low = Alarm("a", "MAJOR", "x")
    assert transition([], {"a": low, "b": None}) == (["a"], (low,), ())
    assert transition(["a"], {"a": low}) == (["a"], (), ())
    assert transition(["a", "other"], {"a": None}) == (["other"], (), ("a",))


@pytest.mark.parametrize("name", NAMES)
def test_step_accepts_empty_or_foreign_state_and_does_not_mutate_it(name):
    model = build_model(site(), name)
    for state in ({}, {"energy_kwh": 5.0}, {"registers": {"A+": "junk", "A-": -3}, "alarms": "x"}):
        frozen = json.dumps(state)
        new, _ = model.step(state, utc(2024, 6, 1, 12), 10.0)
        assert json.dumps(state) == frozen
        assert set(new["registers"]) == set(model.REGISTERS) >= {"A+", "A-"}
        assert min(new["registers"].values()) >= 0.0
    state = model.initial_state()
    new, _ = model.step(state, utc(2024, 6, 1, 12), 10.0)
    assert state == model.initial_state() and new is not state


def test_temperature_seasons_follow_the_hemisphere():
    def mean_temp(s: Site, month: int) -> float:
        weather = Household(s).weather
        return sum(weather.at(utc(2024, month, 1) + h * 3600.0).temp_c for h in range(0, 28 * 24, 3)) / 224

    berlin, sydney = site(), site(latitude=-33.87, longitude=151.21, timezone_name="Australia/Sydney")
    assert mean_temp(berlin, 7) > mean_temp(berlin, 1) + 10.0
    assert mean_temp(sydney, 1) > mean_temp(sydney, 7) + 5.0


def test_diurnal_minimum_at_sunrise_maximum_mid_afternoon():
    assert diurnal_shape(6.0, 6.0) == -1.0 and diurnal_shape(15.0, 6.0) == 1.0
    assert diurnal_shape(0.0, 6.0) == pytest.approx(diurnal_shape(24.0, 6.0))
    hours = [h / 10 for h in range(240)]
    assert min(hours, key=lambda h: diurnal_shape(h, 5.0)) == pytest.approx(5.0)


def test_household_load_matches_annual_energy_and_daily_shape():
    household = Household(site())
    start, step = utc(2023, 1, 1), 1800.0
    by_hour = [0.0] * 24
    total_kwh = 0.0
    for i in range(int(365 * 86400 / step)):
        local = local_time(start + i * step, household.tz)
        watts = household.load.power_w(start + i * step, local)
        total_kwh += watts * step / 3.6e6
        by_hour[int(local.hour)] += watts
    assert total_kwh == pytest.approx(4000.0, rel=0.05)
    assert by_hour[19] > 1.8 * by_hour[3] and by_hour[8] > by_hour[3]
    assert all(len(a.starts_per_hour) == 24 for a in APPLIANCES)


def test_reading_types_and_unknown_devices():
    assert {build_model(site(), n).step(build_model(site(), n).initial_state(), utc(2024, 1, 1), 1.0)[1].type
            for n in NAMES} == {"c8ysim_PvInverter", "c8ysim_HeatPump", "c8ysim_GridMeter"}
    with pytest.raises(KeyError):
        build_model(site(), "nope")
    odd = Site(52.5, 13.4, "Europe/Berlin", 1, devices=(DeviceSpec("battery", "b"),))
    with pytest.raises(ValueError):
        build_model(odd, "b")


def test_step_is_fast():
    model = build_model(site(), "meter")
    state, t = model.initial_state(), utc(2024, 3, 1, 9)
    started = time.perf_counter()
    for i in range(1000):
        state, _ = model.step(state, t + i, 1.0)
    assert (time.perf_counter() - started) / 1000 < 0.005  # ~0.15 ms on a laptop


ALLOWED_IMPORTS = {"__future__", "typing", "math", "hashlib", "_blake2", "functools", "datetime",
                   "zoneinfo", "importlib"}
LEAF_MODULES = ("c8ysim.kinds", "c8ysim.site")  # plain data the models may read


def test_sim_is_pure_no_clock_io_or_global_random_no_outside_imports():
    for path in SIM_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id not in {"open", "print", "input"}, path.name
                if isinstance(node, ast.Attribute) and node.attr in {"now", "utcnow", "today"}:
                    raise AssertionError(f"{path.name} reads the clock")
                continue
            for name in names:
                allowed = (name.startswith("c8ysim.sim") or name in LEAF_MODULES
                           or name.split(".")[0] in ALLOWED_IMPORTS)
                assert allowed, (path.name, name)
