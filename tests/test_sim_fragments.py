"""What a Cumulocity dashboard sees: every 201 line of every device kind has one unit per
fragment (the sensor library's energy fragments: the library's unit per series family), no
series changes its unit, and the README's measurement table lists exactly what the models
send."""

from __future__ import annotations

import random
import re
from datetime import datetime, timezone

import pytest

from c8ysim.kinds import KINDS
from c8ysim.sim import DeviceSpec, Site, build_model
from c8ysim.uplink import smartrest
from conftest import REPO
from fake_tenant.measurements import measurement_from_fields, unit_changes, unit_problems
from fake_tenant.smartrest import parse_smartrest

# Every variant of every kind: single- and three-phase PV and heat pump.
DEVICES = (DeviceSpec("pv", "pv-1p"),
           DeviceSpec("pv", "pv-3p", (("peak_kw", 9.0), ("inverter_kw", 8.0))),
           DeviceSpec("heatpump", "hp-3p"),
           DeviceSpec("heatpump", "hp-1p", (("phases", 1.0), ("phase", 3.0))),
           DeviceSpec("grid", "meter"))
SITE = Site(48.14, 11.58, "Europe/Berlin", 99, devices=DEVICES)
YEAR = datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()
README_TABLE = re.compile(r"^\| `(c8ysim_\w+)` .*$", re.M)


def sampled_readings(name: str, count: int = 400, seed: int = 5):
    """The device's readings at `count` random times of a year (with their state carried)."""
    model = build_model(SITE, name)
    state = model.initial_state()
    times = sorted(YEAR + random.Random(seed).random() * 365 * 86400 for _ in range(count))
    for t in times:
        state, reading = model.step(state, t, 30.0)
        yield reading


def as_measurement(reading) -> dict:
    """The reading as the fake tenant parses its 201 line."""
    (line,) = parse_smartrest(smartrest.measurement(reading))
    measurement = measurement_from_fields(line.fields)
    assert measurement is not None, line.raw  # a valid 201 line
    return measurement


def test_kinds_cover_the_registry():
    assert {spec.kind for spec in DEVICES} == set(KINDS)


@pytest.mark.parametrize("name", [spec.name for spec in DEVICES])
def test_every_201_line_has_one_unit_per_fragment(name):
    measurements = [as_measurement(r) for r in sampled_readings(name)]
    for measurement in measurements:
        assert unit_problems(measurement) == [], measurement
    assert unit_changes(measurements) == []
    fragments = {s["fragment"] for s in measurements[0]["series"]}
    assert len(fragments) >= 3  # charts worth having, not one fragment of everything


def test_the_unit_rule_catches_what_a_dashboard_cannot_draw():
    def problems(*series):
        return unit_problems({"series": [dict(zip(("fragment", "series", "value", "unit"), s))
                                         for s in series]})

    three = "c8y_ThreePhaseEnergyMeasurement"
    assert problems((three, "A+", 1, "kWh"), (three, "P+", 2, "W"), (three, "P-:3", 0, "W")) == []
    assert problems(("c8ysim_HeatPump", "flowTemp", 35, "C"), ("c8ysim_HeatPump", "COP", 3, ""))
    assert problems((three, "A+", 1, "Wh"))
    assert problems((three, "P+:4", 1, "W"))
    assert problems(("c8y_SinglePhaseEnergyMeasurement", "P+:1", 1, "W"))
    assert problems((three, "voltage", 230, "V"))
    assert problems(("c8y_VoltageMeasurement", "voltage", 230, "V"),
                    ("c8y_VoltageMeasurement", "voltage", 231, "V"))
    series = [{"fragment": "f", "series": "s", "value": 1.0, "unit": unit} for unit in ("W", "kW")]
    assert unit_changes([{"series": series[:1]}, {"series": series[1:]}])


def emitted() -> set[tuple[str, str, str, str]]:
    """(kind, fragment, series, unit) of everything the models send, every variant."""
    found = set()
    for spec in DEVICES:
        for reading in sampled_readings(spec.name, count=40):
            found |= {(spec.kind, s.fragment, s.series, s.unit) for s in reading.series}
    return found


def readme_table() -> set[tuple[str, str, str, str]]:
    """The rows of the README's measurement table: | `type` | `fragment` | `series` | unit |;
    `a`, `b` in the series column lists several, `P+:1..3` three phases."""
    rows = set()
    types = {kind.c8y_type: kind.name for kind in KINDS.values()}
    section = REPO.joinpath("README.md").read_text().split("## Measurements", 1)[1]
    for line in README_TABLE.finditer(section.split("\n## ", 1)[0]):
        cells = [c.strip() for c in line.group(0).strip("|").split("|")]
        kind, fragment = types[cells[0].strip("`")], cells[1].strip("`")
        unit = "" if cells[3] in ("", "(none)") else cells[3].strip("`")
        for name in re.findall(r"`([^`]+)`", cells[2]):
            base, _, phases = name.partition(":")
            names = [f"{base}:{n}" for n in (1, 2, 3)] if phases == "1..3" else [name]
            rows |= {(kind, fragment, series, unit) for series in names}
    return rows


def test_the_readme_table_lists_every_fragment_series_and_unit():
    assert readme_table() == emitted()
