"""SmartREST 2.0 static templates: encoding upstream lines and decoding downstream payloads.

Owns everything about the SmartREST text format and nothing about MQTT sessions:
topic names, the CSV field quoting, one function per static template c8ysim publishes
(100, 110, 112, 114, 117, 201, 301-304, 306, 400, 500-503), a reading as its lines, ISO 8601
timestamps, and the quote-aware parser for `s/ds` / `s/e` payloads (see the protocol
reference, cumulocity-mqtt-reference.md in the shared docs, §2.5, §3, §9).

Escaping (reference §3.1, §10.1). Upstream, a field containing `,` `"` CR LF TAB or
leading/trailing whitespace is wrapped in double quotes and an embedded `"` is doubled
(`""`, as thin-edge and c8ydm send). Downstream the platform writes `\\"`, so the parser
accepts both. To keep the two unambiguous a backslash run *directly before a `"` or at the
end of a quoted field* is doubled on output and halved on input (the MSVC argv rule);
backslashes anywhere else are literal (`\\n` stays backslash + n). Hence
`parse(line(id, *fields)) == [[str(id), *fields]]` for any text fields (trailing empties
dropped). Text is encoded as UTF-8 with errors="replace" everywhere.

Standard library only. Readings, alarms and events are read by their attributes (the
`c8ysim.sim` value types, or anything shaped like them): this module imports nothing of the
agent.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import NamedTuple

UPSTREAM_TOPIC = "s/us"
OPERATIONS_TOPIC = "s/ds"
ERRORS_TOPIC = "s/e"

MAX_PAYLOAD_BYTES = 16000  # our limit per publish (thin-edge uses the same)
MAX_REASON_BYTES = 500  # failure reasons (502/507) are truncated to this many UTF-8 bytes

ALARM_TEMPLATES = {"CRITICAL": 301, "MAJOR": 302, "MINOR": 303, "WARNING": 304}
# Downstream templates that carry no device external ID after the template ID.
NO_DEVICE_TEMPLATES = frozenset({106, 601, 603})

_NEEDS_QUOTES = re.compile(r'[,"\r\n\t]')
_BACKSLASHES_BEFORE_QUOTE = re.compile(r'(\\+)(?="|\Z)')
_UNQUOTED = re.compile(r"(?:[^,\r\n]|\r(?!\n|\Z))*+")
_QUOTED = re.compile(
    r'"((?:[^"\\]++|\\++(?![\\"])|(?:\\\\)*+(?:\\"|""))*+)((?:\\\\)*+)("?)'
)
_ESCAPE = re.compile(r'((?:\\\\)*+)(?:\\"|"")')
_SEPARATOR = re.compile(r",|\r?\n|\r?\Z")
_TEMPLATE_ID = re.compile(r"0|[1-9][0-9]*")  # "0510" is not template 510
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# --- fields and lines ------------------------------------------------------------------


def quote(value: object) -> str:
    """One upstream CSV field: None -> "", bools true/false, numbers compact, text quoted
    when it contains , " CR LF TAB or edge whitespace (embedded `"` doubled)."""
    if value is None:
        return ""
    kind = type(value)
    if kind is float:  # the common case: a reading's values
        return format_number(value)
    if kind is str and len(value) <= CACHED_TEXT_CHARS:  # fragments, series, units, types
        return _quoted_text(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_number(value)
    return _quote_text(str(value))


# A reading repeats the same few dozen names and units in every line: their quoting is
# remembered (at most this many, up to this length each).
CACHED_TEXT_CHARS = 64
CACHED_TEXTS = 512


def _quote_text(text: str) -> str:
    if not _NEEDS_QUOTES.search(text) and text == text.strip():
        return text
    text = _BACKSLASHES_BEFORE_QUOTE.sub(lambda m: m[1] * 2, text)
    return '"' + text.replace('"', '""') + '"'


_quoted_text = lru_cache(maxsize=CACHED_TEXTS)(_quote_text)


def format_number(value: float) -> str:
    """Shortest round-tripping decimal without exponent (230.5, 0.0012, 1234 for 1234.0);
    exponent form only for magnitudes outside 1e-15..1e21. Raises ValueError on NaN/inf."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    if value == 0:
        return "0"
    text = float.__repr__(value)  # shortest round trip; exponent below 1e-4 and from 1e16
    if "e" not in text:
        return text[:-2] if text.endswith(".0") else text
    if not 1e-15 <= abs(value) < 1e21:
        return text
    from decimal import Decimal  # rare (|value| < 1e-4 or >= 1e16): not loaded otherwise

    text = format(Decimal(text), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def line(template_id: int, *fields: object) -> str:
    """One SmartREST line (no newline): the template ID then the quoted fields, with
    trailing empty fields dropped ("100,," -> "100")."""
    if isinstance(template_id, bool) or not isinstance(template_id, int):
        raise TypeError(f"template id must be an int, got {template_id!r}")
    parts = [str(template_id), *map(quote, fields)]
    while len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return ",".join(parts)


def iso_time(epoch_s: float) -> str:
    """UTC ISO 8601 with milliseconds, e.g. "2026-11-29T19:20:00.123+00:00".

    Rounds the exact binary value of `epoch_s` to the nearest millisecond (ties to even)
    in integer arithmetic, so 0.9996 s becomes 1.000 with the second carried. Raises
    ValueError for NaN/inf and OverflowError outside years 1..9999."""
    if not math.isfinite(epoch_s):
        raise ValueError(f"not a finite time: {epoch_s!r}")
    numerator, denominator = float(epoch_s).as_integer_ratio()  # exact; a power of two below
    millis, rest = divmod(numerator * 1000, denominator)
    if 2 * rest > denominator or (2 * rest == denominator and millis % 2):
        millis += 1
    moment = _EPOCH + timedelta(milliseconds=millis)
    return moment.isoformat(timespec="milliseconds")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="replace")


def _truncate(text: str | None, limit: int = MAX_REASON_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes without splitting a character."""
    data = _encode(text or "")
    if len(data) <= limit:
        return text or ""
    return data[:limit].decode("utf-8", errors="ignore")


# --- static templates (upstream, s/us) ---------------------------------------------------


def device_creation(name: str | None, type: str | None) -> str:
    """100: create the device if missing (name/type optional)."""
    return line(100, name, type)


def hardware(serial: str | None, model: str | None, revision: str | None) -> str:
    """110: c8y_Hardware."""
    return line(110, serial, model, revision)


def position(latitude: float, longitude: float, altitude: float | None = None) -> str:
    """112: c8y_Position (the device's place on Cockpit's map)."""
    return line(112, float(latitude), float(longitude),
                None if altitude is None else float(altitude))


def supported_operations(*fragments: str) -> str:
    """114: replace c8y_SupportedOperations (send the full list every time)."""
    return line(114, *fragments)


def configuration(text: str) -> str:
    """113: the device's configuration text (Cumulocity's Configuration tab)."""
    return line(113, text)


def required_interval(minutes: int) -> str:
    """117: c8y_RequiredAvailability in whole minutes (0 = maintenance)."""
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise TypeError(f"required interval must be whole minutes, got {minutes!r}")
    return line(117, minutes)


def get_pending_operations() -> str:
    """500: ask the platform to re-send all PENDING operations."""
    return line(500)


def operation_executing(fragment: str) -> str:
    """501: oldest PENDING operation of `fragment` -> EXECUTING."""
    return line(501, fragment)


def operation_failed(fragment: str, reason: str | None) -> str:
    """502: oldest EXECUTING operation of `fragment` -> FAILED; reason cut to 500 bytes."""
    return line(502, fragment, _truncate(reason))


def operation_successful(fragment: str, *params: object) -> str:
    """503: oldest EXECUTING operation of `fragment` -> SUCCESSFUL, with result params."""
    return line(503, fragment, *params)


def alarm(alarm, time: float | None = None) -> str:
    """301-304 by severity: type, text, time (None = server time; empty text = default)."""
    template = ALARM_TEMPLATES.get(alarm.severity.upper())
    if template is None:
        raise ValueError(f"unknown alarm severity {alarm.severity!r}")
    return line(template, alarm.type, alarm.text, _time(time))


def clear_alarm(type: str) -> str:
    """306: clear the active alarm of `type`."""
    return line(306, type)


def event(event, time: float | None = None) -> str:
    """400: type, text, time (None = server time)."""
    return line(400, event.type, event.text, _time(time))


def measurement(reading) -> str:
    """201: type, time, then fragment, series, value, unit for every series, in order.
    Raises ValueError for a reading without series (the platform rejects it)."""
    if not reading.series:
        raise ValueError(f"reading of type {reading.type!r} has no series")
    fields: list[object] = [reading.type, iso_time(reading.time)]
    for item in reading.series:
        fields += [item.fragment, item.series, item.value, item.unit]
    return line(201, *fields)


def reading_lines(reading) -> list[str]:
    """Everything one reading says, in order: its measurement (201), the alarms it raises
    (301-304) and clears (306), and its events (400), all at the reading's time."""
    lines = [measurement(reading)]
    lines += [alarm(raised, reading.time) for raised in reading.alarms_raised]
    lines += [clear_alarm(alarm_type) for alarm_type in reading.alarms_cleared]
    lines += [event(happened, reading.time) for happened in reading.events]
    return lines


def _time(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else iso_time(epoch_s)


# --- downstream parsing (s/ds, s/e) ------------------------------------------------------


def parse(payload: bytes | bytearray | memoryview | str) -> list[list[str]]:
    """Split a downstream payload into lines of fields; never raises.

    Lines end at LF or CRLF outside quotes (a lone CR is data). A field starting with `"`
    is quoted: it may hold commas and raw newlines; `""` and `\\"` both yield `"` (see the
    module doc for backslash runs); text after its closing quote is kept literally; an
    unterminated quote takes the rest of the payload. Empty lines (`[""]`) are skipped.
    Invalid UTF-8 is decoded with U+FFFD replacement characters."""
    text = payload if isinstance(payload, str) else bytes(payload).decode("utf-8", "replace")
    rows: list[list[str]] = []
    fields: list[str] = []
    pos = 0
    while True:
        value, pos = _field(text, pos)
        fields.append(value)
        separator = _SEPARATOR.match(text, pos)
        pos = separator.end()
        if separator[0] != ",":
            if fields != [""]:
                rows.append(fields)
            fields = []
            if pos >= len(text):
                return rows


def _field(text: str, pos: int) -> tuple[str, int]:
    """The field starting at `pos` and the position just after it (before the separator)."""
    value = ""
    if text.startswith('"', pos):
        quoted = _QUOTED.match(text, pos)
        value = _unescape(quoted[1]) + "\\" * (len(quoted[2]) // 2)
        pos = quoted.end()
    rest = _UNQUOTED.match(text, pos)
    return value + rest[0], rest.end()


def _unescape(body: str) -> str:
    """Decode a quoted field's body: `""` and odd backslash runs + `"` become `"`."""
    return _ESCAPE.sub(lambda m: "\\" * (len(m[1]) // 2) + '"', body)


class Operation(NamedTuple):
    """One downstream line: template ID, target device external ID, remaining fields.

    For the templates without a device field (106, 601, 603) `external_id` is "" and
    `fields` holds everything after the template ID. For 124 the reference shows both
    `124,<xid>,<moId>` and `124,<moId>`; it is parsed generically, callers decide."""

    template: int
    external_id: str
    fields: tuple[str, ...]


def split_operations(payload: bytes | str) -> tuple[list[Operation], list[list[str]]]:
    """`parse(payload)` sorted into operations and rejected lines (first field not an
    ASCII integer, or no device field for a template that needs one), both in order."""
    operations: list[Operation] = []
    rejected: list[list[str]] = []
    for fields in parse(payload):
        operation = _operation(fields)
        if operation is None:
            rejected.append(fields)
        else:
            operations.append(operation)
    return operations, rejected


def _operation(fields: list[str]) -> Operation | None:
    if not _TEMPLATE_ID.fullmatch(fields[0]):
        return None
    template = int(fields[0])
    if template in NO_DEVICE_TEMPLATES:
        return Operation(template, "", tuple(fields[1:]))
    if len(fields) < 2:
        return None
    return Operation(template, fields[1], tuple(fields[2:]))
