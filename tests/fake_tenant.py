"""A strict, Cumulocity-like fake tenant for testing c8ysim over real MQTT.

``FakeTenant`` is a small MQTT 3.1.1 server (standard-library asyncio, running
in a background thread) that behaves like Cumulocity IoT *Core MQTT* as
described in ``/work/shared/docs/cumulocity-mqtt-reference.md`` (cited as
"ref §n" below) and records everything each client does, so tests can assert
on what the agent published and on a list of protocol/checker violations.

It deliberately shares no code with ``c8ysim/``: the SmartREST parser and the
MQTT codec here are independent so that a bug in the agent's implementation
is not mirrored by the checker.

Usage from synchronous pytest code::

    with FakeTenant() as tenant:            # listens on 127.0.0.1:<tenant.port>
        ...run the agent / a paho client against it...
        assert tenant.wait_for(lambda: tenant.lines("pv-1"))
        assert tenant.violations == []

Connection rules (ref §1):

* protocol level must be 4 / "MQTT" (3.1.1); anything else -> CONNACK 1
  (paho's ``MQTTv31`` included, although real Core MQTT also takes 3.1);
* client ID ``<dev>``, ``d:<dev>`` or ``d:<dev>:<xid>``; empty IDs, other
  prefixes or extra colons -> CONNACK 2.  Everything is keyed by the device
  part, so ``records("d:abc")`` and ``records("abc")`` are the same client;
* clean session must be 1.  The doc gives no code for Core; the fake answers
  CONNACK 2 (3.1.1 ties 0x02 to client-ID/session rejection) and records a
  violation, so an agent that sets clean_session=False fails loudly;
* username ``<tenant>/<user>`` and password must match ``credentials``
  (else CONNACK 4); no username or no/empty password -> CONNACK 5 ("not for
  empty password", ref §1.9);
* a second connection with the same device ID knocks the first one off;
* keepalive is enforced: no packet for 1.5 x keepalive closes the connection.

Everything arriving on ``s/us`` (also ``t/``, ``q/``, ``c/`` and child
topics) is parsed and validated; see ``TEMPLATE_SPECS``.  Errors are answered
on ``s/e`` like the platform (40 unknown template, 41 device exists, 42
malformed line, 45 bad arguments) and appended to ``tenant.violations``.

QoS: 0, 1 and 2 are supported in both directions (inbound QoS 2 is processed
on PUBLISH and de-duplicated by packet id until PUBREL).  Downstream messages
go out at the granted subscription QoS.  Subscriptions are only granted for
exact Cumulocity downstream topics (no wildcards).

Not implemented: TLS/WebSocket, certificate auth, bootstrap answers on
``s/dcr``, JWT on ``s/dat``, custom templates (``s/uc``/``s/ut`` publishes are
only recorded), retained messages, persistent sessions, and redelivery of
PENDING operations on subscribe (only ``500`` re-sends them, which is the
strict reading of ref §6.4).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import dataclasses
import json
import re
import struct
import threading
import time
import traceback
from datetime import datetime
from typing import Any, Callable, Iterable

# --------------------------------------------------------------------------
# limits and fixed strings
# --------------------------------------------------------------------------

MAX_MESSAGE_BYTES = 16184          # whole MQTT packet incl. header (ref §5)
WARN_PAYLOAD_BYTES = 16000         # builder limit used by thin-edge (ref §3.1)
MAX_PACKET_BYTES = 1024 * 1024     # memory bound per packet of the fake itself
MAX_WRITE_BUFFER = 1024 * 1024     # close a client that does not read
PLATFORM_VERSION = "1020.0.0"

DEFAULT_USERNAME = "t100/c8ysim"
DEFAULT_PASSWORD = "secret"

ERR_NO_TEMPLATE = "No static template for this message id"
ERR_DEVICE_EXISTS = "Device already existing"
ERR_MALFORMED = "Malformed request line"
ERR_ARGS = "Wrong number of arguments"

# downstream topics a client may subscribe to; the first set needs the device
NEEDS_DEVICE_TOPICS = {"s/ds", "s/dat", "s/dd", "devicecontrol/notifications"}
FREE_TOPICS = {"s/e", "s/dt", "s/dcr", "error"}

SMARTREST_UP = re.compile(r"^([stqc])/us(?:/(.+))?$")
JSON_UP = re.compile(
    r"^(?:[tqc]/)?(measurement/measurements|event/events|alarm/alarms"
    r"|inventory/managedObjects)(/.+)?$")
OTHER_UP = re.compile(r"^(s/ucr|s/uat|s/ud(/.+)?|[stqc]/uc/.+|s/ut/.+)$")

# operation templates on s/ds and the fragment they stand for (ref §3.3)
OPERATION_FRAGMENTS = {
    "510": "c8y_Restart", "511": "c8y_Command", "513": "c8y_Configuration",
    "515": "c8y_Firmware", "516": "c8y_SoftwareList",
    "517": "c8y_MeasurementRequestOperation", "518": "c8y_Relay",
    "519": "c8y_RelayArray", "522": "c8y_LogfileRequest",
    "523": "c8y_CommunicationMode", "524": "c8y_DownloadConfigFile",
    "526": "c8y_UploadConfigFile", "527": "c8y_DeviceProfile",
    "528": "c8y_SoftwareUpdate", "530": "c8y_RemoteAccessConnect",
}


def _known_template(tid: int) -> bool:
    """Checker rule 2: the static template ID ranges of ref §9."""
    return (100 <= tid <= 150 or 200 <= tid <= 212 or 301 <= tid <= 307
            or 400 <= tid <= 408 or 500 <= tid <= 507 or tid in (600, 602))


# --------------------------------------------------------------------------
# SmartREST 2.0 CSV parsing (independent of c8ysim/)
# --------------------------------------------------------------------------

@dataclasses.dataclass
class SrLine:
    """One parsed SmartREST line: field values plus whether each was quoted."""

    raw: str
    fields: list[str]
    quoted: list[bool]
    error: str | None = None

    @property
    def template(self) -> str:
        return self.fields[0] if self.fields else ""


class _LineBuilder:
    """Accumulates characters into fields and fields into lines."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: list[SrLine] = []
        self.start = 0
        self._new_line()

    def _new_line(self) -> None:
        self.fields: list[str] = []
        self.quoted: list[bool] = []
        self.cur: list[str] = []
        self.cur_quoted = False
        self.error: str | None = None

    def end_field(self) -> None:
        self.fields.append("".join(self.cur))
        self.quoted.append(self.cur_quoted)
        self.cur = []
        self.cur_quoted = False

    def end_line(self, end: int) -> None:
        self.end_field()
        raw = self.text[self.start:end]
        if raw != "":
            self.lines.append(SrLine(raw, self.fields, self.quoted, self.error))
        self.start = end + 1
        self._new_line()

    def fail(self, message: str) -> None:
        self.error = self.error or message


