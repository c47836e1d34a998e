"""SmartREST 2.0 encoding/decoding: reference §9 vectors, escaping, batching, parser fuzzing.

Property tests run ~300 examples by default; the parser/round-trip fuzz tests run 10 000 with
HYPOTHESIS_PROFILE=fuzz (profile registered below, applied per test, not globally).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c8ysim.sim import Alarm, Event, Reading, Series
from c8ysim.uplink import smartrest as sr
from fuzzing import fuzz_settings

FUZZ = fuzz_settings(examples_in_make_test=300)
PROPERTY = settings(max_examples=200, deadline=None)


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def strip_trailing(fields: list[str]) -> list[str]:
    fields = list(fields)
    while fields and fields[-1] == "":
        fields.pop()
    return fields


# --- §9 upstream vectors, byte-exact --------------------------------------------------------

EXACT = [
    (sr.position(52.52, 13.4), "112,52.52,13.4"),
    (sr.position(-33.9, 151.2, 58), "112,-33.9,151.2,58"),
    (sr.device_creation("myDevice", "myType"), "100,myDevice,myType"),
    (sr.device_creation("My first MQTT device", "c8y_MQTTdevice"),
     "100,My first MQTT device,c8y_MQTTdevice"),
    (sr.device_creation("C MQTT", "c8y_MQTTDevice"), "100,C MQTT,c8y_MQTTDevice"),
    (sr.device_creation(None, "myType"), "100,,myType"),
    (sr.device_creation("", "myType"), "100,,myType"),
    (sr.device_creation(None, None), "100"),
    (sr.device_creation("This value, needs escaping", "This value does not need escaping"),
     '100,"This value, needs escaping",This value does not need escaping'),
    (sr.device_creation("dm-example-device-42", "c8y_dm_example_device"),
     "100,dm-example-device-42,c8y_dm_example_device"),
    (sr.hardware("1234567890", "myModel", "1.2.3"), "110,1234567890,myModel,1.2.3"),
    (sr.hardware("S123456789", "MQTT test model", "Rev0.1"),
     "110,S123456789,MQTT test model,Rev0.1"),
    (sr.hardware(None, "MQTT test model", "1.2.3"), "110,,MQTT test model,1.2.3"),
    (sr.hardware("0000abcd", "raspberry", "1.0"), "110,0000abcd,raspberry,1.0"),
    (sr.supported_operations("c8y_Restart", "c8y_Configuration", "c8y_SoftwareList"),
     "114,c8y_Restart,c8y_Configuration,c8y_SoftwareList"),
    (sr.supported_operations("c8y_Restart"), "114,c8y_Restart"),
    (sr.supported_operations("c8y_Command", "c8y_Configuration"),
     "114,c8y_Command,c8y_Configuration"),
    (sr.supported_operations("c8y_SoftwareUpdate", "c8y_LogfileRequest"),
     "114,c8y_SoftwareUpdate,c8y_LogfileRequest"),
    (sr.required_interval(60), "117,60"),
    (sr.required_interval(15), "117,15"),
    (sr.required_interval(10), "117,10"),
    (sr.required_interval(0), "117,0"),
    (sr.get_pending_operations(), "500"),
    (sr.operation_executing("c8y_Restart"), "501,c8y_Restart"),
    (sr.operation_successful("c8y_Restart"), "503,c8y_Restart"),
    (sr.operation_successful("c8y_Restart", "Restart Successful"),
     "503,c8y_Restart,Restart Successful"),
    (sr.operation_failed("c8y_Restart", "Error during Restart:boom"),
     "502,c8y_Restart,Error during Restart:boom"),
    (sr.operation_failed("c8y_SoftwareUpdate", "Failed to install collectd, modbus, and golang."),
     '502,c8y_SoftwareUpdate,"Failed to install collectd, modbus, and golang."'),
    (sr.operation_failed("c8y_SoftwareUpdate", 'Failed due to permi"ssion.'),
     '502,c8y_SoftwareUpdate,"Failed due to permi""ssion."'),
    (sr.operation_successful("c8y_RelayArray", "true,false,true"),
     '503,c8y_RelayArray,"true,false,true"'),
    (sr.operation_successful("c8y_Command", "Everything went fine"),
     "503,c8y_Command,Everything went fine"),
    (sr.alarm(Alarm("gpio_critical", "CRITICAL", "There is a GPIO alarm")),
     "301,gpio_critical,There is a GPIO alarm"),
    (sr.alarm(Alarm("simple_warning", "WARNING", "")), "304,simple_warning"),
    (sr.alarm(Alarm("temperature_alarm", "MAJOR", "Temperature high")),
     "302,temperature_alarm,Temperature high"),
    (sr.alarm(Alarm("c8y_TemperatureAlarm", "WARNING", ""), epoch("2013-06-22T17:03:14+02:00")),
     "304,c8y_TemperatureAlarm,,2013-06-22T15:03:14.000+00:00"),
    (sr.alarm(Alarm("low_cop", "minor", "COP below 2"), 0.5),
     "303,low_cop,COP below 2,1970-01-01T00:00:00.500+00:00"),
    (sr.clear_alarm("gpio_critical"), "306,gpio_critical"),
    (sr.clear_alarm("empty_temperature_alarm"), "306,empty_temperature_alarm"),
    (sr.event(Event("c8y_AgentStartEvent", "C8Y DM Agent started")),
     "400,c8y_AgentStartEvent,C8Y DM Agent started"),
    (sr.event(Event("c8y_AgentStopEvent", "C8Y DM Agent stopped")),
     "400,c8y_AgentStopEvent,C8Y DM Agent stopped"),
    (sr.event(Event("c8y_Restarted", "Device restarted"), epoch("2026-11-29T19:20:00.123Z")),
     "400,c8y_Restarted,Device restarted,2026-11-29T19:20:00.123+00:00"),
]


@pytest.mark.parametrize("produced, expected", EXACT, ids=[e for _, e in EXACT])
def test_upstream_vector_byte_exact(produced, expected):
    assert produced == expected


def test_measurement_201_vector():
    # DOC-STATIC vector; its time is written "...845Z", ours is the same instant as +00:00.
    vector = ("201,KamstrupA220Reading,2022-03-19T12:03:27.845+00:00,"
              "c8y_SinglePhaseEnergyMeasurement,A+:1,1234,kWh,"
              "c8y_SinglePhaseEnergyMeasurement,A-:1,2345,kWh,"
              "c8y_ThreePhaseEnergyMeasurement,A+:1,123,kWh,"
              "c8y_ThreePhaseEnergyMeasurement,A+:2,234,kWh,"
              "c8y_ThreePhaseEnergyMeasurement,A+:3,345,kWh")
    series = (
        Series("c8y_SinglePhaseEnergyMeasurement", "A+:1", 1234.0, "kWh"),
        Series("c8y_SinglePhaseEnergyMeasurement", "A-:1", 2345.0, "kWh"),
        Series("c8y_ThreePhaseEnergyMeasurement", "A+:1", 123, "kWh"),
        Series("c8y_ThreePhaseEnergyMeasurement", "A+:2", 234.0, "kWh"),
        Series("c8y_ThreePhaseEnergyMeasurement", "A+:3", 345.0, "kWh"),
    )
    reading = Reading(epoch("2022-03-19T12:03:27.845Z"), "KamstrupA220Reading", series)
    assert sr.measurement(reading) == vector


def test_measurement_keeps_empty_units_and_decimals():
    series = (Series("c8y_Temp", "T", 21.5, ""), Series("c8y_Power", "P", 0.0012, "kW"))
    reading = Reading(epoch("2026-11-29T19:20:00Z"), "c8ysim_pv", series)
    assert sr.measurement(reading) == (
        "201,c8ysim_pv,2026-11-29T19:20:00.000+00:00,c8y_Temp,T,21.5,,c8y_Power,P,0.0012,kW")


def test_measurement_without_series_is_rejected():
    with pytest.raises(ValueError):
        sr.measurement(Reading(0.0, "c8ysim_pv", ()))


# Vectors that quote text needing no quotes: not byte-exact with minimal quoting, but the
# platform reads the same fields.
SAME_FIELDS = [
    (sr.alarm(Alarm("c8y_TemperatureAlarm", "MAJOR", "This is an alarm")),
     '302,c8y_TemperatureAlarm,"This is an alarm"'),
    (sr.event(Event("c8y_MyEvent", "Something was triggered")),
     '400,c8y_MyEvent,"Something was triggered"'),
    (sr.event(Event("c8y_ConnectionEvent", "Device connection was lost.")),
     '400,c8y_ConnectionEvent,"Device connection was lost."'),
    (sr.operation_failed("c8y_Restart", "Could not restart"),
     '502,c8y_Restart,"Could not restart"'),
]


@pytest.mark.parametrize("produced, vector", SAME_FIELDS, ids=[v for _, v in SAME_FIELDS])
def test_upstream_vector_same_fields(produced, vector):
    assert '"' not in produced
    assert sr.parse(produced) == sr.parse(vector)


def test_empty_failure_reason_drops_trailing_field():
    # TEDGE sends "502,c8y_SoftwareUpdate," — same fields apart from the trailing empty one.
    assert sr.operation_failed("c8y_SoftwareUpdate", "") == "502,c8y_SoftwareUpdate"
    assert sr.operation_failed("c8y_SoftwareUpdate", None) == "502,c8y_SoftwareUpdate"
    assert sr.parse("502,c8y_SoftwareUpdate,") == [["502", "c8y_SoftwareUpdate", ""]]


def test_multi_line_payload_vector():
    payload = "\n".join([sr.hardware(None, "MQTT test model", "1.2.3"),
                         sr.required_interval(10)])
    assert payload == "110,,MQTT test model,1.2.3\n117,10"


def test_failure_reason_truncated_to_500_bytes_on_character_boundary():
    produced = sr.operation_failed("c8y_Restart", "é" * 400)  # 800 bytes of UTF-8
    reason = sr.parse(produced)[0][2]
    assert reason == "é" * 250 and len(reason.encode()) == 500
    odd = sr.parse(sr.operation_failed("c8y_Restart", "x" + "é" * 400))[0][2]
    assert odd == "x" + "é" * 249  # 499 bytes: the split character is dropped
    assert sr.parse(sr.operation_failed("c8y_Restart", "y" * 900))[0][2] == "y" * 500


def test_unknown_severity_and_bad_interval_are_rejected():
    with pytest.raises(ValueError):
        sr.alarm(Alarm("x", "FATAL", "text"), 0.0)
    with pytest.raises(TypeError):
        sr.required_interval(10.0)
    with pytest.raises(TypeError):
        sr.line("100", "x")


def test_constants():
    assert (sr.UPSTREAM_TOPIC, sr.OPERATIONS_TOPIC, sr.ERRORS_TOPIC) == ("s/us", "s/ds", "s/e")
    assert sr.MAX_PAYLOAD_BYTES == 16000


# --- quoting and numbers -----------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (None, ""), (True, "true"), (False, "false"), (5, "5"), (-17, "-17"),
    (230.5, "230.5"), (0.0012, "0.0012"), (1234.0, "1234"), (-0.0, "0"), (0.1, "0.1"),
    (1e-05, "0.00001"), (1e16, "10000000000000000"), (123456789.125, "123456789.125"),
    (1e300, "1e+300"),
    ("plain", "plain"), ("", ""), ("a,b", '"a,b"'), ('say "hi"', '"say ""hi"""'),
    ("a\nb", '"a\nb"'), ("a\rb", '"a\rb"'), ("a\tb", '"a\tb"'), (" lead", '" lead"'),
    ("trail ", '"trail "'), ("in side", "in side"), ("C:\\dir", "C:\\dir"),
    ("C:\\dir, x", '"C:\\dir, x"'), ("x,\\", '"x,\\\\"'), ('a\\"b', '"a\\\\""b"'),
])
def test_quote(value, expected):
    assert sr.quote(value) == expected


