"""Fuzzing operation dispatch: random `s/ds` payloads into Operations.handle.

A real SQLite buffer (c8ysim.storage.open_buffer) holds the restart marker; publish is a
recorder whose acknowledgement callbacks the test runs (or not) at random points, and the
child may "restart" (a new Operations on the same buffer, resume() first) in between.
Properties:

- handle() and resume() never raise;
- a 501,c8y_Restart is only ever published for a payload holding a `510,<own external id>`
  line; a 501 of another fragment never more often than own lines of its template came in;
- no 501 of a fragment while a line of that fragment awaits its acknowledgement (per
  process lifetime: callbacks of a process that "died" never run);
- everything published is a 501/502/503 for c8y_Restart or for a supported action
  (c8y_Command here: its action echoes, or raises for "boom"), or a 501/502 of an
  operation fragment c8ysim refuses;
- an action runs only after its 501 was acknowledged, at most once per acknowledged 501;
- once every acknowledgement came, no answer is owed any more and every 501 has its
  502 or 503.

~200 examples by default; 10 000 with HYPOTHESIS_PROFILE=fuzz (`make fuzz`).
"""

from __future__ import annotations

import tempfile

from hypothesis import event, given
from hypothesis import strategies as st

from c8ysim.config import StorageConfig
from c8ysim.storage import open_buffer
from c8ysim.uplink import smartrest
from c8ysim.uplink.operations import OPERATION_FRAGMENTS, OWED_KEY, Operations
from fuzzing import fuzz_settings

OWN = "c8ysim-pv-roof"
OTHERS = ["c8ysim-heatpump", "c8ysim-pv-roo", "c8ysim-pv-rooff", "C8YSIM-PV-ROOF", "",
          " c8ysim-pv-roof", "c8ysim-pv-roof ", "c8ysim-pv-roof\r", "*"]

FUZZ = fuzz_settings(examples_in_make_test=200)

# --- payloads --------------------------------------------------------------------------------

templates = st.one_of(
    st.sampled_from(["510", "0510", "00510", "511", "511", "500", "106", "601", "603", "520", "530",
                     "522", "515", "513",
                     "", "5l0", " 510", "510 ", "+510", "-510", "5 10", '"510"',
                     "\u0665\u0661\u0660"]),
    st.integers(0, 99999).map(str),
    st.text(max_size=6),
)
external_ids = st.one_of(
    st.sampled_from([OWN, f'"{OWN}"', f'"{OWN[:6]}""{OWN[6:]}"', *OTHERS]),
    st.text(max_size=20),
)
extra_fields = st.lists(st.one_of(st.text(max_size=10),
                                  st.sampled_from(['"', '""', ",", "\\", "boom"])),
                        max_size=3)
lines = st.one_of(
    st.just(f"510,{OWN}"),  # often enough to reach the restart / resume / ack paths
    st.builds(lambda t, x, rest: ",".join([t, x, *rest]), templates, external_ids, extra_fields),
)
separators = st.sampled_from(["\n", "\r\n", "\r", "\n\n", ",", "\n\r\n"])