def parse_smartrest(text: str) -> list[SrLine]:
    """Split a payload into lines and fields, honouring double quotes.

    Inside quotes ``,`` and newlines are literal and both ``""`` and ``\\"``
    stand for one quote (ref §3.1 / §10.1).  Empty lines are skipped.
    """
    b = _LineBuilder(text)
    state = "start"            # start | plain | quoted | after_quote
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if state == "quoted":
            if ch == "\\" and text[i + 1:i + 2] == '"':
                b.cur.append('"')
                i += 2
                continue
            if ch == '"' and text[i + 1:i + 2] == '"':
                b.cur.append('"')
                i += 2
                continue
            if ch == '"':
                state = "after_quote"
            else:
                b.cur.append(ch)
        elif ch == ",":
            b.end_field()
            state = "start"
        elif ch == "\n":
            b.end_line(i)
            state = "start"
        elif state == "start" and ch == '"':
            b.cur_quoted = True
            state = "quoted"
        else:
            if state == "after_quote":
                b.fail("text after closing quote")
            b.cur.append(ch)
            state = "plain" if state == "start" else state
        i += 1
    if state == "quoted":
        b.fail("unterminated quoted field")
    if b.start < n:
        b.end_line(n)
    return b.lines


def quoting_problems(line: SrLine) -> list[str]:
    """Checker rule 6: unquoted fields must not need quoting."""
    problems = []
    for pos, (value, quoted) in enumerate(zip(line.fields, line.quoted)):
        if quoted or value == "":
            continue
        if '"' in value:
            problems.append(f"field {pos} contains '\"' but is not quoted")
        if "\t" in value or "\r" in value:
            problems.append(f"field {pos} contains TAB/CR but is not quoted")
        if value != value.strip():
            problems.append(f"field {pos} has edge whitespace but is not quoted")
    return problems


# --------------------------------------------------------------------------
# template field specifications (ref §3.2)
# --------------------------------------------------------------------------

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


def _f(name: str, kind: str = TEXT, required: bool = False) -> FieldSpec:
    return FieldSpec(name, kind, required)


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