class _LoudFloat(float):
    def __repr__(self):
        return f"LoudFloat({float(self)})"


class _Label(str):
    def __str__(self):
        return "label, with comma"


def test_subclasses_are_quoted_by_their_value():
    # a float subclass with its own repr (as numpy's float64 has) still gives the number;
    # a str subclass goes through str() as before, never through the cache of plain texts
    assert sr.quote(_LoudFloat(1234.0)) == "1234"
    assert sr.quote(_LoudFloat(1e-05)) == "0.00001"
    assert sr.quote(_Label("x")) == '"label, with comma"'
    assert sr.quote("x") == "x"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_rejected(value):
    with pytest.raises(ValueError):
        sr.quote(value)


@PROPERTY
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_round_trip_without_exponent_in_normal_range(value):
    text = sr.quote(value)
    assert float(text) == value
    if value == 0 or 1e-15 <= abs(value) < 1e21:
        assert re.fullmatch(r"-?[0-9]+(\.[0-9]*[1-9])?", text), text


def test_line_drops_only_trailing_empty_fields():
    assert sr.line(100, "", "") == "100"
    assert sr.line(100, "", "t") == "100,,t"
    assert sr.line(503, "c8y_Command", "", None) == "503,c8y_Command"
    assert sr.line(999) == "999"


