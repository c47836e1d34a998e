"""A hostile broker: oversized, retained, flooded and injected `s/ds` and `s/e`, against real
mosquitto and the real agent process (one device, a 3 s heartbeat timeout so a stalled child
is killed and seen). After each attack: the child was never restarted, readings kept
flowing, every log line is one well-formed `<N>` line, their number is bounded, and the
drops are counted on /api/status. Plus the log formatter's own guarantees, fuzzed."""

from __future__ import annotations

import logging
import re
import time

import paho.mqtt.client as mqtt
import paho.mqtt.publish as publish
from hypothesis import given
from hypothesis import strategies as st

from c8ysim import logs
from c8ysim.uplink.operations import Operations
from conftest import free_port, wait_until, write_config
from fuzzing import fuzz_settings

DEVICE = "pv-roof"
XID = "c8ysim-pv-roof"
FAST = "supervisor: {heartbeat_timeout_s: 3.0, kill_grace_s: 0.5, stop_timeout_s: 2.0}\n"
LINE = re.compile(r"<[0-7]>\S")  # what every line of the agent's output must start with
FORGERY = "hello\n<0>supervisor: FORGED"


# --- helpers -----------------------------------------------------------------------------------

def start(tmp_path, mosquitto, agent_factory):
    status_port = free_port()
    config = write_config(tmp_path, mosquitto.port, status_port, devices=[(DEVICE, "pv")],
                          extra=FAST)
    agent = agent_factory(config, status_port).start()
    wait_until(lambda: agent.devices()[DEVICE]["connected"], 15, what="the device online")
    return agent


def device(agent) -> dict:
    return agent.devices()[DEVICE]


def readings(recorder) -> int:
    return sum(line.startswith("201,") for line in recorder.lines())


def log_lines(agent) -> list[str]:
    return agent.log_text().splitlines()


def assert_well_formed(agent, max_lines: int) -> list[str]:
    lines = log_lines(agent)
    bad = [line for line in lines if not LINE.match(line)]
    assert not bad, bad[:5]
    assert not [line for line in lines if line.startswith(("<0>", "<1>"))]
    assert len(lines) <= max_lines, f"{len(lines)} log lines: {lines[:40]}"
    return lines


def assert_survived(agent, recorder, pid: int, seconds: float = 3.0) -> None:
    """No restart, and readings still arrive over the next `seconds`."""
    before = readings(recorder)
    wait_until(lambda: readings(recorder) >= before + 2, seconds + 5, what="new readings")
    status = device(agent)
    assert status["pid"] == pid and status["restarts"] == 0, status
    assert status["state"] == "running" and status["connected"], status


def publisher(port: int):
    args = dict(client_id="hostile", clean_session=True)
    client = (mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **args)
              if hasattr(mqtt, "CallbackAPIVersion") else mqtt.Client(**args))
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    wait_until(client.is_connected, 5, what="the hostile publisher")
    return client


# --- against the real agent ----------------------------------------------------------------

def test_retained_8mb_sds_is_dropped_unread_on_every_connect(tmp_path, mosquitto, recorder,
                                                             agent_factory):
    # Retained: the child gets it on every (re)connect. Unbounded, parsing it took ~7 s.
    eight_mb = b"5,x\n" * (2 * 1024 * 1024)
    publish.single("s/ds", eight_mb, qos=1, retain=True, hostname="127.0.0.1",
                   port=mosquitto.port)
    agent = start(tmp_path, mosquitto, agent_factory)
    pid = device(agent)["pid"]
    wait_until(lambda: device(agent).get("inbound_dropped", 0) >= 1, 10, what="the drop counted")
    # 1 MB of `5,x` lines once logged 262 144 lines; 16 000 bytes of them (under the limit)
    # are parsed and give two: the first ignored line and a count of the rest.
    publish.single("s/ds", b"5,x\n" * (256 * 1024), qos=1, hostname="127.0.0.1",
                   port=mosquitto.port)
    publish.single("s/ds", b"5,x\n" * 4000, qos=1, hostname="127.0.0.1", port=mosquitto.port)
    wait_until(lambda: device(agent)["inbound_ignored"] >= 4000, 10, what="the 16 kB parsed")
    assert_survived(agent, recorder, pid)
    status = device(agent)
    assert status["inbound_dropped"] == 2 and status["inbound_ignored"] == 4000, status
    lines = assert_well_formed(agent, max_lines=20)
    dropped = [line for line in lines if "message unread" in line]
    assert dropped == [f"<4>{DEVICE}: dropped a 8388608-byte s/ds message unread: over the "
                       "16384-byte limit (1 dropped so far)"], dropped  # once per burst
    assert sum("for another device (x)" in line or "ignored 3999 more lines" in line
               for line in lines) == 2, lines
    assert agent.stop() == 0


def test_flood_of_sds_is_shed_without_stalling_the_device(tmp_path, mosquitto, recorder,
                                                           agent_factory):
    agent = start(tmp_path, mosquitto, agent_factory)
    pid = device(agent)["pid"]
    client = publisher(mosquitto.port)
    started = time.monotonic()
    try:
        big = (f"510,someone-else\n" * 900).encode()[:16000]
        for i in range(3000):
            payload = (big if i % 10 == 0 else
                       b"\xff\xfe,5,\x00" if i % 3 == 0 else f"511,{XID},ls {i}".encode())
            client.publish("s/ds", payload, qos=0)
        last = client.publish("s/e", "41,flood over", qos=1)
        last.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    flood_s = time.monotonic() - started
    wait_until(lambda: device(agent)["inbound_dropped"] > 0, 10, what="the flood shed")
    assert_survived(agent, recorder, pid)
    status = device(agent)
    # The budget is 32 KiB/s (at least 1 KiB a message): the rest was shed unread.
    admitted_at_most = 32 * (1 + flood_s + 10)
    assert 3001 - admitted_at_most <= status["inbound_dropped"] <= 3001, (status, flood_s)
    lines = assert_well_formed(agent, max_lines=60)
    assert sum("more than 32768 bytes/s" in line for line in lines) == 1, lines
    assert agent.stop() == 0


