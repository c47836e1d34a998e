"""The three-phase house connection: exact per-phase sums, P = V I pf on every phase, the
per-phase balance across devices, a meter that does not net across phases, and a
plausible phase imbalance from single-phase loads and a single-phase inverter."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c8ysim.sim import DeviceSpec, Site, build_model
from c8ysim.sim.devices import POWER_FACTOR
from c8ysim.sim.household import Household
from c8ysim.sim.phases import exact_parts, meter_flows

THREE = "c8y_ThreePhaseEnergyMeasurement"
SITE = Site(52.52, 13.405, "Europe/Berlin", 4321, household=(("kwh_per_year", 4500.0),),
            devices=(DeviceSpec("pv", "roof"),  # 4.6 kW: single-phase on L1
                     DeviceSpec("pv", "barn", (("peak_kw", 10.0), ("inverter_kw", 8.0))),
                     DeviceSpec("heatpump", "hp"),  # three-phase
                     DeviceSpec("grid", "meter")))
KIND = {spec.name: spec.kind for spec in SITE.devices}
START = datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()


def random_times(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return sorted(START + rng.random() * 365 * 86400 for _ in range(n))


def readings_at(t: float) -> dict:
    """Every device's reading at t, each from its own model (as the children compute them)."""
    out = {}
    for spec in SITE.devices:
        model = build_model(SITE, spec.name)
        out[spec.name] = model.step(model.initial_state(), t, 10.0)[1]
    return out


def units(watts: float) -> int:
    return round(watts * 10)  # 0.1 W


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 1e7), st.just(0.0), st.floats(0.0, 1.0)), min_size=1,
                max_size=3))
def test_exact_parts_add_up_to_the_correctly_rounded_total(parts):
    total, rounded = exact_parts(parts, 1)
    assert round(total * 10) == round(sum(parts) * 10) == sum(round(p * 10) for p in rounded)
    assert all(abs(r - p) < 0.1 + 1e-9 * p for r, p in zip(rounded, parts))


def test_three_phase_sums_are_exact_and_a_phase_never_imports_and_exports():
    both = 0
    for t in random_times(250, seed=1):
        for name, reading in readings_at(t).items():
            energy = reading.fragment(THREE)
            if not energy:
                continue
            for sign in ("P+", "P-"):
                if sign in energy:
                    assert units(energy[sign]) == sum(units(energy[f"{sign}:{n}"]) for n in (1, 2, 3))
            if name == "meter":
                assert all(min(energy[f"P+:{n}"], energy[f"P-:{n}"]) == 0.0 for n in (1, 2, 3))
                both += energy["P+"] > 0.0 and energy["P-"] > 0.0
    assert both > 5  # imports on one phase while it exports on another: no netting


def test_every_phase_obeys_p_equals_v_i_pf():
    checked = 0
    for t in random_times(200, seed=2):
        for name, reading in readings_at(t).items():
            volts, amps = reading.fragment("c8y_VoltageMeasurement"), reading.fragment("c8y_CurrentMeasurement")
            energy = reading.fragment(reading.energy_fragment())
            pf = POWER_FACTOR[KIND[name]]
            for suffix in ([""] if "voltage" in volts else [":1", ":2", ":3"]):
                v, i = volts["voltage" + suffix], amps["current" + suffix]
                p = energy.get("P+" + suffix, 0.0) + energy.get("P-" + suffix, 0.0)
                if not suffix and reading.energy_fragment() == THREE:
                    pytest.fail("a three-phase device reports one voltage")
                # rounding: V to 0.1 V, I to 1 mA, P to 0.1 W (a phase share by up to 0.1 W,
                # to add up to the total exactly)
                assert p == pytest.approx(v * i * pf, abs=0.05 * i + 0.0005 * v + 0.101), (name, t, suffix)
                checked += p > 100.0
    assert checked > 300


def test_each_phase_balances_across_the_devices():
    load_side = Household(SITE)
    for t in random_times(150, seed=3):
        readings = readings_at(t)
        grid = readings["meter"].fragment(THREE)
        expected = list(load_side.snapshot(t).phase_load_w)
        roof = readings["roof"].value("c8y_SinglePhaseEnergyMeasurement", "P-")
        expected[0] -= roof  # the single-phase inverter sits on L1
        for n in (1, 2, 3):
            expected[n - 1] += readings["hp"].value(THREE, f"P+:{n}")
            expected[n - 1] -= readings["barn"].value(THREE, f"P-:{n}")
            net = grid[f"P+:{n}"] - grid[f"P-:{n}"]
            assert net == pytest.approx(expected[n - 1], abs=0.25), (t, n)  # four 0.1 W roundings


def test_the_meters_registers_integrate_import_and_export_phase_by_phase():
    model, house = build_model(SITE, "meter"), Household(SITE)
    state = model.initial_state()
    day = datetime(2025, 5, 20, tzinfo=timezone.utc).timestamp()
    imported = exported = net = 0.0
    for i in range(1, 1441):
        t = day + i * 60.0
        state, _ = model.step(state, t, 60.0)
        plus, minus = meter_flows(house.snapshot(t).grid_phase_w)
        imported += plus * 60 / 3.6e6
        exported += minus * 60 / 3.6e6
        net += house.snapshot(t).grid_w * 60 / 3.6e6
    registers = state["registers"]
    assert registers["A+"] == pytest.approx(imported, rel=1e-9)
    assert registers["A-"] == pytest.approx(exported, rel=1e-9)
    assert registers["A+"] - registers["A-"] == pytest.approx(net, abs=1e-6)
    # a phase-netting meter would have counted less of both
    assert imported > max(net, 0.0) + 0.2 and exported > max(-net, 0.0) + 0.2


def test_the_phase_imbalance_is_plausible():
    house = Household(SITE)
    day = datetime(2025, 2, 11, tzinfo=timezone.utc).timestamp()  # a winter day: no export
    loads = [house.snapshot(day + i * 60.0).phase_load_w for i in range(1440)]
    means = [sum(p[n] for p in loads) / len(loads) for n in range(3)]
    assert all(0.15 < m / sum(means) < 0.55 for m in means), means  # every phase is used
    assert max(means) > 1.2 * min(means)  # but not evenly
    spread = [max(p) - min(p) for p in loads]
    assert sum(s > 1500.0 for s in spread) > 10  # a kettle or an oven on one phase
    neutral = [abs(complex(p[0]) + p[1] * complex(-0.5, math.sqrt(3) / 2)
                   + p[2] * complex(-0.5, -math.sqrt(3) / 2)) / 230.0 for p in loads]
    assert 0.5 < sum(neutral) / len(neutral) < 10.0  # amperes in the neutral conductor


def test_a_single_phase_inverter_lifts_its_own_phase():
    house = Household(Site(52.52, 13.405, "Europe/Berlin", 4321, devices=(
        DeviceSpec("pv", "roof", (("phase", 2.0),)), DeviceSpec("grid", "meter"))))
    noon = datetime(2025, 6, 21, 11, tzinfo=timezone.utc).timestamp()
    lifts = []
    for i in range(120):
        snap = house.snapshot(noon + i * 60.0)
        if snap.pv["roof"].ac_w > 2000.0 and not snap.excursion:
            assert snap.grid_phase_w[1] < 0.0  # L2 exports
            v1, v2, v3 = snap.phase_voltage_v
            lifts.append(v2 - (v1 + v3) / 2)
    assert len(lifts) > 30 and sum(lifts) / len(lifts) > 5.0