# --- round trip -----------------------------------------------------------------------------

@FUZZ
@given(st.integers(0, 999), st.lists(st.text(max_size=20), max_size=8))
def test_upstream_line_round_trips(template, fields):
    assert sr.parse(sr.line(template, *fields)) == [[str(template), *strip_trailing(fields)]]


NASTY = st.text(alphabet=st.sampled_from(list('ab ,"\\\r\n\té')), max_size=20)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 999), st.lists(NASTY, max_size=5)), max_size=6))
def test_payload_of_nasty_lines_round_trips(rows):
    payload = "\n".join(sr.line(template, *fields) for template, fields in rows).encode()
    expected = [[str(template), *strip_trailing(fields)] for template, fields in rows]
    assert sr.parse(payload) == expected


# --- iso_time --------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, expected", [
    (0.0, "1970-01-01T00:00:00.000+00:00"),
    (0.9994, "1970-01-01T00:00:00.999+00:00"),
    (0.9996, "1970-01-01T00:00:01.000+00:00"),
    (59.9999, "1970-01-01T00:01:00.000+00:00"),
    (86399.9996, "1970-01-02T00:00:00.000+00:00"),
    (epoch("2026-12-31T23:59:59Z") + 0.9999, "2027-01-01T00:00:00.000+00:00"),
    (epoch("2026-11-29T19:20:00.123Z"), "2026-11-29T19:20:00.123+00:00"),
    (epoch("2022-03-19T12:03:27.845Z"), "2022-03-19T12:03:27.845+00:00"),
    (1647691407.8449998, "2022-03-19T12:03:27.845+00:00"),
    (-0.0004, "1970-01-01T00:00:00.000+00:00"),
    (-0.0006, "1969-12-31T23:59:59.999+00:00"),
    (1_800_000_000, "2027-01-15T08:00:00.000+00:00"),
    # near-ties: the exact binary value decides; float `x * 1000` would round wrongly
    (1037017667.7475, "2002-11-11T12:27:47.747+00:00"),
    (462949041.6865, "1984-09-02T04:57:21.687+00:00"),
])
def test_iso_time(seconds, expected):
    assert sr.iso_time(seconds) == expected