def is_iso_time(value: str) -> bool:
    """ISO 8601 date-time with an explicit offset (``Z`` or ``+hh:mm``)."""
    if not _TIME_RE.match(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _type_ok(kind: str, value: str) -> bool:
    if kind == INT:
        return bool(_INT_RE.match(value)) and -32768 <= int(value) <= 32767
    if kind == NUM:
        return bool(_NUM_RE.match(value))
    if kind == FRAG:
        return bool(_FRAG_RE.match(value))
    if kind == TIME:
        return is_iso_time(value)
    if kind == BOOL:
        return value.lower() in ("true", "false")
    if kind == OPID:
        return value.isdigit()
    if kind == SEVERITY:
        return value in ("CRITICAL", "MAJOR", "MINOR", "WARNING")
    return True


def _check_field(spec: FieldSpec, value: str) -> tuple[str, str] | None:
    """Return (s/e text, detail) if ``value`` does not satisfy ``spec``."""
    if value == "":
        if spec.required:
            return ERR_ARGS, f"missing mandatory {spec.name}"
        return None
    if not _type_ok(spec.kind, value):
        return (f"Value is not a valid {spec.kind}",
                f"{spec.name}={value!r} is not a valid {spec.kind}")
    return None


def check_arguments(tid: int, args: list[str]) -> tuple[str, str] | None:
    """Checker rule 3: field count and field types of a known template."""
    spec = TEMPLATE_SPECS.get(tid)
    if spec is None:
        return None
    fixed = spec.fixed
    if not spec.repeat and len(args) > len(fixed):
        return ERR_ARGS, f"{len(args)} arguments, at most {len(fixed)} allowed"
    for pos, fspec in enumerate(fixed):
        problem = _check_field(fspec, args[pos] if pos < len(args) else "")
        if problem:
            return problem
    rest = args[len(fixed):]
    size = len(spec.repeat)
    groups = [rest[i:i + size] for i in range(0, len(rest), size)] if size else []
    if len(groups) < spec.min_groups:
        return ERR_ARGS, f"needs at least {spec.min_groups} group(s) of {size}"
    for group in groups:
        for pos, fspec in enumerate(spec.repeat):
            problem = _check_field(fspec, group[pos] if pos < len(group) else "")
            if problem:
                return problem
    return None


def _strip_trailing_empty(fields: list[str]) -> list[str]:
    """``100,,`` is the same as ``100`` (ref §3.1)."""
    out = list(fields)
    while len(out) > 1 and out[-1] == "":
        out.pop()
    return out


def _json_measurement_problems(doc: Any) -> list[str]:
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
            if not isinstance(val, dict) or isinstance(val.get("value"), bool) \
                    or not isinstance(val.get("value"), (int, float)):
                problems.append(f"{frag}.{series} has no numeric value")
    return problems


# --------------------------------------------------------------------------
# MQTT 3.1.1 codec
# --------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = range(1, 8)
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14


class Malformed(Exception):
    """A packet that violates MQTT 3.1.1; the connection gets closed."""


class _Body:
    """Sequential reader over a packet's variable header and payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise Malformed("packet shorter than its fields")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Malformed("string is not valid UTF-8") from exc
        if "\x00" in text:
            raise Malformed("string contains U+0000")
        return text

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def left(self) -> int:
        return len(self.data) - self.pos


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packet(ptype: int, flags: int, body: bytes = b"") -> bytes:
    return bytes([(ptype << 4) | flags]) + _varint(len(body)) + body


def _mqtt_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _ack(ptype: int, pid: int) -> bytes:
    return _packet(ptype, 2 if ptype == PUBREL else 0, struct.pack("!H", pid))


def _publish_packet(topic: str, payload: bytes, qos: int, pid: int | None) -> bytes:
    body = _mqtt_str(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return _packet(PUBLISH, qos << 1, body)


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes, int]:
    """Read one packet: (type, flags, body, total size in bytes)."""
    first = (await reader.readexactly(1))[0]
    length, mult, header = 0, 1, 1
    while True:
        byte = (await reader.readexactly(1))[0]
        header += 1
        length += (byte & 0x7F) * mult
        if not byte & 0x80:
            break
        mult *= 128
        if header > 4:
            raise Malformed("remaining length longer than 4 bytes")
    if length > MAX_PACKET_BYTES:
        raise Malformed(f"packet of {length} bytes exceeds the 1 MiB bound")
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body, header + length


def device_identifier(client_id: str) -> str | None:
    """Device part of ``dev``, ``d:dev`` or ``d:dev:xid`` (ref §1.3)."""
    if not client_id:
        return None
    parts = client_id.split(":")
    if len(parts) == 1:
        return parts[0]
    if parts[0] == "d" and len(parts) in (2, 3) and all(parts[1:]):
        return parts[1]
    return None


def _valid_filter(topic_filter: str) -> bool:
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for pos, level in enumerate(levels):
        if "#" in level and (level != "#" or pos != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


# --------------------------------------------------------------------------
# recorded data
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Record:
    """One thing a client did (or that happened to its connection).

    kind: connect | publish | will | oversize | subscribe | unsubscribe |
          puback | pubrec | pubrel | pubcomp | pingreq | disconnect |
          malformed | drop | sent (outbound PUBLISH, only in ``sent()``)
    time: ``time.monotonic()`` when it was processed.
    session: 1-based number of the accepted connection of this client
             (0 for refused connects and pre-CONNECT events).
    """

    kind: str
    time: float
    session: int
    topic: str | None = None
    payload: bytes | None = None
    qos: int | None = None
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    filters: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    granted: list[int] = dataclasses.field(default_factory=list)
    rc: int | None = None
    accepted: bool = True
    detail: str = ""
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def text(self) -> str:
        return (self.payload or b"").decode("utf-8", "replace")


@dataclasses.dataclass
class Device:
    """A managed object created by ``100`` (or ``add_device``)."""

    id: str
    name: str
    type: str
    mo_id: str
    ready_at: float = 0.0
    hardware: list[str] | None = None
    supported_operations: list[str] | None = None
    required_interval: int | None = None
    agent: list[str] | None = None


@dataclasses.dataclass
class Operation:
    """An operation created with ``send_operation``.

    status: PENDING -> EXECUTING -> SUCCESSFUL | FAILED
    history: list of (status, time.monotonic()).
    """

    id: str
    client_id: str
    fragment: str | None
    line: str
    status: str = "PENDING"
    failure_reason: str | None = None
    result: list[str] = dataclasses.field(default_factory=list)
    deliveries: int = 0
    history: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    def set_status(self, status: str) -> None:
        self.status = status
        self.history.append((status, time.monotonic()))


class _Conn:
    """State of one TCP connection (and, once accepted, one MQTT session)."""

    def __init__(self, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.key = f"<{peer[0]}:{peer[1]}>" if peer else "<unknown>"
        self.accepted = False
        self.session = 0
        self.keepalive = 0
        self.will: tuple[str, bytes, int, bool] | None = None
        self.subs: dict[str, int] = {}
        self.ds_acked = False
        self.sent_500 = False
        self.publishes = 0
        self.rate_limited = False
        self.next_pid = 1
        self.inflight: dict[int, str] = {}   # outbound pid -> "puback" | "pubrec" | "pubcomp"
        self.qos2_in: set[int] = set()
        self.withheld: list[bytes] = []
        self.closed = False
        self.task: asyncio.Task | None = None

    def alloc_pid(self) -> int:
        for _ in range(65535):
            pid = self.next_pid
            self.next_pid = pid % 65535 + 1
            if pid not in self.inflight:
                return pid
        raise RuntimeError("no free packet id")


# --------------------------------------------------------------------------
# the fake tenant
# --------------------------------------------------------------------------

class FakeTenant:
    """Cumulocity-like MQTT server for tests; see the module docstring."""

    def __init__(self, credentials: dict[str, str] | None = None, *,
                 host: str = "127.0.0.1", create_delay: float = 0.0,
                 connect_timeout: float = 10.0) -> None:
        """``credentials`` maps ``"<tenant>/<user>"`` to the password.

        ``create_delay`` (s) makes device creation by ``100`` take effect
        (and its PUBACK be sent) only after that delay, to expose agents that
        do not wait for the PUBACK before subscribing to ``s/ds``.
        """
        self.credentials = dict(credentials or {DEFAULT_USERNAME: DEFAULT_PASSWORD})
        self.host = host
        self.port = 0
        self.create_delay = create_delay
        self.connect_timeout = connect_timeout
        self._records: dict[str, list[Record]] = collections.defaultdict(list)
        self._sent: dict[str, list[Record]] = collections.defaultdict(list)
        self._violations: list[str] = []
        self._warnings: list[str] = []
        self._internal_errors: list[str] = []
        self._devices: dict[str, Device] = {}
        self._ops: dict[str, list[Operation]] = collections.defaultdict(list)
        self._open_501: dict[str, set[str]] = collections.defaultdict(set)
        self._active: dict[str, _Conn] = {}
        self._conns: set[_Conn] = set()
        self._session_count: collections.Counter[str] = collections.Counter()
        self._next_id = 1000
        self._refuse: list[Any] | None = None          # [code, remaining|None]
        self._withhold: set[str] = set()
        self._rate_limit: dict[str, int | None] = {}
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 5.0) -> "FakeTenant":
        """Start the server thread; returns when the port is listening."""
        if self._thread is not None:
            raise RuntimeError("FakeTenant already started")
        self._thread = threading.Thread(target=self._run, name="FakeTenant",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("FakeTenant did not start in time")
        if self._startup_error is not None:
            raise RuntimeError("FakeTenant failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and the listener, join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            self._loop = None
            return
        try:
            loop.call_soon_threadsafe(self._stop_event.set)  # type: ignore[union-attr]
        except RuntimeError:
            pass
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("FakeTenant thread did not stop in time")
        self._loop = None

    def __enter__(self) -> "FakeTenant":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._startup_error = exc
            self._internal_errors.append(traceback.format_exc())
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_event.wait()
        self._stopping = True
        server.close()
        for conn in list(self._conns):
            self._close(conn, "tenant stopped")
        tasks = [c.task for c in self._conns if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        try:
            await asyncio.wait_for(server.wait_closed(), 2.0)
        except TimeoutError:
            pass

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the server thread (all state lives there)."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return fn(*args)
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - re-raised in caller
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:           # loop already closed
            return fn(*args)
        return future.result(timeout=5.0)

    # ------------------------------------------------------------------ queries

    @staticmethod
    def key(client_id: str) -> str:
        """Normalise a client ID to its device part (``d:abc`` -> ``abc``)."""
        return device_identifier(client_id) or client_id

    def records(self, client_id: str) -> list[Record]:
        """Every recorded packet/event of that client, in order."""
        return self._call(lambda: copy.deepcopy(self._records.get(self.key(client_id), [])))

    def sent(self, client_id: str) -> list[Record]:
        """Every PUBLISH the tenant sent to that client (kind ``sent``)."""
        return self._call(lambda: copy.deepcopy(self._sent.get(self.key(client_id), [])))

    def lines(self, client_id: str, topic: str = "s/us") -> list[list[str]]:
        """Fields of every SmartREST line published on ``topic``, in order.

        Includes lines of executed last wills; excludes messages the tenant
        rejected (oversize, rate-limited).  Fields are as sent (unquoted).
        """
        out = []
        for rec in self.records(client_id):
            if rec.kind in ("publish", "will") and rec.accepted and rec.topic == topic:
                out.extend(line.fields for line in parse_smartrest(rec.text))
        return out

    def measurements(self, client_id: str, topic: str = "s/us") -> list[dict[str, Any]]:
        """Valid 200/201/210/211/212 lines as dicts.

        ``{"template", "type", "time" (str or None), "series": [{"fragment",
        "series", "value" (float), "unit"}]}``
        """
        out = []
        for fields in self.lines(client_id, topic):
            meas = _measurement_from_fields(fields)
            if meas is not None:
                out.append(meas)
        return out

    @property
    def violations(self) -> list[str]:
        """Checker-rule and protocol violations, ``"<client>: <text>"``."""
        return self._call(lambda: list(self._violations))

    @property
    def warnings(self) -> list[str]:
        return self._call(lambda: list(self._warnings))

    @property
    def internal_errors(self) -> list[str]:
        """Unexpected exceptions inside the fake itself (should stay empty)."""
        return self._call(lambda: list(self._internal_errors))

    def device(self, client_id: str) -> Device | None:
        return self._call(lambda: copy.deepcopy(self._devices.get(self.key(client_id))))

    def operations(self, client_id: str) -> list[Operation]:
        return self._call(lambda: copy.deepcopy(self._ops.get(self.key(client_id), [])))

    def subscriptions(self, client_id: str) -> dict[str, int]:
        """Granted subscriptions (filter -> QoS) of the live session."""
        def get() -> dict[str, int]:
            conn = self._active.get(self.key(client_id))
            return dict(conn.subs) if conn else {}
        return self._call(get)

    def is_connected(self, client_id: str) -> bool:
        return self._call(lambda: self.key(client_id) in self._active)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0,
                 interval: float = 0.01) -> bool:
        """Poll ``predicate`` until it is truthy; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # ------------------------------------------------------------------ control

    def add_device(self, client_id: str, name: str = "", type: str = "") -> None:
        """Pre-register a device as if it had been created earlier."""
        self._call(self._create_device, self.key(client_id), name, type, 0.0)

    def send_operation(self, client_id: str, line: str) -> Operation:
        """Create an operation (PENDING) and publish ``line`` on ``s/ds``.

        The line is delivered only if the client is connected and subscribed
        to ``s/ds`` (at the granted QoS); otherwise it waits for a ``500``.
        """
        return self._call(self._send_operation, self.key(client_id), line)

    def publish_to(self, client_id: str, topic: str, payload: str | bytes) -> bool:
        """Publish anything to one client if it is subscribed to ``topic``."""
        data = payload.encode() if isinstance(payload, str) else payload
        return self._call(lambda: self._deliver(self._active.get(self.key(client_id)),
                                                topic, data))

    def drop(self, client_id: str) -> bool:
        """Abort the client's TCP connection (no DISCONNECT, will fires)."""
        def do() -> bool:
            conn = self._active.get(self.key(client_id))
            if conn is None:
                return False
            self._close(conn, "dropped by tenant.drop()")
            return True
        return self._call(do)

    def refuse_connects(self, code: int, count: int | None = None) -> None:
        """Answer the next ``count`` connects (None: all) with CONNACK ``code``."""
        if code not in (1, 2, 3, 4, 5):
            raise ValueError("CONNACK refusal codes are 1..5")
        self._call(lambda: setattr(self, "_refuse", [code, count]))

    def accept_connects(self) -> None:
        """Undo ``refuse_connects``."""
        self._call(lambda: setattr(self, "_refuse", None))

    def withhold_puback(self, client_id: str, on: bool) -> None:
        """Receive but do not PUBACK/PUBREC; switching off sends held acks."""
        self._call(self._set_withhold, self.key(client_id), on)

    def disconnect_after_first_message(self, client_id: str,
                                       sessions: int | None = 1) -> None:
        """Rate-limit symptom: the next ``sessions`` sessions (None: all, 0:
        disarm) are closed on their first PUBLISH, which is rejected unacked."""
        def arm() -> None:
            key = self.key(client_id)
            if sessions == 0:
                self._rate_limit.pop(key, None)
            else:
                self._rate_limit[key] = sessions
        self._call(arm)

    # ------------------------------------------------------------------ bookkeeping

    def _record(self, key: str, kind: str, session: int = 0, **fields: Any) -> None:
        self._records[key].append(Record(kind, time.monotonic(), session, **fields))

    def _violation(self, key: str, text: str) -> None:
        self._violations.append(f"{key}: {text}")

    def _warning(self, key: str, text: str) -> None:
        self._warnings.append(f"{key}: {text}")

    def _write(self, conn: _Conn, data: bytes) -> None:
        if conn.closed:
            return
        conn.writer.write(data)
        if conn.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self._close(conn, "client does not read (write buffer > 1 MiB)")

    def _close(self, conn: _Conn, reason: str, *, graceful: bool = False,
               fire_will: bool = True) -> None:
        """Close a connection once; record why and run the will if abnormal."""
        if conn.closed:
            return
        conn.closed = True
        if conn.accepted:
            if not graceful:
                self._record(conn.key, "drop", conn.session, detail=reason)
            if self._active.get(conn.key) is conn:
                del self._active[conn.key]
            if conn.ds_acked and not conn.sent_500:
                self._warning(conn.key, f"session {conn.session} subscribed s/ds "
                              "but never published 500")
            if not graceful and fire_will and conn.will and not self._stopping:
                self._run_will(conn)
        if graceful:
            conn.writer.close()
        else:
            conn.writer.transport.abort()

    # ------------------------------------------------------------------ connection

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        conn.task = asyncio.current_task()
        self._conns.add(conn)
        try:
            await self._read_loop(conn)
        except Malformed as exc:
            self._malformed(conn, str(exc))
        except TimeoutError:
            self._timeout(conn)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._close(conn, "connection closed by client without DISCONNECT")
        except asyncio.CancelledError:
            self._close(conn, "tenant stopped")
        except Exception:  # noqa: BLE001 - never crash the server
            self._internal_errors.append(traceback.format_exc())
            self._close(conn, "internal error in fake tenant")
        finally:
            self._close(conn, "connection ended")
            self._conns.discard(conn)

    async def _read_loop(self, conn: _Conn) -> None:
        while not conn.closed:
            if not conn.accepted:
                timeout: float | None = self.connect_timeout
            else:
                timeout = 1.5 * conn.keepalive if conn.keepalive else None
            ptype, flags, body, size = await asyncio.wait_for(
                _read_packet(conn.reader), timeout)
            if conn.closed:
                return
            self._dispatch(conn, ptype, flags, body, size)

    def _timeout(self, conn: _Conn) -> None:
        if conn.accepted:
            self._violation(conn.key, f"keepalive timeout: nothing received for "
                            f"1.5 x {conn.keepalive} s")
            self._close(conn, "keepalive timeout")
        else:
            self._warning(conn.key, "no CONNECT within connect_timeout")
            self._close(conn, "no CONNECT")

    def _malformed(self, conn: _Conn, reason: str) -> None:
        self._record(conn.key, "malformed", conn.session, detail=reason)
        self._violation(conn.key, f"malformed packet: {reason}")
        self._close(conn, f"malformed packet: {reason}")

    def _dispatch(self, conn: _Conn, ptype: int, flags: int, body: bytes,
                  size: int) -> None:
        expected_flags = 2 if ptype in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
        if ptype != PUBLISH and flags != expected_flags:
            raise Malformed(f"invalid fixed-header flags {flags:#x} for type {ptype}")
        if not conn.accepted:
            if ptype != CONNECT:
                raise Malformed(f"packet type {ptype} before CONNECT")
            self._on_connect(conn, body)
            return
        handlers = {
            PUBLISH: lambda: self._on_publish(conn, flags, body, size),
            PUBACK: lambda: self._on_client_ack(conn, PUBACK, body),
            PUBREC: lambda: self._on_client_ack(conn, PUBREC, body),
            PUBREL: lambda: self._on_pubrel(conn, body),
            PUBCOMP: lambda: self._on_client_ack(conn, PUBCOMP, body),
            SUBSCRIBE: lambda: self._on_subscribe(conn, body),
            UNSUBSCRIBE: lambda: self._on_unsubscribe(conn, body),
            PINGREQ: lambda: self._on_pingreq(conn),
            DISCONNECT: lambda: self._on_disconnect(conn),
        }
        handler = handlers.get(ptype)
        if handler is None:
            raise Malformed(f"packet type {ptype} not allowed from a client")
        handler()

    # ------------------------------------------------------------------ CONNECT

    def _on_connect(self, conn: _Conn, body: bytes) -> None:
        info = _parse_connect(body)
        client_id = info.get("client_id")
        if client_id is not None:
            conn.key = self.key(client_id) or conn.key
        rc, problem = self._connect_decision(info)
        if problem:
            self._violation(conn.key, problem)
        if rc == 0:
            self._accept(conn, info)
        safe_info = {k: v for k, v in info.items() if k not in ("password", "will_payload")}
        self._record(conn.key, "connect", conn.session, rc=rc, info=safe_info)
        self._write(conn, _packet(CONNACK, 0, bytes([0, rc])))
        if rc:
            self._close(conn, f"CONNACK {rc}", graceful=True)

    def _connect_decision(self, info: dict[str, Any]) -> tuple[int, str | None]:
        """CONNACK code (ref §1.9) and an optional violation text."""
        if (info["protocol_name"], info["protocol_level"]) != ("MQTT", 4):
            return 1, (f"protocol {info['protocol_name']!r} level "
                       f"{info['protocol_level']}: only MQTT 3.1.1 is accepted")
        if device_identifier(info["client_id"]) is None:
            return 2, f"client ID {info['client_id']!r} rejected (':' rules, ref §1.3)"
        if not info["clean_session"]:
            return 2, "clean session must be 1 (ref §1.8)"
        if self._refuse is not None:
            code, remaining = self._refuse
            if remaining is not None:
                self._refuse = [code, remaining - 1] if remaining > 1 else None
            return code, None
        username, password = info.get("username"), info.get("password")
        if not username or not password:
            return 5, None
        tenant, _, user = username.partition("/")
        if not tenant or not user or self.credentials.get(username) != password.decode(
                "utf-8", "replace"):
            return 4, None
        return 0, None

    def _accept(self, conn: _Conn, info: dict[str, Any]) -> None:
        old = self._active.get(conn.key)
        if old is not None:
            self._close(old, "session taken over by a new connection")
        self._session_count[conn.key] += 1
        conn.session = self._session_count[conn.key]
        conn.accepted = True
        conn.keepalive = info["keepalive"]
        if info.get("will_topic") is not None:
            conn.will = (info["will_topic"], info["will_payload"], info["will_qos"],
                         info["will_retain"])
        self._active[conn.key] = conn
        if conn.key in self._rate_limit:
            conn.rate_limited = True
            remaining = self._rate_limit[conn.key]
            if remaining is not None:
                if remaining <= 1:
                    del self._rate_limit[conn.key]
                else:
                    self._rate_limit[conn.key] = remaining - 1

    # ------------------------------------------------------------------ PUBLISH

    def _on_publish(self, conn: _Conn, flags: int, body: bytes, size: int) -> None:
        qos, dup, retain = (flags >> 1) & 3, bool(flags & 8), bool(flags & 1)
        if qos == 3:
            raise Malformed("PUBLISH with QoS 3")
        reader = _Body(body)
        topic = reader.string()
        if not topic or "+" in topic or "#" in topic:
            raise Malformed(f"invalid PUBLISH topic {topic!r}")
        pid = reader.u16() if qos else None
        if pid == 0:
            raise Malformed("PUBLISH with packet id 0")
        payload = reader.rest()
        fields = dict(topic=topic, payload=payload, qos=qos, retain=retain, dup=dup,
                      packet_id=pid)
        if size > MAX_MESSAGE_BYTES:
            self._reject_oversize(conn, size, fields)
            return
        if conn.rate_limited and conn.publishes == 0:
            self._record(conn.key, "publish", conn.session, accepted=False,
                         detail="rejected: rate limit exceeded", **fields)
            self._close(conn, "rate limit exceeded (disconnect after first message)")
            return
        conn.publishes += 1
        if qos == 2 and pid in conn.qos2_in:
            self._record(conn.key, "publish", conn.session, accepted=False,
                         detail="QoS 2 duplicate, not processed again", **fields)
            self._send_ack(conn, _ack(PUBREC, pid))
            return
        self._record(conn.key, "publish", conn.session, **fields)
        if len(payload) > WARN_PAYLOAD_BYTES:
            self._warning(conn.key, f"payload of {len(payload)} bytes on {topic} "
                          f"(> {WARN_PAYLOAD_BYTES})")
        delay = self._handle_upstream(conn, topic, payload)
        if qos == 1:
            self._send_ack(conn, _ack(PUBACK, pid), delay)  # type: ignore[arg-type]
        elif qos == 2:
            conn.qos2_in.add(pid)  # type: ignore[arg-type]
            self._send_ack(conn, _ack(PUBREC, pid), delay)  # type: ignore[arg-type]

    def _reject_oversize(self, conn: _Conn, size: int, fields: dict[str, Any]) -> None:
        self._record(conn.key, "oversize", conn.session, accepted=False,
                     detail=f"{size} bytes > {MAX_MESSAGE_BYTES}", **fields)
        self._violation(conn.key, f"message of {size} bytes on {fields['topic']} "
                        f"exceeds {MAX_MESSAGE_BYTES} bytes incl. header")
        self._close(conn, f"message too large ({size} bytes)")

    def _send_ack(self, conn: _Conn, packet: bytes, delay: float = 0.0) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send_ack, conn, packet)
            return
        if conn.closed:
            return
        if conn.key in self._withhold:
            conn.withheld.append(packet)
        else:
            self._write(conn, packet)

    def _set_withhold(self, key: str, on: bool) -> None:
        if on:
            self._withhold.add(key)
            return
        self._withhold.discard(key)
        conn = self._active.get(key)
        if conn is not None:
            held, conn.withheld = conn.withheld, []
            for packet in held:
                self._write(conn, packet)

    def _run_will(self, conn: _Conn) -> None:
        topic, payload, qos, retain = conn.will  # type: ignore[misc]
        self._record(conn.key, "will", conn.session, topic=topic, payload=payload,
                     qos=qos, retain=retain)
        self._handle_upstream(conn, topic, payload)

    def _handle_upstream(self, conn: _Conn, topic: str, payload: bytes) -> float:
        """Validate/apply one upstream message; returns the PUBACK delay."""
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._violation(conn.key, f"payload on {topic} is not UTF-8")
            return 0.0
        match = SMARTREST_UP.match(topic)
        if match:
            return self._handle_smartrest(conn, text, main=match.group(2) is None)
        if JSON_UP.match(topic):
            self._handle_json(conn, topic, text)
        elif not OTHER_UP.match(topic):
            self._violation(conn.key, f"PUBLISH to unsupported topic {topic!r}")
        return 0.0

    def _handle_json(self, conn: _Conn, topic: str, text: str) -> None:
        if not self._device_ready(conn.key):
            self._violation(conn.key, f"JSON on {topic} before the device was "
                            "created with 100")
        try:
            doc = json.loads(text)
        except ValueError:
            self._violation(conn.key, f"invalid JSON on {topic}")
            return
        if topic.endswith("measurement/measurements/create"):
            problems = _json_measurement_problems(doc)
        elif topic.endswith("measurement/measurements/createBulk"):
            items = doc.get("measurements") if isinstance(doc, dict) else None
            problems = ["createBulk without measurements list"] if not isinstance(
                items, list) else [p for m in items for p in _json_measurement_problems(m)]
        else:
            problems = []
        for problem in problems:
            self._violation(conn.key, f"{topic}: {problem}")

    # ------------------------------------------------------------------ SmartREST

    def _handle_smartrest(self, conn: _Conn, text: str, main: bool) -> float:
        delay = 0.0
        created_here = False
        for line in parse_smartrest(text):
            tid = self._validate_line(conn, line)
            if tid is None or not main:
                continue
            args = _strip_trailing_empty(line.fields)[1:]
            if tid == 100:
                if self._device_100(conn, args):
                    created_here = True
                    delay = self.create_delay
                continue
            if not created_here and not self._device_ready(conn.key):
                self._violation(conn.key, f"{line.raw!r} before the device was "
                                "created with 100 (line dropped)")
                continue
            self._apply_line(conn, tid, args)
        return delay

    def _validate_line(self, conn: _Conn, line: SrLine) -> int | None:
        """Checker rules 2, 3, 6; answers on s/e.  Returns the template ID."""
        tpl = line.template
        if line.error:
            self._violation(conn.key, f"{line.raw!r}: {line.error}")
            self._send_error(conn, f"42,{tpl if tpl.isdigit() else ''},{ERR_MALFORMED}")
            return None
        if not tpl.isdigit() or line.quoted[0] or not _known_template(int(tpl)):
            self._violation(conn.key, f"{line.raw!r}: unknown template {tpl!r}")
            self._send_error(conn, f"40,{tpl},{ERR_NO_TEMPLATE}")
            return None
        for problem in quoting_problems(line):
            self._violation(conn.key, f"{line.raw!r}: {problem}")
        tid = int(tpl)
        problem = check_arguments(tid, _strip_trailing_empty(line.fields)[1:])
        if problem:
            answer, detail = problem
            self._violation(conn.key, f"{line.raw!r}: {answer} ({detail})")
            self._send_error(conn, f"45,{tid},{answer}")
            return None
        return tid

    def _device_ready(self, key: str) -> bool:
        device = self._devices.get(key)
        return device is not None and device.ready_at <= time.monotonic()

    def _device_100(self, conn: _Conn, args: list[str]) -> bool:
        """Handle ``100``; True if it created the device."""
        if conn.key in self._devices:
            self._send_error(conn, f"41,100,{ERR_DEVICE_EXISTS}")
            return False
        name = args[0] if args else ""
        dtype = args[1] if len(args) > 1 else ""
        self._create_device(conn.key, name, dtype, self.create_delay)
        return True

    def _create_device(self, key: str, name: str, dtype: str, delay: float) -> None:
        if key in self._devices:
            return
        self._next_id += 1
        self._devices[key] = Device(
            id=key, name=name or f"MQTT Device {key}", type=dtype or "c8y_MQTTDevice",
            mo_id=str(self._next_id), ready_at=time.monotonic() + delay)

    def _apply_line(self, conn: _Conn, tid: int, args: list[str]) -> None:
        device = self._devices[conn.key]
        if tid == 110:
            device.hardware = args
        elif tid == 114:
            device.supported_operations = [a for a in args if a]
        elif tid == 117 and device.required_interval is None:
            device.required_interval = int(args[0])
        elif tid == 122:
            device.agent = args
        elif tid == 123:
            self._deliver(conn, "s/ds", f"124,{device.mo_id}".encode())
        elif tid == 600:
            self._deliver(conn, "s/ds", f"601,{PLATFORM_VERSION}".encode())
        elif tid == 602:
            ids = sorted(TEMPLATE_SPECS)
            self._deliver(conn, "s/ds", ("603," + ",".join(map(str, ids))).encode())
        elif tid == 500:
            self._on_500(conn)
        elif 501 <= tid <= 507:
            self._on_operation_update(conn, tid, args)

    def _send_error(self, conn: _Conn, line: str) -> None:
        self._deliver(conn, "s/e", line.encode())

    # ------------------------------------------------------------------ operations

    def _send_operation(self, key: str, line: str) -> Operation:
        template = line.split(",", 1)[0]
        self._next_id += 1
        op = Operation(id=str(self._next_id), client_id=key,
                       fragment=OPERATION_FRAGMENTS.get(template), line=line)
        op.history.append(("PENDING", time.monotonic()))
        self._ops[key].append(op)
        if self._deliver(self._active.get(key), "s/ds", line.encode()):
            op.deliveries += 1
        return copy.deepcopy(op)

    def _on_500(self, conn: _Conn) -> None:
        """Checker rule 5, then re-send every PENDING operation."""
        if not conn.ds_acked:
            self._violation(conn.key, "500 published before the s/ds subscription "
                            "was acknowledged in this session")
        conn.sent_500 = True
        for op in self._ops.get(conn.key, []):
            if op.status == "PENDING" and self._deliver(conn, "s/ds", op.line.encode()):
                op.deliveries += 1

    def _on_operation_update(self, conn: _Conn, tid: int, args: list[str]) -> None:
        if tid in (501, 502, 503, 507):
            self._check_pairing(conn.key, tid, args[0] if args else "")
        if tid in (501, 502, 503):
            self._update_by_fragment(conn, tid, args)
        elif tid in (504, 505, 506):
            self._update_by_id(conn, tid, args)
        else:
            self._fail_executing(conn.key, args)

    def _check_pairing(self, key: str, tid: int, fragment: str) -> None:
        """Checker rule 4: 501 -> exactly one 502/503 before the next 501."""
        open_set = self._open_501[key]
        if tid == 501:
            if fragment in open_set:
                self._violation(key, f"501,{fragment} while a previous 501,{fragment} "
                                "has no 502/503 yet")
            open_set.add(fragment)
        elif tid in (502, 503):
            if fragment not in open_set:
                self._violation(key, f"{tid},{fragment} without a preceding open "
                                f"501,{fragment}")
            open_set.discard(fragment)
        elif fragment:
            open_set.discard(fragment)
        else:
            open_set.clear()

    def _update_by_fragment(self, conn: _Conn, tid: int, args: list[str]) -> None:
        fragment = args[0]
        wanted = "PENDING" if tid == 501 else "EXECUTING"
        op = next((o for o in self._ops.get(conn.key, [])
                   if o.fragment == fragment and o.status == wanted), None)
        if op is None:
            self._warning(conn.key, f"{tid},{fragment}: no {wanted} operation")
            return
        self._transition(op, tid, args[1:])

    def _update_by_id(self, conn: _Conn, tid: int, args: list[str]) -> None:
        op = next((o for o in self._ops.get(conn.key, []) if o.id == args[0]), None)
        if op is None:
            self._violation(conn.key, f"{tid},{args[0]}: no such operation for this device")
            self._send_error(conn, f"45,{tid},Operation with id {args[0]} for device "
                             f"id {conn.key} not found")
            return
        self._transition(op, tid - 3, args[1:])

    @staticmethod
    def _transition(op: Operation, tid: int, rest: list[str]) -> None:
        if tid == 501:
            op.set_status("EXECUTING")
        elif tid == 502:
            op.failure_reason = rest[0] if rest else ""
            op.set_status("FAILED")
        else:
            op.result = rest
            op.set_status("SUCCESSFUL")

    def _fail_executing(self, key: str, args: list[str]) -> None:
        fragment = args[0] if args else ""
        for op in self._ops.get(key, []):
            if op.status == "EXECUTING" and (not fragment or op.fragment == fragment):
                op.failure_reason = args[1] if len(args) > 1 else ""
                op.set_status("FAILED")

    # ------------------------------------------------------------------ downstream

    def _deliver(self, conn: _Conn | None, topic: str, payload: bytes) -> bool:
        """PUBLISH to one client at its subscription QoS, if subscribed."""
        if conn is None or conn.closed or topic not in conn.subs:
            return False
        qos = conn.subs[topic]
        pid = conn.alloc_pid() if qos else None
        if pid is not None:
            conn.inflight[pid] = "puback" if qos == 1 else "pubrec"
        self._write(conn, _publish_packet(topic, payload, qos, pid))
        self._sent[conn.key].append(Record("sent", time.monotonic(), conn.session,
                                           topic=topic, payload=payload, qos=qos,
                                           packet_id=pid))
        return True

    def _on_client_ack(self, conn: _Conn, ptype: int, body: bytes) -> None:
        pid = _Body(body).u16()
        name = {PUBACK: "puback", PUBREC: "pubrec", PUBCOMP: "pubcomp"}[ptype]
        self._record(conn.key, name, conn.session, packet_id=pid)
        if conn.inflight.get(pid) != name:
            self._violation(conn.key, f"{name.upper()} for packet id {pid} that "
                            "is not awaiting it")
            return
        if ptype == PUBREC:
            conn.inflight[pid] = "pubcomp"
            self._write(conn, _ack(PUBREL, pid))
        else:
            del conn.inflight[pid]

    def _on_pubrel(self, conn: _Conn, body: bytes) -> None:
        pid = _Body(body).u16()
        self._record(conn.key, "pubrel", conn.session, packet_id=pid)
        conn.qos2_in.discard(pid)
        self._write(conn, _ack(PUBCOMP, pid))

    # ------------------------------------------------------------------ SUBSCRIBE etc.

    def _on_subscribe(self, conn: _Conn, body: bytes) -> None:
        reader = _Body(body)
        pid = reader.u16()
        filters = []
        while reader.left():
            topic_filter, qos = reader.string(), reader.u8()
            if qos > 2:
                raise Malformed(f"SUBSCRIBE with invalid QoS byte {qos:#x}")
            filters.append((topic_filter, qos))
        if not filters:
            raise Malformed("SUBSCRIBE without topic filters")
        if len(filters) > 1:
            self._violation(conn.key, f"SUBSCRIBE with {len(filters)} filters "
                            "(one filter per packet, ref §1.10)")
        granted = [self._grant(conn, f, q) for f, q in filters]
        self._record(conn.key, "subscribe", conn.session, packet_id=pid,
                     filters=filters, granted=granted)
        self._write(conn, _packet(SUBACK, 0, struct.pack("!H", pid) + bytes(granted)))
        for (topic_filter, _), code in zip(filters, granted):
            if code != 0x80:
                conn.subs[topic_filter] = code
                conn.ds_acked = conn.ds_acked or topic_filter == "s/ds"

    def _grant(self, conn: _Conn, topic_filter: str, qos: int) -> int:
        if not _valid_filter(topic_filter) or "+" in topic_filter or "#" in topic_filter:
            self._violation(conn.key, f"SUBSCRIBE {topic_filter!r}: wildcards/invalid "
                            "filters are not granted (subscribe exact topics)")
            return 0x80
        if topic_filter in NEEDS_DEVICE_TOPICS or topic_filter.startswith("s/dc/"):
            if not self._device_ready(conn.key):
                self._violation(conn.key, f"SUBSCRIBE {topic_filter} before the device "
                                "exists (publish 100 and wait for PUBACK first)")
                return 0x80
            return qos
        if topic_filter in FREE_TOPICS:
            return qos
        self._violation(conn.key, f"SUBSCRIBE to non-Cumulocity topic {topic_filter!r}")
        return 0x80

    def _on_unsubscribe(self, conn: _Conn, body: bytes) -> None:
        reader = _Body(body)
        pid = reader.u16()
        filters = []
        while reader.left():
            filters.append(reader.string())
        if not filters:
            raise Malformed("UNSUBSCRIBE without topic filters")
        for topic_filter in filters:
            conn.subs.pop(topic_filter, None)
        self._record(conn.key, "unsubscribe", conn.session, packet_id=pid,
                     filters=[(f, 0) for f in filters])
        self._write(conn, _ack(UNSUBACK, pid))

    def _on_pingreq(self, conn: _Conn) -> None:
        self._record(conn.key, "pingreq", conn.session)
        self._write(conn, _packet(PINGRESP, 0))

    def _on_disconnect(self, conn: _Conn) -> None:
        self._record(conn.key, "disconnect", conn.session)
        conn.will = None
        self._close(conn, "DISCONNECT", graceful=True)


