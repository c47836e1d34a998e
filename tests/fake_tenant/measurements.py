"""Measurements as tests read them, and the JSON measurement checker rule.

Owns the meaning of measurement payloads: turning a valid SmartREST
measurement line (200, 201, 210-212) into a plain dict for
``FakeTenant.measurements``, and checker rule 9 for JSON measurements.
"""

from __future__ import annotations

from typing import Any

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