@pytest.mark.parametrize("seconds", [float("nan"), float("inf")])
def test_iso_time_rejects_non_finite(seconds):
    with pytest.raises(ValueError):
        sr.iso_time(seconds)


@PROPERTY
@given(st.floats(min_value=-1e10, max_value=2.5e11))
def test_iso_time_is_nearest_millisecond(seconds):
    text = sr.iso_time(seconds)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", text), text
    delta = datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    millis = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    assert abs(Fraction(millis, 1000) - Fraction(seconds)) <= Fraction(1, 2000)


# --- downstream vectors -------------------------------------------------------------------------

@pytest.mark.parametrize("payload, expected", [
    (b"510,DeviceSerial", [["510", "DeviceSerial"]]),
    # DOC-IMPL as printed: backslash-n is literal text, \" an escaped quote
    (b'511,myDeviceSerial,"execute this\\nand this\\nand \\"this\\""',
     [["511", "myDeviceSerial", 'execute this\\nand this\\nand "this"']]),
    # the same with real newlines, and the older doubled-quote form
    (b'511,myDeviceSerial,"execute this\nand this\nand \\"this\\""',
     [["511", "myDeviceSerial", 'execute this\nand this\nand "this"']]),
    (b'511,myDeviceSerial,"execute this\nand this\nand ""this"""',
     [["511", "myDeviceSerial", 'execute this\nand this\nand "this"']]),
    # TEDGE #1831: real platform bytes, raw 0x0A inside quotes
    (bytes.fromhex("3531312c5453545f73686172655f776f72726965645f6d6f6e756d656e742c22"
                   "6563686f205c2268656c6c6f5c220a6563686f205c22776f726c645c2222"),
     [["511", "TST_share_worried_monument", 'echo "hello"\necho "world"']]),
    (b'513,DeviceSerial,"val1=1\\nval2=2"', [["513", "DeviceSerial", "val1=1\\nval2=2"]]),
    (b'513,DeviceSerial,"val1=1\nval2=2"', [["513", "DeviceSerial", "val1=1\nval2=2"]]),
    (b"530,DeviceSerial,10.0.0.67,22,eb5e9d13-1caa-486b-bdda-130ca0d87df8",
     [["530", "DeviceSerial", "10.0.0.67", "22", "eb5e9d13-1caa-486b-bdda-130ca0d87df8"]]),
    (b"124,12345", [["124", "12345"]]),
    (b"40,999,No static template for this message id",
     [["40", "999", "No static template for this message id"]]),
    (b"41,100,Device already existing", [["41", "100", "Device already existing"]]),
    (b"50,100,Error on device creation, message: Error on identity creation",
     [["50", "100", "Error on device creation", " message: Error on identity creation"]]),
    (b"41,,MqttAuth: Cannot publish token for device that do not use certificate authentication",
     [["41", "", "MqttAuth: Cannot publish token for device that do not use certificate "
                 "authentication"]]),
])
def test_downstream_vectors(payload, expected):
    assert sr.parse(payload) == expected
    assert sr.parse(payload.decode()) == expected