# --------------------------------------------------------------------------
# helpers without tenant state
# --------------------------------------------------------------------------

def _parse_connect(body: bytes) -> dict[str, Any]:
    """Parse CONNECT; for non-3.1/3.1.1 levels only name and level are read."""
    reader = _Body(body)
    info: dict[str, Any] = {"protocol_name": reader.string(),
                            "protocol_level": reader.u8()}
    if (info["protocol_name"], info["protocol_level"]) not in (("MQTT", 4), ("MQIsdp", 3)):
        return info
    flags = reader.u8()
    if flags & 0x01:
        raise Malformed("CONNECT reserved flag set")
    will, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 3, bool(flags & 0x20)
    has_user, has_password = bool(flags & 0x80), bool(flags & 0x40)
    if will_qos == 3 or (not will and (will_qos or will_retain)):
        raise Malformed("inconsistent will flags")
    if has_password and not has_user:
        raise Malformed("password flag without username flag")
    info.update(clean_session=bool(flags & 0x02), keepalive=reader.u16(),
                client_id=reader.string(), will_topic=None, will_payload=None,
                will_qos=will_qos, will_retain=will_retain)
    if will:
        info["will_topic"], info["will_payload"] = reader.string(), reader.binary()
    info["username"] = reader.string() if has_user else None
    info["password"] = reader.binary() if has_password else None
    if reader.left():
        raise Malformed("trailing bytes after CONNECT payload")
    return info


