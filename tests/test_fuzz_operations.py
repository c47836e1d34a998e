"""Fuzzing operation dispatch: random `s/ds` payloads into Operations.handle.

A real SQLite buffer (c8ysim.storage.open_buffer) holds the restart marker; publish is a
recorder whose acknowledgement callbacks the test runs (or not) at random points, and the
child may "restart" (a new Operations on the same buffer, resume() first) in between.
Properties:

- handle() and resume() never raise;
- a 501 is only ever published for a payload holding a `510,<own external id>` line;
- at most one 501 until its acknowledgement callback ran (per process lifetime: callbacks of
  a process that "died" never run);
- everything published is a 501/502/503 for c8y_Restart.

~200 examples by default; 10 000 with HYPOTHESIS_PROFILE=fuzz (`make fuzz`).
"""

from __future__ import annotations

import tempfile

from hypothesis import event, given
from hypothesis import strategies as st

from c8ysim.config import StorageConfig
from c8ysim.storage import open_buffer
from c8ysim.uplink import smartrest
from c8ysim.uplink.operations import Operations
from fuzzing import fuzz_settings

OWN = "c8ysim-pv-roof"
OTHERS = ["c8ysim-heatpump", "c8ysim-pv-roo", "c8ysim-pv-rooff", "C8YSIM-PV-ROOF", "",
          " c8ysim-pv-roof", "c8ysim-pv-roof ", "c8ysim-pv-roof\r", "*"]

FUZZ = fuzz_settings(examples_in_make_test=200)

# --- payloads --------------------------------------------------------------------------------

templates = st.one_of(
    st.sampled_from(["510", "0510", "00510", "511", "500", "106", "601", "603", "520", "530",
                     "", "5l0", " 510", "510 ", "+510", "-510", "5 10", '"510"',
                     "\u0665\u0661\u0660"]),
    st.integers(0, 99999).map(str),
    st.text(max_size=6),
)
external_ids = st.one_of(
    st.sampled_from([OWN, f'"{OWN}"', f'"{OWN[:6]}""{OWN[6:]}"', *OTHERS]),
    st.text(max_size=20),
)
extra_fields = st.lists(st.one_of(st.text(max_size=10), st.sampled_from(['"', '""', ",", "\\"])),
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


def allowed_line(line: str) -> bool:
    fields = smartrest.parse(line)
    return (len(fields) == 1 and fields[0][0] in {"501", "502", "503"}
            and fields[0][1] == "c8y_Restart")


class Device:
    """One device's durable buffer and the current process's Operations + pending acks."""

    def __init__(self, directory: str):
        self.buffer = open_buffer(StorageConfig(path=directory), "pv-roof")
        self.published: list[str] = []
        self.new_process()

    def new_process(self) -> None:
        self.operations = Operations(OWN, self.buffer)
        self.pending: list[tuple[str, object]] = []  # (line, ack callback) not yet run

    def publish(self, line: str, on_ack) -> None:
        assert isinstance(line, str) and allowed_line(line), line
        if line.startswith("501"):
            assert not any(p.startswith("501") for p, _ in self.pending), (
                "a second 501 before the first one's acknowledgement")
        self.published.append(line)
        self.pending.append((line, on_ack))

    def ack(self, how_many: int) -> None:
        for _ in range(min(how_many, len(self.pending))):
            _line, callback = self.pending.pop(0)
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
            for action, arg in script:
                if action == "handle":
                    before = sum(line.startswith("501") for line in device.published)
                    device.operations.handle(arg, device.publish)
                    after = sum(line.startswith("501") for line in device.published)
                    assert after - before <= 1, "more than one 501 for one payload"
                    if after > before:
                        assert asks_own_restart(arg), f"501 published for {arg!r}"
                        restarts += 1
                elif action == "ack":
                    device.ack(arg)
                else:  # the child exits (restart, crash): unacknowledged callbacks are lost
                    device.new_process()
                    device.operations.resume(device.publish)
            event(f"501 published {min(restarts, 2)}x")
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
    for payload in (b"510,c8ysim-heatpump", b"511,c8ysim-pv-roof,ls", b"\xff\xfe510,",
                    b"510", b"510,", b"", b"\n\n", f"5l0,{OWN}".encode()):
        assert _run(payload) == [], payload


def test_leading_zero_template_is_not_510():
    """`0510` is not the static template 510 (found by this fuzzer; fixed in smartrest)."""
    assert _run(f"0510,{OWN}".encode()) == []
