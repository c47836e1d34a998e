"""Issue 16, scenarios on demand: the real agent driven from the strict fake tenant
(c8y_Command, c8y_Configuration, c8y_MeasurementRequestOperation) and from the YAML's
schedule; each operation ends, also across a kill -9; a comms_loss loses nothing.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

from conftest import wait_until
from test_protocol import CLIENTS, templates, tenant  # noqa: F401 (tenant: a fixture)
from test_real_tenant import all_online, answers, assert_clean, start_agent, statuses

PV, HP, GRID = CLIENTS
BAD_SETTINGS = "peak_kw: 9\ntilt_deg: steep\nfoo: 1\n"
SUPPORTED = ["c8y_Restart", "c8y_Command", "c8y_Configuration",
             "c8y_MeasurementRequestOperation"]


def quoted(text: str) -> str:
    """A SmartREST field as the platform sends it: quoted, raw newlines kept."""
    return '"' + text.replace('"', '""') + '"'


def results(tenant, client) -> list[tuple[str, str | None, list[str]]]:
    return [(op.status, op.failure_reason, op.result) for op in tenant.operations(client)]


def ended(tenant, client, count: int) -> bool:
    ops = tenant.operations(client)
    return len(ops) == count and all(op.status in ("SUCCESSFUL", "FAILED") for op in ops)


def series_at(tenant, client, fragment: str, series: str) -> list[tuple[float, float]]:
    """(epoch, value) of one series in every measurement the client sent."""
    found = []
    for meas in tenant.measurements(client):
        for item in meas["series"]:
            if item["fragment"] == fragment and item["series"] == series:
                found.append((datetime.fromisoformat(meas["time"]).timestamp(), item["value"]))
    return found


def alarm_lines(tenant, client, alarm_type: str) -> list[str]:
    return [fields[0] for fields in tenant.lines(client)
            if fields[0] in ("301", "302", "303", "304", "306") and fields[1] == alarm_type]


def test_the_device_declares_its_operations_and_its_settings(tmp_path, tenant, agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")])
    wait_until(lambda: all_online(agent), 15, what="online")
    device = tenant.device(PV)
    assert sorted(device.supported_operations) == sorted(SUPPORTED)
    assert "peak_kw: 5" in device.configuration and "interval_s: 0.5" in device.configuration
    assert agent.stop() == 0
    assert_clean(tenant)


def test_commands_answer_with_their_result_or_what_is_allowed(tmp_path, tenant, agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")])
    wait_until(lambda: all_online(agent), 15, what="online")
    for text in ("help", "status", "launch rockets", "fault meltdown", "fault inverter_trip 5y",
                 '"; rm -rf / #', "weather sunny", "clear inverter_trip", "x" * 300):
        tenant.send_operation(PV, f"511,{PV},{quoted(text)}")
    wait_until(lambda: ended(tenant, PV, 9), 20, what="nine commands ended")
    got = results(tenant, PV)
    assert got[0][0] == "SUCCESSFUL" and "fault <name>" in got[0][2][0]
    assert got[1][0] == "SUCCESSFUL" and "pv-roof (pv, c8ysim-pv-roof)" in got[1][2][0]
    assert got[2][0] == "FAILED" and "unknown command 'launch'" in got[2][1]
    assert got[3][0] == "FAILED" and "inverter_trip, comms_loss" in got[3][1]
    assert got[4][0] == "FAILED" and "not a duration like 30s" in got[4][1]
    assert got[5][0] == "FAILED" and "unknown command" in got[5][1]
    assert got[6][0] == "FAILED" and "weather <clear|cloudy|overcast>" in got[6][1]
    assert got[7][0] == "FAILED" and "no inverter_trip" in got[7][1]
    assert got[8][0] == "FAILED" and "over-long" in got[8][1]
    assert agent.stop() == 0
    assert_clean(tenant)


def test_a_fault_from_the_shell_raises_its_alarm_once_and_clears_it(tmp_path, tenant,
                                                                    agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory)
    wait_until(lambda: all_online(agent), 15, what="online")
    tenant.send_operation(HP, f"511,{HP},fault compressor_fault")  # until cleared
    wait_until(lambda: ended(tenant, HP, 1), 10, what="the fault command")
    status, _, result = results(tenant, HP)[0]
    assert status == "SUCCESSFUL" and "compressor_fault on heatpump" in result[0], result
    wait_until(lambda: alarm_lines(tenant, HP, "c8ysim_CompressorFault") == ["302"], 10,
               what="the alarm")
    wait_until(lambda: [f[0] for f in agent.devices()["heatpump"]["faults"]]
               == ["compressor_fault"], 5, what="the fault on the status page")
    since = time.time()
    time.sleep(1.5)
    assert [value for t, value in series_at(tenant, HP, "c8ysim_ThermalPower", "heat")
            if t > since] and all(value == 0 for t, value in series_at(
                tenant, HP, "c8ysim_ThermalPower", "heat") if t > since)
    tenant.send_operation(HP, f"511,{HP},clear compressor_fault")
    wait_until(lambda: ended(tenant, HP, 2), 10, what="the clear command")
    wait_until(lambda: alarm_lines(tenant, HP, "c8ysim_CompressorFault") == ["302", "306"], 10,
               what="the alarm cleared")
    wait_until(lambda: agent.devices()["heatpump"]["faults"] == [], 5, what="no fault shown")
    time.sleep(1.5)
    assert alarm_lines(tenant, HP, "c8ysim_CompressorFault") == ["302", "306"]
    assert "compressor_fault on heatpump started" in agent.log_text()
    assert "compressor_fault on heatpump ended" in agent.log_text()
    assert agent.stop() == 0
    assert_clean(tenant)


def test_a_measurement_request_is_answered_with_a_reading_within_a_second(
        tmp_path, tenant, agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("grid-meter", "grid")],
                        interval_s=60)
    wait_until(lambda: all_online(agent), 15, what="online")
    time.sleep(0.5)
    before = len(tenant.measurements(GRID))
    latencies = []
    for _ in range(3):
        count = len(tenant.measurements(GRID))
        sent = time.monotonic()
        tenant.send_operation(GRID, f"517,{GRID},")
        wait_until(lambda: len(tenant.measurements(GRID)) > count, 5, what="the reading")
        latencies.append(time.monotonic() - sent)
        wait_until(lambda: tenant.operations(GRID)[-1].status == "SUCCESSFUL", 5,
                   what="503")
    print(f"\n517 to its reading at the tenant: {[round(x, 3) for x in latencies]} s")
    assert max(latencies) < 1.0, latencies
    assert len(tenant.measurements(GRID)) - before == 3  # one each, no regular one in 60 s
    assert answers(tenant, GRID) == ["501,c8y_MeasurementRequestOperation",
                                     "503,c8y_MeasurementRequestOperation"] * 3
    assert agent.stop() == 0
    assert_clean(tenant)


def test_configuration_applies_persists_and_refuses_naming_the_line(tmp_path, tenant,
                                                                   agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv"),
                                                                       ("grid-meter", "grid")])
    wait_until(lambda: all_online(agent), 15, what="online")
    text = tenant.device(PV).configuration.replace("peak_kw: 5", "peak_kw: 8.5")
    tenant.send_operation(PV, f"513,{PV},{quoted(text)}")
    tenant.send_operation(PV, f"513,{PV},{quoted(BAD_SETTINGS)}")
    wait_until(lambda: ended(tenant, PV, 2), 10, what="both configurations")
    (ok, _, _), (failed, reason, _) = results(tenant, PV)
    assert ok == "SUCCESSFUL" and failed == "FAILED"
    assert "line 2: configuration.tilt_deg must be a number" in reason, reason
    assert "line 3: unknown key 'foo'" in reason, reason
    wait_until(lambda: "peak_kw: 8.5" in tenant.device(PV).configuration, 5, what="a new 113")
    wait_until(lambda: agent.devices()["pv-roof"]["overrides"] == {"peak_kw": 8.5}, 5,
               what="the override on the status page")
    assert agent.stop() == 0
    # a new agent: the setting survives, the 113 at connect says so
    tenant.device(PV).configuration = None
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv"),
                                                                       ("grid-meter", "grid")])
    wait_until(lambda: (tenant.device(PV).configuration or "").count("peak_kw: 8.5") == 1, 15,
               what="the stored setting in the 113")
    assert agent.devices()["pv-roof"]["overrides"] == {"peak_kw": 8.5}
    # the file's own value again ends the override
    tenant.send_operation(PV, f"513,{PV},\"peak_kw: 5\"")
    wait_until(lambda: ended(tenant, PV, 3), 10, what="the third configuration")
    assert results(tenant, PV)[2][2] == ["all settings as in the YAML file"]
    wait_until(lambda: agent.devices()["pv-roof"]["overrides"] is None, 5, what="no override")
    # the interval too: readings every 0.25 s from now on
    tenant.send_operation(PV, f"513,{PV},\"interval_s: 0.25\"")
    wait_until(lambda: ended(tenant, PV, 4), 10, what="the fourth configuration")
    since = time.time() + 0.5
    time.sleep(2.0)
    times = sorted(t for t, _ in series_at(tenant, PV, "c8y_SinglePhaseEnergyMeasurement", "P-")
                   if t > since)
    assert len(times) >= 5 and {round(b - a, 3) for a, b in zip(times, times[1:])} == {0.25}
    assert agent.stop() == 0
    assert_clean(tenant)


def test_kill_9_during_an_operation_never_leaves_it_executing(tmp_path, tenant, agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")])
    wait_until(lambda: all_online(agent), 15, what="online")
    tenant.withhold_puback(PV, True)  # the 501 arrives; the device never hears it did
    tenant.send_operation(PV, f"511,{PV},fault inverter_trip 1h")
    wait_until(lambda: statuses(tenant, PV) == ["EXECUTING"], 10, what="EXECUTING")
    child = agent.devices()["pv-roof"]["pid"]
    os.kill(child, signal.SIGKILL)
    tenant.withhold_puback(PV, False)
    wait_until(lambda: statuses(tenant, PV) == ["FAILED"], 30, what="FAILED after the restart")
    assert "Interrupted" in tenant.operations(PV)[0].failure_reason
    # the command never ran (its 501 was never acknowledged): no fault
    assert agent.devices()["pv-roof"]["faults"] == []
    # and the next one runs normally
    tenant.send_operation(PV, f"511,{PV},status")
    wait_until(lambda: statuses(tenant, PV) == ["FAILED", "SUCCESSFUL"], 10, what="next one")
    assert agent.stop() == 0
    assert_clean(tenant)


def test_comms_loss_disconnects_for_its_window_and_delivers_everything(tmp_path, tenant,
                                                                        agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")])
    wait_until(lambda: all_online(agent), 15, what="online")
    tenant.send_operation(PV, f"511,{PV},fault comms_loss 4s")
    wait_until(lambda: statuses(tenant, PV) == ["SUCCESSFUL"], 10, what="answered first")
    wait_until(lambda: agent.devices()["pv-roof"]["connection"] == "comms_loss", 5,
               what="the link down on purpose")
    assert not tenant.is_connected(PV)
    down = time.time()
    wait_until(lambda: agent.devices()["pv-roof"]["connected"], 15, what="back online")
    assert time.time() - down >= 2.5  # the window, not a quick reconnect
    wait_until(lambda: agent.devices()["pv-roof"]["queued"] == 0, 10, what="drained")
    assert agent.stop() == 0
    times = sorted(t for t, _ in series_at(tenant, PV, "c8y_SinglePhaseEnergyMeasurement", "P-"))
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps and max(gaps) <= 0.5 + 1e-6, max(gaps)  # every slot of the window arrived
    assert "comms_loss: uplink down until" in agent.log_text()
    assert_clean(tenant)


def test_a_scheduled_outage_comes_on_time_and_goes(tmp_path, tenant, agent_factory):
    schedule = ("scenarios:\n"
                "  - {after: 3s, for: 3s, device: grid-meter, fault: outage}\n")
    before = time.time()
    agent = start_agent(tmp_path, tenant.port, agent_factory, extra=schedule)
    after = time.time()
    wait_until(lambda: all_online(agent), 15, what="online")
    wait_until(lambda: alarm_lines(tenant, GRID, "c8ysim_GridOutage") == ["301", "306"], 20,
               what="the outage alarm raised and cleared")
    volts = series_at(tenant, GRID, "c8y_VoltageMeasurement", "voltage:1")
    zero = [t for t, v in volts if v == 0]
    assert zero, volts
    # on time: the window is [start + 3 s, start + 6 s) of the supervisor's clock
    assert before + 3.0 <= min(zero) and max(zero) < after + 6.0, (before, after, zero)
    assert all(v > 0 for t, v in volts if t < min(zero) - 0.01 or t > max(zero) + 0.01)
    # the status page follows within a beat (a beat may wait up to 0.5 s for a reading)
    wait_until(lambda: [d["faults"] for d in agent.devices().values()] == [[], [], []], 5,
               what="the faults gone from the status page")
    text = agent.log_text()
    assert "outage on grid-meter started" in text and "outage on grid-meter ended" in text
    assert agent.stop() == 0
    assert_clean(tenant)


def test_a_reload_applies_new_scenarios_and_keeps_the_time_of_unchanged_ones(
        tmp_path, tenant, agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")])
    wait_until(lambda: all_online(agent), 15, what="online")
    config = tmp_path / "c8ysim.yaml"
    config.write_text(config.read_text() + "scenarios:\n"
                      "  - {after: 1s, for: 1h, weather: overcast}\n")
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: agent.devices()["pv-roof"]["faults"], 15, what="the scenario applied")
    (name, device, end), = agent.devices()["pv-roof"]["faults"]
    assert (name, device) == ("overcast", "") and 3590 < end - time.time() <= 3601
    # an unrelated change and a reload (it restarts the device): the scenario keeps its time
    pid = agent.devices()["pv-roof"]["pid"]
    config.write_text(config.read_text() + "log_level: debug\n")
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: agent.devices()["pv-roof"]["pid"] not in (None, pid)
               and agent.devices()["pv-roof"]["faults"], 15, what="the device back")
    assert agent.devices()["pv-roof"]["faults"][0][2] == end
    assert agent.stop() == 0
    assert_clean(tenant)