@pytest.mark.parametrize("payload, expected", [
    (b"", []),
    (b"\n\r\n\n", []),
    (b'510,A\r\n511,A,"x\r\ny"\n\n513,A,"c"\r\n', [["510", "A"], ["511", "A", "x\r\ny"],
                                                   ["513", "A", "c"]]),
    (b"510,A\r", [["510", "A"]]),
    (b"511,A,a\rb", [["511", "A", "a\rb"]]),
    (b'511,X,"echo hi\nmore,stuff', [["511", "X", "echo hi\nmore,stuff"]]),
    (b'511,X,"tail\\', [["511", "X", "tail\\"]]),
    (b'"ab"cd,e', [["abcd", "e"]]),
    (b'511,X,ab"c', [["511", "X", 'ab"c']]),
    (b'511,X,"a\\\\"', [["511", "X", "a\\"]]),
    (b'511,X,"C:\\dir\\file"', [["511", "X", "C:\\dir\\file"]]),
    (b"511,X,\xff\xfe", [["511", "X", "\ufffd\ufffd"]]),
    (b',', [["", ""]]),
    (b'""', []),
])
def test_parse_edge_cases(payload, expected):
    assert sr.parse(payload) == expected


def test_operations():
    payload = (b'510,dev1\n511,dev1,"ls\nps"\n106,child1,child2\nabc,def\n510\n'
               b'\xff,x\n124,12345\n601,10.18.0')
    operations, rejected = sr.split_operations(payload)
    assert operations == [
        sr.Operation(510, "dev1", ()),
        sr.Operation(511, "dev1", ("ls\nps",)),
        sr.Operation(106, "", ("child1", "child2")),
        sr.Operation(124, "12345", ()),
        sr.Operation(601, "", ("10.18.0",)),
    ]
    assert rejected == [["abc", "def"], ["510"], ["\ufffd", "x"]]
    assert sr.split_operations(b"\xd9\xa3,dev")[0] == []  # non-ASCII digit is not a template ID


# --- parser never raises ------------------------------------------------------------------------

def check_rows(rows):
    assert isinstance(rows, list)
    for row in rows:
        assert row and row != [""] and all(isinstance(field, str) for field in row)


@FUZZ
@given(st.binary(max_size=300))
def test_parse_never_raises_on_bytes(payload):
    check_rows(sr.parse(payload))
    for operation in sr.split_operations(payload)[0]:
        assert isinstance(operation.template, int) and isinstance(operation.fields, tuple)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list('51,"\\\r\n x\ufffd')), max_size=200))
def test_parse_never_raises_on_csv_shaped_text(payload):
    check_rows(sr.parse(payload))
    assert sr.parse(payload) == sr.parse(payload.encode())
