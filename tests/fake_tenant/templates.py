"""The static SmartREST templates the tenant knows and their field rules.

Owns checker rules 2 and 3: which template IDs exist (ref §9) and, per
template, how many fields it takes and of what type (ref §3.2).  Pure
functions over already parsed fields; parsing is in ``smartrest``.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Callable

from .limits import ERR_ARGS

TEXT, INT, NUM, FRAG, TIME, BOOL, OPID, SEVERITY = (
    "text", "integer", "number", "fragment name", "ISO 8601 time with offset",
    "boolean", "operation id", "severity")

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUM_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_FRAG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
_TIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str = TEXT
    required: bool = False


@dataclasses.dataclass(frozen=True)
class TemplateSpec:
    fixed: tuple[FieldSpec, ...] = ()
    repeat: tuple[FieldSpec, ...] = ()   # group repeated after the fixed part
    min_groups: int = 0


def _f(name: str, kind: str = TEXT) -> FieldSpec:
    return FieldSpec(name, kind, False)


def _req(name: str, kind: str = TEXT) -> FieldSpec:
    return FieldSpec(name, kind, True)


_ALARM = TemplateSpec((_req("type"), _f("text"), _f("time", TIME)))
_LOCATION = TemplateSpec((_f("latitude", NUM), _f("longitude", NUM),
                          _f("altitude", NUM), _f("accuracy", NUM),
                          _f("time", TIME)))

TEMPLATE_SPECS: dict[int, TemplateSpec] = {
    100: TemplateSpec((_f("deviceName"), _f("deviceType"))),
    101: TemplateSpec((_req("uniqueChildId"), _f("childName"), _f("childType"),
                       _f("childDeviceMarker", BOOL))),
    102: TemplateSpec(tuple(_req(n) for n in (
        "serviceExternalId", "serviceType", "serviceName", "serviceStatus"))),
    104: TemplateSpec((_req("serviceStatus"),)),
    105: TemplateSpec(),
    107: TemplateSpec(repeat=(_req("fragment", FRAG),), min_groups=1),
    110: TemplateSpec((_f("serialNumber"), _f("model"), _f("revision"))),
    111: TemplateSpec(tuple(_f(n) for n in (
        "imei", "iccid", "imsi", "mcc", "mnc", "lac", "cellId"))),
    112: TemplateSpec((_f("latitude", NUM), _f("longitude", NUM),
                       _f("altitude", NUM), _f("accuracy", NUM))),
    113: TemplateSpec((_f("configuration"),)),
    114: TemplateSpec(repeat=(_req("operation", FRAG),)),
    115: TemplateSpec((_f("name"), _f("version"), _f("url"))),
    116: TemplateSpec(repeat=(_req("name"), _f("version"), _f("url"))),
    117: TemplateSpec((_req("requiredInterval", INT),)),
    118: TemplateSpec(repeat=(_req("logType"),)),
    119: TemplateSpec(repeat=(_req("configType"),)),
    120: TemplateSpec((_f("configType"), _f("url"), _f("fileName"),
                       _f("time", TIME))),
    121: TemplateSpec((_req("profileExecuted", BOOL), _f("profileId"))),
    122: TemplateSpec((_req("agentName"), _req("agentVersion"), _f("agentUrl"),
                       _req("maintainer"))),
    123: TemplateSpec(),
    125: TemplateSpec(),
    200: TemplateSpec((_req("fragment", FRAG), _req("series"), _req("value", NUM),
                       _f("unit"), _f("time", TIME))),
    201: TemplateSpec((_req("type"), _f("time", TIME)),
                      repeat=(_req("fragment", FRAG), _req("series"),
                              _req("value", NUM), _f("unit")),
                      min_groups=1),
    210: TemplateSpec((_req("rssi", NUM), _f("ber", NUM), _f("time", TIME))),
    211: TemplateSpec((_req("temperature", NUM), _f("time", TIME))),
    212: TemplateSpec((_req("battery", NUM), _f("time", TIME))),
    301: _ALARM, 302: _ALARM, 303: _ALARM, 304: _ALARM,
    305: TemplateSpec((_req("type"), _req("severity", SEVERITY))),
    306: TemplateSpec((_req("type"),)),
    307: TemplateSpec((_req("type"),), repeat=(_req("fragment", FRAG),),
                      min_groups=1),
    400: TemplateSpec((_req("type"), _req("text"), _f("time", TIME))),
    401: _LOCATION, 402: _LOCATION,
    407: TemplateSpec((_req("eventType"),), repeat=(_req("fragment", FRAG),)),
    500: TemplateSpec(),
    501: TemplateSpec((_req("fragment", FRAG),)),
    502: TemplateSpec((_req("fragment", FRAG), _f("failureReason"))),
    503: TemplateSpec((_req("fragment", FRAG),), repeat=(_f("parameter"),)),
    504: TemplateSpec((_req("operationId", OPID),)),
    505: TemplateSpec((_req("operationId", OPID), _f("failureReason"))),
    506: TemplateSpec((_req("operationId", OPID),), repeat=(_f("parameter"),)),
    507: TemplateSpec((_f("fragment", FRAG), _f("failureReason"))),
    600: TemplateSpec(),
    602: TemplateSpec(),
}


def known_template(tid: int) -> bool:
    """Checker rule 2: the static template ID ranges of ref §9."""
    return (100 <= tid <= 150 or 200 <= tid <= 212 or 301 <= tid <= 307
            or 400 <= tid <= 408 or 500 <= tid <= 507 or tid in (600, 602))


def is_iso_time(value: str) -> bool:
    """ISO 8601 date-time with an explicit offset (``Z`` or ``+hh:mm``)."""
    if not _TIME_RE.match(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_VALIDATORS: dict[str, Callable[[str], bool]] = {
    INT: lambda v: bool(_INT_RE.match(v)) and -32768 <= int(v) <= 32767,
    NUM: lambda v: bool(_NUM_RE.match(v)),
    FRAG: lambda v: bool(_FRAG_RE.match(v)),
    TIME: is_iso_time,
    BOOL: lambda v: v.lower() in ("true", "false"),
    OPID: str.isdigit,
    SEVERITY: lambda v: v in ("CRITICAL", "MAJOR", "MINOR", "WARNING"),
}


def _check_field(spec: FieldSpec, value: str) -> tuple[str, str] | None:
    """Return (s/e text, detail) if ``value`` does not satisfy ``spec``."""
    if value == "":
        if spec.required:
            return ERR_ARGS, f"missing mandatory {spec.name}"
        return None
    if not _VALIDATORS.get(spec.kind, lambda v: True)(value):
        return (f"Value is not a valid {spec.kind}",
                f"{spec.name}={value!r} is not a valid {spec.kind}")
    return None


def _check_fields(specs: tuple[FieldSpec, ...],
                  values: list[str]) -> tuple[str, str] | None:
    """The first problem of ``values`` against ``specs`` (missing = empty)."""
    for pos, spec in enumerate(specs):
        problem = _check_field(spec, values[pos] if pos < len(values) else "")
        if problem:
            return problem
    return None


def check_arguments(tid: int, args: list[str]) -> tuple[str, str] | None:
    """Checker rule 3: field count and field types of a known template."""
    spec = TEMPLATE_SPECS.get(tid)
    if spec is None:
        return None
    fixed = spec.fixed
    if not spec.repeat and len(args) > len(fixed):
        return ERR_ARGS, f"{len(args)} arguments, at most {len(fixed)} allowed"
    problem = _check_fields(fixed, args)
    if problem:
        return problem
    rest = args[len(fixed):]
    size = len(spec.repeat)
    groups = [rest[i:i + size] for i in range(0, len(rest), size)] if size else []
    if len(groups) < spec.min_groups:
        return ERR_ARGS, f"needs at least {spec.min_groups} group(s) of {size}"
    for group in groups:
        problem = _check_fields(spec.repeat, group)
        if problem:
            return problem
    return None
