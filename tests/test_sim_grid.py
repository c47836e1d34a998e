"""Grid meter: the balance with the other devices, across processes, and its registers."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from c8ysim.sim import DeviceSpec, Site, build_model
from c8ysim.sim.household import Household

REPO = Path(__file__).resolve().parents[1]
SITE = Site(52.52, 13.405, "Europe/Berlin", 1234, household=(("kwh_per_year", 4500.0),),
            devices=(DeviceSpec("pv", "roof", (("peak_kw", 7.0), ("inverter_kw", 5.0))),
                     DeviceSpec("pv", "garage", (("peak_kw", 2.0), ("azimuth_deg", 250.0))),
                     DeviceSpec("heatpump", "hp"), DeviceSpec("grid", "meter")))
TEN_YEARS = (datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp(), 10 * 365.25 * 86400)
FRAGMENT_3P, FRAGMENT_1P = "c8y_ThreePhaseEnergyMeasurement", "c8y_SinglePhaseEnergyMeasurement"


def same_site() -> Site:
    """An equal but separately constructed Site, as another process would build it."""
    return Site(**SITE._asdict())


def random_times(n: int, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [TEN_YEARS[0] + rng.random() * TEN_YEARS[1] for _ in range(n)]


def test_balance_on_unrounded_internals_across_independent_households():
    meter, pv_side, hp_side = Household(SITE), Household(same_site()), Household(same_site())
    exports = 0
    for t in random_times(300):
        grid = meter.snapshot(t)
        pv = sum(p.ac_w for p in pv_side.snapshot(t).pv.values())
        hp = hp_side.snapshot(t).heatpumps["hp"].power_w
        load = Household(same_site()).load.power_w(t, grid.local)
        assert grid.grid_w == load + hp - pv
        exports += grid.grid_w < 0
    assert exports > 10  # sunny hours export


def test_balance_on_emitted_series_of_separately_built_models():
    meter, roof, garage, hp = (build_model(same_site(), n) for n in ("meter", "roof", "garage", "hp"))
    load_side = Household(same_site())
    for t in random_times(150, seed=11):
        _, g = meter.step(meter.initial_state(), t, 1.0)
        p_grid = g.value(FRAGMENT_3P, "P+") - g.value(FRAGMENT_3P, "P-")
        pv = sum(power(m.step(m.initial_state(), t, 1.0)[1], "P-") for m in (roof, garage))
        heat = power(hp.step(hp.initial_state(), t, 1.0)[1], "P+")
        load = load_side.snapshot(t).load_w
        assert p_grid == pytest.approx(load + heat - pv, abs=0.3)  # five 0.1 W roundings
        for n in (1, 2, 3):  # a phase imports or exports, not both
            assert min(g.value(FRAGMENT_3P, f"P+:{n}"), g.value(FRAGMENT_3P, f"P-:{n}")) == 0.0


def power(reading, name: str) -> float:
    """P+ or P- of a reading's energy fragment, single- or three-phase."""
    return reading.value(reading.energy_fragment(), name)


def _readings_json(times: list[float]) -> str:
    out = []
    for name in ("meter", "roof", "hp"):
        model = build_model(same_site(), name)
        for t in times:
            _, reading = model.step(model.initial_state(), t, 30.0)
            out.append([name, t, [(s.fragment, s.series, s.value) for s in reading.series]])
    return json.dumps(out)


def test_another_process_computes_identical_readings():
    times = random_times(8, seed=3)
    script = ("import sys, json; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
              "import test_sim_grid as g; print(g._readings_json(json.loads(sys.argv[3])))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", script, str(REPO), str(Path(__file__).parent),
                             json.dumps(times)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(_readings_json(times))


def test_meter_registers_monotonic_over_a_day_of_10_s_ticks():
    model = build_model(same_site(), "meter")
    state = model.initial_state()
    start = datetime(2024, 5, 14, tzinfo=timezone.utc).timestamp()
    previous = {"A+": 0.0, "A-": 0.0}
    for i in range(1, 8641):
        state, reading = model.step(state, start + i * 10.0, 10.0)
        now = {k: reading.value(FRAGMENT_3P, k) for k in previous}
        assert now["A+"] >= previous["A+"] and now["A-"] >= previous["A-"]
        assert state["registers"]["A+"] >= now["A+"] - 5e-5  # reading = rounded register
        previous = now
    assert previous["A+"] > 1.0 and previous["A-"] > 1.0  # a May day both imports and exports


def test_energy_is_conserved_between_meter_and_devices():
    models = {n: build_model(same_site(), n) for n in ("meter", "roof", "garage", "hp")}
    states = {n: m.initial_state() for n, m in models.items()}
    load_side, load_kwh = Household(same_site()), 0.0
    start = datetime(2024, 3, 2, tzinfo=timezone.utc).timestamp()
    for i in range(1, 1441):  # one day of 60 s ticks
        t = start + i * 60.0
        for name, model in models.items():
            states[name], _ = model.step(states[name], t, 60.0)
        load_kwh += load_side.snapshot(t).load_w * 60.0 / 3.6e6
    grid = states["meter"]["registers"]
    pv = sum(states[n]["registers"]["A-"] for n in ("roof", "garage"))
    assert grid["A+"] - grid["A-"] == pytest.approx(load_kwh + states["hp"]["registers"]["A+"] - pv, abs=1e-6)
    assert states["hp"]["registers"]["A-"] == 0.0 and states["roof"]["registers"]["A+"] == 0.0


def test_backward_clock_jump_and_zero_dt_never_decrease_registers():
    for name in ("meter", "roof", "hp"):
        model = build_model(same_site(), name)
        state = model.initial_state()
        t = datetime(2024, 6, 3, 10, tzinfo=timezone.utc).timestamp()
        for _ in range(30):
            t += 60.0
            state, _ = model.step(state, t, 60.0)
        before = dict(state["registers"])
        assert before["A+"] + before["A-"] > 0.0
        state, _ = model.step(state, t - 3600.0, -3600.0)  # clock jumped back an hour
        assert state["registers"] == before
        state, _ = model.step(state, t - 3590.0, 10.0)  # carries on from the earlier time
        state, _ = model.step(state, t - 3590.0, 0.0)
        assert all(state["registers"][k] >= before[k] for k in before)


def test_fast_forward_integrates_the_day_not_the_current_power():
    model = build_model(same_site(), "meter")
    start = datetime(2024, 4, 20, tzinfo=timezone.utc).timestamp()
    ticked = model.initial_state()
    for i in range(1, 1441):
        ticked, _ = model.step(ticked, start + i * 60.0, 60.0)
    jumped, _ = model.step(model.initial_state(), start + 86400.0, 86400.0)
    for register in ("A+", "A-"):
        assert jumped["registers"][register] == pytest.approx(ticked["registers"][register], rel=0.03)


def test_grid_current_per_phase_and_reading_type():
    model = build_model(SITE, "meter")
    t = datetime(2024, 1, 9, 18, tzinfo=timezone.utc).timestamp()
    _, reading = model.step(model.initial_state(), t, 1.0)
    assert reading.type == "c8ysim_GridMeter"
    for n in (1, 2, 3):
        watts = reading.value(FRAGMENT_3P, f"P+:{n}") + reading.value(FRAGMENT_3P, f"P-:{n}")
        volts = reading.value("c8y_VoltageMeasurement", f"voltage:{n}")
        amps = reading.value("c8y_CurrentMeasurement", f"current:{n}")
        assert amps == pytest.approx(watts / (volts * 0.95), abs=0.01)