_SIMPLE_MEASUREMENTS = {
    "210": [("c8y_SignalStrength", "rssi", "dBm"), ("c8y_SignalStrength", "ber", "%")],
    "211": [("c8y_TemperatureMeasurement", "T", "C")],
    "212": [("c8y_Battery", "level", "%")],
}


def _measurement_from_fields(fields: list[str]) -> dict[str, Any] | None:
    """Turn a valid measurement line into a dict; None for anything else."""
    template = fields[0] if fields else ""
    if template not in ("200", "201", "210", "211", "212"):
        return None
    args = _strip_trailing_empty(fields)[1:]
    if check_arguments(int(template), args) is not None:
        return None
    if template == "201":
        rest = args[2:]
        groups = [rest[i:i + 4] + [""] * (4 - len(rest[i:i + 4]))
                  for i in range(0, len(rest), 4)]
        series = [_series(*g) for g in groups]
        return {"template": "201", "type": args[0],
                "time": args[1] if len(args) > 1 and args[1] else None,
                "series": series}
    if template == "200":
        padded = args + [""] * (5 - len(args))
        return {"template": "200", "type": padded[0], "time": padded[4] or None,
                "series": [_series(*padded[:4])]}
    specs = _SIMPLE_MEASUREMENTS[template]
    values = args[:len(specs)]
    time_value = args[len(specs)] if len(args) > len(specs) else ""
    series = [_series(frag, name, v, unit)
              for (frag, name, unit), v in zip(specs, values) if v != ""]
    return {"template": template, "type": specs[0][0], "time": time_value or None,
            "series": series}


def _series(fragment: str, series: str, value: str, unit: str) -> dict[str, Any]:
    return {"fragment": fragment, "series": series, "value": float(value), "unit": unit}


def smartrest_lines(payloads: Iterable[str]) -> list[list[str]]:
    """Convenience for tests: fields of all lines of several payloads."""
    return [line.fields for text in payloads for line in parse_smartrest(text)]
