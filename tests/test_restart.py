"""The c8y_Restart operation end to end through a real broker and real processes."""

from __future__ import annotations

import sqlite3
import time

import paho.mqtt.publish as publish

from conftest import free_port, wait_until, write_config

PV = "c8ysim-pv-roof"


def send_operation(port: int, line: str) -> None:
    publish.single("s/ds", line, qos=1, hostname="127.0.0.1", port=port)


def upstream(recorder, prefix: str) -> list[str]:
    return [line for line in recorder.lines() if line.startswith(prefix)]


def start_agent(tmp_path, mosquitto, agent_factory):
    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, mosquitto.port, status_port), status_port)
    agent.start()
    wait_until(lambda: all(d["connected"] for d in agent.devices().values()), 15,
               what="devices online")
    return agent


def test_restart_501_respawn_reregister_503_and_repeat_ignored(tmp_path, mosquitto, recorder,
                                                               agent_factory):
    agent = start_agent(tmp_path, mosquitto, agent_factory)
    pids = {name: d["pid"] for name, d in agent.devices().items()}
    send_operation(mosquitto.port, f"510,{PV}")
    send_operation(mosquitto.port, f"510,{PV}")  # a repeat while it runs: ignored
    wait_until(lambda: upstream(recorder, "503,c8y_Restart"), 15, what="503 after the restart")
    lines = recorder.lines()
    assert upstream(recorder, "501,c8y_Restart") == ["501,c8y_Restart"]
    assert upstream(recorder, "503,c8y_Restart") == ["503,c8y_Restart"]
    first_501 = lines.index("501,c8y_Restart")
    assert "100,pv-roof,c8ysim_PvInverter" in lines[first_501:lines.index("503,c8y_Restart")]
    after = {name: d["pid"] for name, d in agent.devices().items()}
    assert after["pv-roof"] != pids["pv-roof"]
    assert after["heatpump"] == pids["heatpump"] and after["grid-meter"] == pids["grid-meter"]
    # 500 follows the 503 on the new connection
    tail = lines[lines.index("503,c8y_Restart"):]
    assert "500" in tail
    # counted as a restart (status page, /metrics), not as a death: no backoff, no FATAL
    devices = agent.devices()
    assert {name: d["restarts"] for name, d in devices.items()} == \
        {"pv-roof": 1, "heatpump": 0, "grid-meter": 0}
    assert devices["pv-roof"]["state"] in ("starting", "running")
    assert 'c8ysim_restarts_total{device="pv-roof"} 1' in agent.get("/metrics").decode()
    assert agent.stop() == 0


def test_operations_for_other_devices_and_garbage_are_ignored(tmp_path, mosquitto, recorder,
                                                              agent_factory):
    agent = start_agent(tmp_path, mosquitto, agent_factory)
    pids = {name: d["pid"] for name, d in agent.devices().items()}
    for payload in ("510,someone-else", "", "\x00\xff,,,\"", '519,c8ysim-pv-roof,"unterminated',
                    "999," + PV, "510", "x" * 20000, f'519,{PV},"a\nb"\n510,other'):
        send_operation(mosquitto.port, payload)
    # the two 519 lines for pv-roof (one unterminated) are refused, one at a time
    refusal = ["501,c8y_RelayArray",
               "502,c8y_RelayArray,c8y_RelayArray is not supported by c8ysim"]
    wait_until(lambda: len(upstream(recorder, "502,")) == 2, 10, what="both 519 refused")
    time.sleep(1.0)
    assert [line for line in recorder.lines() if line.startswith(("501,", "502,", "503,"))] \
        == refusal * 2
    assert {name: d["pid"] for name, d in agent.devices().items()} == pids
    assert all(d["connected"] for d in agent.devices().values())
    assert "refusing operation 519 (c8y_RelayArray)" in agent.log_text()
    assert "ignoring unsupported operation 999" in agent.log_text()
    assert agent.stop() == 0


def set_marker(tmp_path, device: str, value: str) -> None:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    from c8ysim.config import StorageConfig
    from c8ysim.storage import open_buffer
    buffer = open_buffer(StorageConfig(path=str(state)), device)
    buffer.set_meta("operation.c8y_Restart", value)
    buffer.close()


def marker(tmp_path, device: str):
    db = sqlite3.connect(tmp_path / "state" / f"{device}.sqlite3")
    row = db.execute("SELECT value FROM meta WHERE key = 'operation.c8y_Restart'").fetchone()
    db.close()
    return row[0] if row else None


def test_crash_after_501_acknowledged_ends_in_503(tmp_path, mosquitto, recorder, agent_factory):
    set_marker(tmp_path, "pv-roof", "executing")  # what a crash after 501's PUBACK leaves
    agent = start_agent(tmp_path, mosquitto, agent_factory)
    wait_until(lambda: upstream(recorder, "503,c8y_Restart"), 10, what="503")
    wait_until(lambda: marker(tmp_path, "pv-roof") is None, 5, what="marker cleared")
    assert not upstream(recorder, "502,")
    assert agent.stop() == 0


def test_crash_before_501_acknowledged_ends_in_502(tmp_path, mosquitto, recorder, agent_factory):
    set_marker(tmp_path, "pv-roof", "accepted")  # a crash between 510 and 501's PUBACK
    agent = start_agent(tmp_path, mosquitto, agent_factory)
    wait_until(lambda: upstream(recorder, "502,c8y_Restart"), 10, what="502")
    assert upstream(recorder, "502,c8y_Restart") == [
        "502,c8y_Restart,Agent restarted before the restart could start"]
    lines = recorder.lines()
    assert "500" in lines[lines.index(upstream(recorder, "502,")[0]):]
    wait_until(lambda: marker(tmp_path, "pv-roof") is None, 5, what="marker cleared")
    assert agent.stop() == 0


def test_a_second_restart_within_the_limit_is_refused_with_502(tmp_path, mosquitto, recorder,
                                                               agent_factory):
    agent = start_agent(tmp_path, mosquitto, agent_factory)
    send_operation(mosquitto.port, f"510,{PV}")
    wait_until(lambda: upstream(recorder, "503,c8y_Restart"), 15, what="the first restart")
    wait_until(lambda: marker(tmp_path, "pv-roof") is None, 5, what="marker cleared")
    pid = agent.devices()["pv-roof"]["pid"]
    # one refused at a time: the repeats while it is being refused are ignored
    send_operation(mosquitto.port, f"510,{PV}\n510,{PV}\n510,{PV}")
    wait_until(lambda: upstream(recorder, "502,c8y_Restart"), 10, what="the refusal")
    wait_until(lambda: marker(tmp_path, "pv-roof") is None, 5, what="marker cleared again")
    refusal = upstream(recorder, "502,c8y_Restart")
    assert len(refusal) == 1 and refusal[0].startswith(
        "502,c8y_Restart,Restart refused: the device restarted "), refusal
    assert refusal[0].endswith("(at most one restart per 60 s)")
    assert upstream(recorder, "501,c8y_Restart") == ["501,c8y_Restart"] * 2  # 501 then 502
    assert upstream(recorder, "503,c8y_Restart") == ["503,c8y_Restart"]
    time.sleep(1.0)
    assert agent.devices()["pv-roof"]["pid"] == pid  # not restarted
    assert agent.devices()["pv-roof"]["restarts"] == 1  # the first one only
    assert "refusing c8y_Restart" in agent.log_text()
    assert agent.stop() == 0
