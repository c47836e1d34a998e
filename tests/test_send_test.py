"""`c8ysim send-test`: through the device's own buffer and session, bad topics refused."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, Recorder, free_port, wait_until, write_config


def send_test(config, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "c8ysim", "send-test", "--config", str(config),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=30)


def test_message_goes_out_through_the_device_session(tmp_path, mosquitto, agent_factory):
    status_port = free_port()
    config = write_config(tmp_path, mosquitto.port, status_port)
    agent = agent_factory(config, status_port).start()
    recorder = Recorder(mosquitto.port, topics=("c8ysim/test",))
    try:
        wait_until(lambda: recorder.client.is_connected(), 5, what="recorder")
        wait_until(lambda: agent.devices()["grid-meter"]["connected"], 15, what="online")
        result = send_test(config, "--device", "grid-meter", "--topic", "c8ysim/test",
                           "--message", "hello, grid")
        assert result.returncode == 0, result.stderr
        wait_until(lambda: recorder.messages, 10, what="the test message")
        assert recorder.messages == [("c8ysim/test", b"hello, grid")]
    finally:
        recorder.close()
    assert agent.stop() == 0


def test_wildcards_unknown_devices_and_huge_messages_are_refused(tmp_path):
    config = write_config(tmp_path, free_port(), free_port())
    for args, message in [
        (("--device", "pv-roof", "--topic", "s/+"), "no '+', '#'"),
        (("--device", "pv-roof", "--topic", "s/#"), "no '+', '#'"),
        (("--device", "pv-roof", "--topic", "$SYS/x"), "reserved"),
        (("--device", "nope", "--topic", "s/us"), "no device 'nope'"),
    ]:
        result = send_test(config, *args, "--message", "x")
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = send_test(config, "--device", "pv-roof", "--topic", "s/us", "--message", "x" * 16001)
    assert result.returncode == 2 and "payload limit" in result.stderr
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").iterdir())
