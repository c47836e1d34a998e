"""Energy registers live in the device's durable state: they never go back across a stop,
a start or a killed child."""

from __future__ import annotations

import os
import signal

from conftest import free_port, wait_until, write_config

REGISTERS = ("c8y_ThreePhaseEnergyMeasurement.A+", "c8y_ThreePhaseEnergyMeasurement.A-",
             "c8y_SinglePhaseEnergyMeasurement.A+", "c8y_SinglePhaseEnergyMeasurement.A-")


def registers(agent) -> dict:
    found = {}
    for name, device in agent.devices().items():
        reading = device.get("last_reading") or {}
        found.update({(name, key): reading[key] for key in REGISTERS if key in reading})
    return found


def test_registers_never_decrease_across_restarts(tmp_path, mosquitto, agent_factory):
    status_port = free_port()
    config = write_config(tmp_path, mosquitto.port, status_port, interval_s=0.2)
    agent = agent_factory(config, status_port).start()
    # PV exports (A-), the heat pump imports (A+), the grid meter has both
    wait_until(lambda: len(registers(agent)) == 4, 10, what="registers of all devices")
    grid_import = ("grid-meter", "c8y_ThreePhaseEnergyMeasurement.A+")
    wait_until(lambda: registers(agent)[grid_import] > 0, 20, what="grid import to count")
    os.kill(agent.devices()["grid-meter"]["pid"], signal.SIGKILL)
    before_kill = registers(agent)
    wait_until(lambda: agent.devices()["grid-meter"]["state"] == "running"
               and agent.devices()["grid-meter"]["last_reading"] is not None, 10,
               what="grid meter back")
    assert agent.stop() == 0

    again = agent_factory(config, status_port).start()
    wait_until(lambda: len(registers(again)) == 4, 10, what="registers after the restart")
    after = registers(again)
    for key, value in before_kill.items():
        assert after[key] >= value, (key, value, after[key])
    assert again.stop() == 0