@st.composite
def payloads(draw) -> bytes:
    kind = draw(st.sampled_from(["lines", "lines", "lines", "bytes", "text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=100)).encode("utf-8", "surrogatepass")
    parts = draw(st.lists(lines, min_size=1, max_size=5))
    text = ""
    for part in parts:
        text += part + draw(separators)
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    return text.encode("utf-8", "surrogatepass")


# --- the oracle ------------------------------------------------------------------------------

def asks_own_restart(payload: bytes) -> bool:
    """Does the payload hold a line whose fields are exactly `510`, OWN[, ...]?"""
    return any(len(fields) >= 2 and fields[0] == "510" and fields[1] == OWN
               for fields in smartrest.parse(payload))


SUPPORTED = "c8y_Command"
REFUSED_FRAGMENTS = set(OPERATION_FRAGMENTS.values()) - {SUPPORTED}


def allowed_line(line: str) -> bool:
    fields = smartrest.parse(line)
    if len(fields) != 1 or len(fields[0]) < 2:
        return False
    template, fragment = fields[0][:2]
    return ((template in {"501", "502", "503"} and fragment in ("c8y_Restart", SUPPORTED))
            or (template in {"501", "502"} and fragment in REFUSED_FRAGMENTS))


def fragment_of(line: str) -> str:
    return smartrest.parse(line)[0][1]


def own_deliveries(payload: bytes) -> dict[str, int]:
    """Lines `<template>,OWN,...` of a refused operation, by fragment."""
    found: dict[str, int] = {}
    for fields in smartrest.parse(payload):
        if len(fields) >= 2 and fields[1] == OWN and fields[0].isascii() and \
                fields[0].isdigit() and not fields[0].startswith("0"):
            fragment = OPERATION_FRAGMENTS.get(int(fields[0]))
            if fragment:
                found[fragment] = found.get(fragment, 0) + 1
    return found


class Device:
    """One device's durable buffer and the current process's Operations + pending acks."""

    def __init__(self, directory: str):
        self.buffer = open_buffer(StorageConfig(path=directory), "pv-roof")
        self.published: list[str] = []
        self.runs = self.acked_501s = 0  # actions run; acknowledged 501,c8y_Command
        self.new_process()

    def new_process(self) -> None:
        self.operations = Operations(OWN, self.buffer, actions={SUPPORTED: self.command})
        self.pending: list[tuple[str, object]] = []  # (line, ack callback) not yet run

    def command(self, text: str) -> tuple[bool, str]:
        self.runs += 1
        assert self.runs <= self.acked_501s, "an action ran before its 501 was acknowledged"
        if text == "boom":
            raise RuntimeError("the action's own bug")
        return True, f"ran {text}"

    def publish(self, line: str, on_ack) -> None:
        assert isinstance(line, str) and allowed_line(line), line
        if line.startswith("501"):
            assert not any(fragment_of(p) == fragment_of(line) for p, _ in self.pending), (
                f"{line} while a line of its fragment awaits its acknowledgement")
        self.published.append(line)
        self.pending.append((line, on_ack))

    def count(self, template: str, fragment: str) -> int:
        return sum(1 for line in self.published
                   if line.startswith(f"{template},") and fragment_of(line) == fragment)

    def ack(self, how_many: int) -> None:
        for _ in range(min(how_many, len(self.pending))):
            line, callback = self.pending.pop(0)
            if line == f"501,{SUPPORTED}":
                self.acked_501s += 1
            callback()

    def close(self) -> None:
        self.buffer.close()


steps = st.lists(st.one_of(
    payloads().map(lambda p: ("handle", p)),
    st.integers(1, 3).map(lambda n: ("ack", n)),
    st.just(("restart", None)),
), min_size=1, max_size=12)


@FUZZ
@given(steps)
def test_operations_never_raise_and_only_own_510_restarts(script):
    with tempfile.TemporaryDirectory(prefix="c8ysim-fuzz-ops-") as directory:
        device = Device(directory)
        try:
            restarts = 0
            delivered: dict[str, int] = {}
            for action, arg in script:
                if action == "handle":
                    before = device.count("501", "c8y_Restart")
                    device.operations.handle(arg, device.publish)
                    after = device.count("501", "c8y_Restart")
                    assert after - before <= 1, "more than one 501 for one payload"
                    if after > before:
                        assert asks_own_restart(arg), f"501 published for {arg!r}"
                        restarts += 1
                    for fragment, n in own_deliveries(arg).items():
                        delivered[fragment] = delivered.get(fragment, 0) + n
                elif action == "ack":
                    device.ack(arg)
                else:  # the child exits (restart, crash): unacknowledged callbacks are lost
                    device.new_process()
                    device.operations.resume(device.publish)
                for fragment in REFUSED_FRAGMENTS | {SUPPORTED}:
                    assert device.count("501", fragment) <= delivered.get(fragment, 0), \
                        fragment
            event(f"501 published {min(restarts, 2)}x")
            event(f"refused {min(sum(delivered.values()), 3)}x")
            event(f"actions run {min(device.runs, 2)}x")
            while True:  # every acknowledgement comes (and a requested restart): all ends
                while device.pending:
                    device.ack(len(device.pending))
                if not device.operations.restart_requested:
                    break
                device.new_process()
                device.operations.resume(device.publish)
            assert device.buffer.get_meta(OWED_KEY) is None
            for fragment in REFUSED_FRAGMENTS | {SUPPORTED}:
                assert device.count("502", fragment) + device.count("503", fragment) >= \
                    device.count("501", fragment)
        finally:
            device.close()


# --- fixed cases ---------------------------------------------------------------------------

def _run(payload: bytes) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="c8ysim-fuzz-ops-") as directory:
        device = Device(directory)
        try:
            device.operations.handle(payload, device.publish)
            return device.published
        finally:
            device.close()


def test_own_510_publishes_one_501():
    assert _run(f"510,{OWN}\n510,{OWN}".encode()) == ["501,c8y_Restart"]


def test_other_devices_and_garbage_publish_nothing():
    for payload in (b"510,c8ysim-heatpump", b"511,c8ysim-heatpump,ls", b"\xff\xfe510,",
                    b"510", b"510,", b"", b"\n\n", f"5l0,{OWN}".encode(),
                    f"999,{OWN}".encode(), f"520,{OWN}".encode(), f"0511,{OWN}".encode()):
        assert _run(payload) == [], payload


def test_unsupported_operations_are_answered_one_at_a_time_in_order():
    with tempfile.TemporaryDirectory(prefix="c8ysim-fuzz-ops-") as directory:
        device = Device(directory)
        try:
            device.operations.handle(f"522,{OWN},syslog\n515,{OWN},fw,1,u\n522,{OWN},x"
                                     .encode(), device.publish)
            assert device.published == ["501,c8y_LogfileRequest"]
            while device.pending:
                device.ack(1)
            assert device.published == [
                "501,c8y_LogfileRequest",
                "502,c8y_LogfileRequest,c8y_LogfileRequest is not supported by c8ysim",
                "501,c8y_Firmware", "502,c8y_Firmware,c8y_Firmware is not supported by c8ysim",
                "501,c8y_LogfileRequest",
                "502,c8y_LogfileRequest,c8y_LogfileRequest is not supported by c8ysim"]
            assert device.buffer.get_meta(OWED_KEY) is None
            assert device.operations.refused_unsupported == 3
            assert device.operations.ignored_lines == 0
        finally:
            device.close()


def test_an_answer_cut_short_is_finished_with_502_and_the_rest_left_to_the_500():
    with tempfile.TemporaryDirectory(prefix="c8ysim-fuzz-ops-") as directory:
        device = Device(directory)
        try:
            device.operations.handle(f"522,{OWN}\n515,{OWN}".encode(), device.publish)
            assert device.published == ["501,c8y_LogfileRequest"]  # no ack: the link drops
            device.new_process()  # a new connection (or child): resume before the 500
            device.operations.resume(device.publish)
            assert device.published[1:] == [
                "502,c8y_LogfileRequest,c8y_LogfileRequest is not supported by c8ysim"]
            device.ack(1)
            assert device.pending == [] and device.buffer.get_meta(OWED_KEY) is None
            # 515 got nothing yet: it is still PENDING, and the 500 delivers it again
            device.operations.handle(f"515,{OWN}".encode(), device.publish)
            device.ack(2)
            assert device.published[2:] == [
                "501,c8y_Firmware", "502,c8y_Firmware,c8y_Firmware is not supported by c8ysim"]
        finally:
            device.close()


def test_leading_zero_template_is_not_510():
    """`0510` is not the static template 510 (found by this fuzzer; fixed in smartrest)."""
    assert _run(f"0510,{OWN}".encode()) == []
