"""Measurements as tests read them, and the measurement checker rules.

Owns the meaning of measurement payloads: turning a valid SmartREST
measurement line (200, 201, 210-212) into a plain dict for
``FakeTenant.measurements``, checker rule 9 for JSON measurements, and the
unit rules a dashboard relies on (``unit_problems``, ``unit_changes``):

* one unit per fragment: Cumulocity draws one chart per fragment, so every
  series of a fragment shares its unit (ref §4.1);
* except the sensor library's energy fragments (ref §4.3), which by
  definition carry registers and powers side by side; there each series
  family has exactly the library's unit (A± kWh, P± W, Ri±/Rc± kVArh,
  Qi±/Qc± kVAr, with or without a phase suffix ``:1``..``:3``), and a series
  the library does not define is a problem;
* a series appears at most once per measurement, and keeps its unit from one
  measurement to the next (a chart has one axis per unit).

The platform itself stores whatever it is sent; these rules are stricter, as a
dashboard built on the data would need them to be.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from .smartrest import strip_trailing_empty
from .templates import check_arguments, is_iso_time

_SIMPLE_MEASUREMENTS = {
    "210": [("c8y_SignalStrength", "rssi", "dBm"), ("c8y_SignalStrength", "ber", "%")],
    "211": [("c8y_TemperatureMeasurement", "T", "C")],
    "212": [("c8y_Battery", "level", "%")],
}


def measurement_from_fields(fields: list[str]) -> dict[str, Any] | None:
    """Turn a valid measurement line into a dict; None for anything else.

    ``{"template", "type", "time" (str or None), "series": [{"fragment",
    "series", "value" (float), "unit"}]}``
    """
    template = fields[0] if fields else ""
    if template not in ("200", "201", "210", "211", "212"):
        return None
    args = strip_trailing_empty(fields)[1:]
    if check_arguments(int(template), args) is not None:
        return None
    if template == "201":
        return _from_201(args)
    if template == "200":
        return _from_200(args)
    return _from_simple(template, args)


def _from_201(args: list[str]) -> dict[str, Any]:
    rest = args[2:]
    groups = [rest[i:i + 4] + [""] * (4 - len(rest[i:i + 4]))
              for i in range(0, len(rest), 4)]
    return {"template": "201", "type": args[0],
            "time": args[1] if len(args) > 1 and args[1] else None,
            "series": [_series(*g) for g in groups]}


def _from_200(args: list[str]) -> dict[str, Any]:
    padded = args + [""] * (5 - len(args))
    return {"template": "200", "type": padded[0], "time": padded[4] or None,
            "series": [_series(*padded[:4])]}


def _from_simple(template: str, args: list[str]) -> dict[str, Any]:
    """210, 211, 212: fixed fragment and series names, then an optional time."""
    specs = _SIMPLE_MEASUREMENTS[template]
    values = args[:len(specs)]
    time_value = args[len(specs)] if len(args) > len(specs) else ""
    series = [_series(frag, name, v, unit)
              for (frag, name, unit), v in zip(specs, values) if v != ""]
    return {"template": template, "type": specs[0][0], "time": time_value or None,
            "series": series}


def _series(fragment: str, series: str, value: str, unit: str) -> dict[str, Any]:
    return {"fragment": fragment, "series": series, "value": float(value), "unit": unit}


def json_measurement_problems(doc: Any) -> list[str]:
    """Checker rule 9 for one JSON measurement."""
    if not isinstance(doc, dict):
        return ["measurement is not a JSON object"]
    problems = []
    if not isinstance(doc.get("type"), str) or not doc["type"]:
        problems.append("measurement without type")
    if not isinstance(doc.get("time"), str) or not is_iso_time(doc["time"]):
        problems.append("measurement time is not ISO 8601 with offset")
    for frag, body in doc.items():
        if not isinstance(body, dict) or frag in ("source", "externalSource"):
            continue
        for series, val in body.items():
            if not _numeric_value(val):
                problems.append(f"{frag}.{series} has no numeric value")
    return problems


def _numeric_value(val: Any) -> bool:
    """``{"value": <int or float, not bool>, ...}``."""
    return (isinstance(val, dict) and not isinstance(val.get("value"), bool)
            and isinstance(val.get("value"), (int, float)))


ENERGY_FRAGMENTS = frozenset({
    "c8y_SinglePhaseEnergyMeasurement", "c8y_ThreePhaseEnergyMeasurement",
    # the spelling of the sensor library's own examples (ref §4.3, §10.4)
    "c8y_SinglePhaseElectricityMeasurement", "c8y_ThreePhaseElectricityMeasurement"})
_ENERGY_SERIES = re.compile(r"^(A|P|Ri|Rc|Qi|Qc)[+-](:[123])?$")
_ENERGY_UNITS = {"A": "kWh", "P": "W", "Ri": "kVArh", "Rc": "kVArh", "Qi": "kVAr", "Qc": "kVAr"}


def unit_problems(measurement: dict[str, Any]) -> list[str]:
    """The unit rules for one measurement (a ``measurement_from_fields`` dict)."""
    problems: list[str] = []
    units: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()
    for item in measurement["series"]:
        fragment, series, unit = item["fragment"], item["series"], item["unit"]
        if (fragment, series) in seen:
            problems.append(f"{fragment}.{series} appears twice")
        seen.add((fragment, series))
        if fragment not in ENERGY_FRAGMENTS:
            units.setdefault(fragment, set()).add(unit)
            continue
        match = _ENERGY_SERIES.match(series)
        if match is None:
            problems.append(f"{fragment}.{series} is not a series of the sensor library")
        elif fragment.startswith("c8y_SinglePhase") and match.group(2):
            problems.append(f"{fragment}.{series}: a phase in a single-phase fragment")
        elif unit != _ENERGY_UNITS[match.group(1)]:
            problems.append(f"{fragment}.{series} in {unit!r}, the sensor library says "
                            f"{_ENERGY_UNITS[match.group(1)]!r}")
    for fragment, found in units.items():
        if len(found) > 1:
            problems.append(f"{fragment} mixes units {sorted(found)}")
    return problems


def unit_changes(measurements: Iterable[dict[str, Any]]) -> list[str]:
    """Series whose unit differs from the one they had in an earlier measurement."""
    first: dict[tuple[str, str], str] = {}
    problems = []
    for measurement in measurements:
        for item in measurement["series"]:
            key = (item["fragment"], item["series"])
            unit = first.setdefault(key, item["unit"])
            if unit != item["unit"]:
                problems.append(f"{key[0]}.{key[1]} changed unit from {unit!r} to {item['unit']!r}")
    return problems