def test_injected_text_cannot_forge_log_lines(tmp_path, mosquitto, recorder, agent_factory):
    agent = start(tmp_path, mosquitto, agent_factory)
    pid = device(agent)["pid"]
    nasty = [FORGERY.encode(), b"\r<0>supervisor: FORGED-CR", b"\x1b[2J\x1b[31mred\x07",
             "line\u2028<1>sep\x85<1>nel".encode(), b"\xff\xfe\xfd not utf-8\x00nul",
             b"41," + b"y" * 2000]
    for payload in nasty:
        publish.single("s/e", payload, qos=1, hostname="127.0.0.1", port=mosquitto.port)
    malformed = ['510,"evil\n<0>supervisor: FORGED-ID"', '"unterminated\n<0>x',
                 f"5l0,{XID}", "\x00\xff,,,\"", f"999,{XID},\x1b]0;title\x07", "510",
                 f'511,{XID},"a\nb"\n510,other\r\n\r\n<2>{DEVICE}: FORGED-LINE']
    for payload in malformed:
        publish.single("s/ds", payload, qos=1, hostname="127.0.0.1", port=mosquitto.port)
    wait_until(lambda: "FORGED-LINE" in agent.log_text(), 10, what="the last payload logged")
    assert_survived(agent, recorder, pid)
    lines = assert_well_formed(agent, max_lines=40)
    text = "\n".join(lines)
    assert "hello\\n<0>supervisor: FORGED" in text
    assert "\\r<0>supervisor: FORGED-CR" in text
    assert "\\x1b[2J\\x1b[31mred\\x07" in text and "\x1b" not in text
    assert "line\\u2028<1>sep\\x85<1>nel" in text
    assert "\ufffd\ufffd\ufffd not utf-8\\x00nul" in text
    assert "y" * 300 not in text and "more bytes)" in text  # truncated
    assert "evil\\n<0>supervisor: FORGED-ID" in text
    assert not any(line.startswith(("<0>", "<1>", "<2>")) for line in lines)
    assert not upstream_restart(recorder)
    assert agent.stop() == 0


def upstream_restart(recorder) -> list[str]:
    return [line for line in recorder.lines()
            if line.startswith(("501,c8y_Restart", "502,c8y_Restart", "503,c8y_Restart"))]


# --- the formatter and the per-payload cap, in-process ---------------------------------------

def format_record(message: str, *args, exc: BaseException | None = None) -> str:
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, message, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    return logs.SyslogPrefixFormatter("dev").format(record)


@fuzz_settings(examples_in_make_test=300)
@given(st.text(), st.binary())
def test_no_message_makes_more_than_one_line(text, data):
    for output in (format_record(text), format_record("%s %s", text, data),
                   format_record("s/e: %s", logs.external(data)), format_record(text[:50] * 500)):
        assert len(output.splitlines()) == 1 and output.startswith("<4>dev: ")
        assert len(output) <= logs.MAX_LINE_CHARS + 100
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", output)


def test_our_traceback_keeps_a_prefix_on_every_line():
    try:
        raise ValueError(FORGERY + "\x1b")
    except ValueError as exc:
        output = format_record("failed: %s", "x\ny", exc=exc)
    lines = output.split("\n")
    assert lines[0] == "<4>dev: failed: x\\ny"
    assert len(lines) > 3 and all(line.startswith("<4>") for line in lines)
    assert "<4><0>supervisor: FORGED\\x1b" in lines  # a line of the exception, prefixed


def test_external_decodes_cuts_and_escapes():
    assert logs.external(b"a\nb") == "a\\nb"
    assert logs.external(b"\xff" * 3) == "\ufffd" * 3
    assert logs.external(b"x" * 250, limit=200) == "x" * 200 + "…(50 more bytes)"
    assert logs.external("é" * 300, limit=10) == "é" * 5 + "…(590 more bytes)"
    assert logs.external(None) == ""


def test_unformattable_message_still_gives_one_line():
    output = format_record("%d and\n%s", "not a number")
    assert output.startswith("<4>dev: '%d and\\n%s'") and "\n" not in output


class _Buffer:
    def __init__(self):
        self.meta = {}

    def get_meta(self, key):
        return self.meta.get(key)

    def set_meta(self, key, value):
        self.meta[key] = value


def test_one_payload_logs_at_most_a_few_lines(caplog):
    operations = Operations(XID, _Buffer())
    payload = (b"5,x\n" * 3000 + b"510,other\n" * 3000 + f"999,{XID}\n".encode() * 3000
               + b'"bad\n' * 10)
    with caplog.at_level(logging.INFO):
        operations.handle(payload, lambda line, on_ack: None)
    assert len(caplog.records) == 4, [r.getMessage()[:80] for r in caplog.records]
    assert operations.ignored_lines == 9005  # 5 lines of `"bad`: quotes span newlines
    assert "ignored 9002 more lines" in caplog.records[-1].getMessage()

