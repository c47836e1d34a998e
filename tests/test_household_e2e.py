"""Across real processes: every device reads at the same wall-clock slots, the grid
child's published value equals load + heat pump - PV from the other children's published
readings at the same timestamp (no IPC between the children), and every 201 line they
publish has one unit per fragment."""

from __future__ import annotations

import time
from datetime import datetime

from c8ysim import config
from c8ysim.sim.household import Household
from conftest import free_port, wait_until, write_config
from fake_tenant.measurements import measurement_from_fields, unit_changes, unit_problems
from fake_tenant.smartrest import parse_smartrest

SIGN = {"c8ysim_PvInverter": -1, "c8ysim_HeatPump": 1, "c8ysim_GridMeter": 1}


def net_power_w(fields: list[str]) -> float:
    """P+ minus P- (the totals, not the phases) of the energy fragment of a 201 line's
    (fragment, series, value, unit) groups."""
    watts = 0.0
    for i in range(3, len(fields) - 2, 4):
        if fields[i].endswith("PhaseEnergyMeasurement") and fields[i + 1] in ("P+", "P-"):
            watts += float(fields[i + 2]) * (1 if fields[i + 1] == "P+" else -1)
    return watts


def by_time(recorder) -> dict[float, dict[str, float]]:
    table: dict[float, dict[str, float]] = {}
    for line in recorder.lines():
        fields = line.split(",")
        if fields[0] == "201" and fields[1] in SIGN:
            t = datetime.fromisoformat(fields[2]).timestamp()
            table.setdefault(t, {})[fields[1]] = SIGN[fields[1]] * net_power_w(fields)
    return table


def test_grid_equals_load_plus_heatpump_minus_pv_across_processes(tmp_path, mosquitto,
                                                                  recorder, agent_factory):
    status_port = free_port()
    path = write_config(tmp_path, mosquitto.port, status_port, interval_s=0.5)
    # Put the site where the sun is high right now, so the PV term is not zero.
    hours_utc = time.time() % 86400 / 3600
    longitude = (12 - hours_utc) * 15
    path.write_text(path.read_text().replace(
        "latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin",
        f"latitude: 20.0, longitude: {longitude:.2f}, timezone: UTC"))
    agent = agent_factory(path, status_port).start()
    complete = lambda: [t for t, row in by_time(recorder).items() if len(row) == 3]  # noqa: E731
    wait_until(lambda: len(complete()) >= 10, 20, what="ten slots read by all three devices")
    assert agent.stop() == 0

    household = Household(config.load(str(path)).site)
    for t in complete():
        row = by_time(recorder)[t]
        pv_w, hp_w, grid_w = (row["c8ysim_PvInverter"], row["c8ysim_HeatPump"],
                              row["c8ysim_GridMeter"])
        load_w = grid_w - hp_w + pv_w  # what the three published readings imply
        assert abs(load_w - household.snapshot(t).load_w) <= 0.3, (t, row)
    assert any(by_time(recorder)[t]["c8ysim_PvInverter"] > 100 for t in complete())
    slots = sorted(by_time(recorder))
    assert all(abs((t * 2) - round(t * 2)) < 1e-6 for t in slots)  # on the 0.5 s grid

    measurements: dict[str, list] = {}
    for line in recorder.lines():
        if line.startswith("201,"):
            (parsed,) = parse_smartrest(line)
            measurement = measurement_from_fields(parsed.fields)
            assert measurement is not None and unit_problems(measurement) == [], line
            measurements.setdefault(measurement["type"], []).append(measurement)
    assert set(measurements) == set(SIGN)
    assert all(unit_changes(found) == [] for found in measurements.values())
