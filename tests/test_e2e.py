"""The whole agent as real processes against a private mosquitto: register, publish,
survive a killed child, stop cleanly; keep data while the broker is away."""

from __future__ import annotations

import os
import signal
import time

from conftest import Mosquitto, Recorder, free_port, wait_until, write_config

NAMES = ("pv-roof", "heatpump", "grid-meter")


def measurement_count(recorder: Recorder, device_type: str) -> int:
    return sum(1 for line in recorder.lines()
               if line.startswith("201,") and line.split(",")[1] == device_type)


def test_three_devices_register_publish_and_stop(tmp_path, mosquitto, recorder, agent_factory):
    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, mosquitto.port, status_port), status_port)
    agent.start()
    wait_until(lambda: all(d["connected"] for d in agent.devices().values())
               and len(agent.devices()) == 3, 15, what="three devices online")
    lines = recorder.lines()
    for name in NAMES:
        assert any(line.startswith(f"100,{name},c8ysim_") for line in lines), lines
    for template in ("110,", "114,c8y_Restart", "117,10", "500"):
        assert sum(1 for line in lines if line.startswith(template)) == 3, (template, lines)
    wait_until(lambda: sum(1 for line in recorder.lines() if line.startswith("201,")) >= 9, 10,
               what="measurements from every device")
    assert set(agent.devices()) == set(NAMES)
    # a steady device shows its counters with its next beat, within 5 s
    wait_until(lambda: all(d["state"] == "running" and d["sent"] > 0
                           for d in agent.devices().values()), 6,
               what="every device running with measurements sent")

    children = agent.child_pids()
    assert len(children) == 3
    assert agent.stop() == 0
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_free(pid)


def _is_zombie_free(pid: int) -> bool:
    try:
        return "State:\tZ" not in open(f"/proc/{pid}/status").read()
    except OSError:
        return True


def test_killed_child_is_back_and_publishing_within_10_s(tmp_path, mosquitto, recorder,
                                                         agent_factory):
    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, mosquitto.port, status_port), status_port)
    agent.start()
    wait_until(lambda: all(d["connected"] for d in agent.devices().values()), 15,
               what="devices online")
    victim = agent.devices()["heatpump"]["pid"]
    registrations = sum(1 for line in recorder.lines() if line.startswith("100,heatpump,"))
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    def back():
        device = agent.devices()["heatpump"]
        return device["pid"] not in (None, victim) and device["connected"]

    wait_until(back, 10, what="the heatpump child to come back")
    wait_until(lambda: sum(1 for line in recorder.lines()
                           if line.startswith("100,heatpump,")) > registrations,
               10 - (time.monotonic() - killed_at), what="re-registration")
    sent_before = agent.devices()["heatpump"]["sent"]
    wait_until(lambda: agent.devices()["heatpump"]["sent"] > sent_before, 7,
               what="the new child to publish")  # shown with its next beat, within 5 s
    assert agent.devices()["heatpump"]["restarts"] == 1
    assert agent.stop() == 0


def test_offline_agent_buffers_and_delivers_the_backlog(tmp_path, agent_factory):
    # The recorder holds a persistent session on a persistent broker, so everything the
    # agent publishes after the restart is kept for it, however quickly the agent is back.
    broker = Mosquitto(tmp_path, persistent=True).start()
    recorder = Recorder(broker.port, persistent=True)
    wait_until(lambda: recorder.client.is_connected(), 5, what="recorder")
    time.sleep(0.3)  # SUBACK
    recorder.close()
    broker.stop()

    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, broker.port, status_port, interval_s=0.2),
                          status_port)
    agent.start()
    try:
        wait_until(lambda: all((d.get("queued") or 0) >= 10 for d in agent.devices().values()),
                   15, what="a backlog while the broker is down")
        assert not any(d["connected"] for d in agent.devices().values())
        broker.start()
        backlog = {name: d["queued"] for name, d in agent.devices().items()}
        wait_until(lambda: all(d["connected"] for d in agent.devices().values()), 15,
                   what="reconnect after the broker started")
        wait_until(lambda: all(d["sent"] >= backlog[name]
                               for name, d in agent.devices().items()), 15,
                   what="the backlog to drain")
        recorder = Recorder(broker.port, persistent=True)
        by_type: dict[str, list[str]] = {}
        wait_until(lambda: _measurements_by_type(recorder, by_type, backlog), 10,
                   what="the backlog at the subscriber")
        for times in by_type.values():
            assert times == sorted(set(times)), "out of order or duplicated"
        assert agent.stop() == 0
    finally:
        recorder.close()
        broker.stop()


def _measurements_by_type(recorder: Recorder, by_type: dict, backlog: dict) -> bool:
    by_type.clear()
    for line in recorder.lines():
        if line.startswith("201,"):
            fields = line.split(",")
            by_type.setdefault(fields[1], []).append(fields[2])
    return len(by_type) == 3 and min(map(len, by_type.values())) >= min(backlog.values())


def test_stop_takes_children_down_even_when_one_ignores_term(tmp_path, mosquitto,
                                                           agent_factory):
    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, mosquitto.port, status_port), status_port)
    agent.start()
    wait_until(lambda: len(agent.child_pids()) == 3, 10, what="three children")
    stuck = agent.child_pids()[0]
    os.kill(stuck, signal.SIGSTOP)  # a hung child: TERM does nothing until KILL
    started = time.monotonic()
    assert agent.stop(timeout=15) == 0
    assert time.monotonic() - started < 10.5
    assert not os.path.exists(f"/proc/{stuck}") or _is_zombie_free(stuck)


def test_readings_keep_their_pace_while_the_broker_refuses(tmp_path, agent_factory):
    """Failed connect attempts must not stall the tick loop (no broker on the port)."""
    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, free_port(), status_port, interval_s=0.2),
                          status_port).start()
    wait_until(lambda: all((d.get("queued") or 0) >= 1 for d in agent.devices().values()), 10,
               what="first readings")
    before = {name: d["queued"] for name, d in agent.devices().items()}
    time.sleep(6.0)
    after = {name: d["queued"] for name, d in agent.devices().items()}
    for name in NAMES:
        assert after[name] - before[name] >= 24, (name, before[name], after[name])  # of ~30
    assert agent.stop() == 0
