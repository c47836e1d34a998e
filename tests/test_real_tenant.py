"""Issue 15, "meet a real tenant": what a real Cumulocity does that mosquitto never does, with
the real agent against the strict fake tenant.

- a PUBACK is not acceptance: lines the platform refuses on `s/e` are counted per device
  (/api/status, /metrics, the status page), `41,100,Device already existing` on a
  reconnect is not;
- CONNACK 5 may be transient overload: retried a few seconds apart, not auth_failed at once
  (CONNACK 4 is);
- every operation addressed to a device ends: the unsupported ones FAILED (501, 502), once
  per delivery, also across a lost connection and the 500 after it.
"""

from __future__ import annotations

import html
import re
import time

from conftest import free_port, wait_until, write_config
from test_protocol import CLIENTS, templates, tenant  # noqa: F401 (tenant: a fixture)

PV, HP, GRID = CLIENTS
NOT_SUPPORTED = "{} is not supported by c8ysim"


def answers(tenant, client) -> list[str]:
    """The operation status lines (501-503) the client published, as text."""
    return [",".join(fields) for fields in tenant.lines(client)
            if fields[0] in ("501", "502", "503")]


def start_agent(tmp_path, port, agent_factory, devices=None, reconnect_max_s=2,
                interval_s=0.5, extra=""):
    status_port = free_port()
    config = write_config(tmp_path, port, status_port, interval_s=interval_s, devices=devices,
                          extra=extra)
    config.write_text(config.read_text().replace(
        "reconnect_max_s: 2}", f"reconnect_max_s: {reconnect_max_s}}}"))
    return agent_factory(config, status_port).start()


def all_online(agent) -> bool:
    return all(d["connected"] for d in agent.devices().values())


def metric(agent, name: str, device: str) -> float | None:
    found = re.search(rf'^{name}{{device="{device}"}} (\S+)$', agent.get("/metrics").decode(),
                      re.M)
    return float(found[1]) if found else None


def assert_clean(tenant) -> None:
    assert tenant.violations == [], tenant.violations
    assert tenant.internal_errors == [], tenant.internal_errors


# --- a PUBACK is not acceptance (reference §3.4) ---------------------------------------------

def test_rejected_lines_are_counted_shown_and_41_100_is_not(tmp_path, tenant, agent_factory):
    refusal = "45,201,Value is not a number"
    tenant.reject_lines(lambda key, fields: key == PV and fields[0] == "201", refusal, count=3)
    agent = start_agent(tmp_path, tenant.port, agent_factory)
    wait_until(lambda: all_online(agent), 15, what="devices online")
    wait_until(lambda: agent.devices()["pv-roof"]["rejected"] == 3, 10,
               what="3 rejections on /api/status")
    devices = agent.devices()
    assert tenant.rejected_lines(PV)[0].startswith("201,") and len(tenant.rejected_lines(PV)) == 3
    pv = devices["pv-roof"]
    assert [line for _when, line in pv["rejections"]] == [refusal] * 3
    assert all(abs(when - time.time()) < 30 for when, _line in pv["rejections"])
    assert devices["heatpump"]["rejected"] == 0 and devices["grid-meter"]["rejected"] == 0
    assert devices["heatpump"]["rejections"] == []
    assert metric(agent, "c8ysim_rejected_total", "pv-roof") == 3
    assert metric(agent, "c8ysim_rejected_total", "heatpump") == 0
    page = html.unescape(agent.get("/").decode())
    assert "rejected by the platform" in page and refusal in page
    assert "Cumulocity rejected 1 line(s) it had acknowledged" in agent.log_text()
    # the first three readings were refused: their rows left the buffer on PUBACK all the same
    assert templates(tenant, PV).count("201") >= 3 and pv["queued"] <= 3

    # A reconnect answers the 100 with 41,100 "Device already existing": not a rejection.
    for client in CLIENTS:
        assert tenant.drop(client)
    expected = b"41,100,Device already existing"
    wait_until(lambda: all(sum(r.topic == "s/e" and r.payload == expected
                               for r in tenant.sent(c)) == 1 for c in CLIENTS), 15,
               what="41,100 sent to every device after its reconnect")
    wait_until(lambda: all_online(agent), 15, what="devices back online")
    time.sleep(2.5)  # two heartbeats after the 41,100 arrived
    devices = agent.devices()
    assert {name: d["rejected"] for name, d in devices.items()} == \
        {"pv-roof": 3, "heatpump": 0, "grid-meter": 0}
    assert all(d["reconnects"] == 1 for d in devices.values())
    assert metric(agent, "c8ysim_rejected_total", "heatpump") == 0
    assert agent.stop() == 0
    assert_clean(tenant)


# --- CONNACK 5 (reference §1.9) ---------------------------------------------------------------

def connect_codes(tenant, client) -> list[int]:
    return [r.rc for r in tenant.records(client) if r.kind == "connect"]


def test_connack_5_twice_then_accepted_is_online_within_seconds(tmp_path, tenant,
                                                                agent_factory):
    tenant.refuse_connects(5, count=2)
    # reconnect_max_s 300: were CONNACK 5 taken for bad credentials, the retry would come
    # after 150 s or more
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")],
                        reconnect_max_s=300)
    seen = set()

    def online() -> bool:
        device = agent.devices()["pv-roof"]
        seen.add(device["connection"])
        return device["connected"]

    wait_until(online, 20, interval=0.1, what="online after two CONNACK 5")
    connects = [r for r in tenant.records(PV) if r.kind == "connect"]
    assert [r.rc for r in connects] == [5, 5, 0]
    took = connects[-1].time - connects[0].time
    print(f"\nCONNACK 5, 5, 0: online {took:.1f} s after the first refusal")
    assert 2.0 <= took <= 8.0, took  # two retries, each 1-3 s apart
    assert "auth_failed" not in seen, seen
    log = agent.log_text()
    assert "Not authorized (may be transient; retry 1 of 3)" in log
    assert "retry 2 of 3" in log and "check tenant, user and password" not in log
    assert agent.stop() == 0
    assert_clean(tenant)


def test_connack_5_that_persists_becomes_auth_failed_after_3_retries(tmp_path, tenant,
                                                                     agent_factory):
    tenant.refuse_connects(5)
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")],
                        reconnect_max_s=300)
    wait_until(lambda: agent.devices()["pv-roof"]["connection"] == "auth_failed", 20,
               what="auth_failed after the retries")
    assert connect_codes(tenant, PV) == [5, 5, 5, 5]
    device = agent.devices()["pv-roof"]
    assert "check tenant, user and password" in device["last_error"]
    time.sleep(2.0)  # the next attempt is far away now (near reconnect_max_s)
    assert connect_codes(tenant, PV) == [5, 5, 5, 5]
    assert agent.stop() == 0


def test_connack_4_is_auth_failed_at_once(tmp_path, tenant, agent_factory):
    tenant.refuse_connects(4)
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")],
                        reconnect_max_s=300)
    wait_until(lambda: agent.devices()["pv-roof"]["connection"] == "auth_failed", 10,
               what="auth_failed")
    time.sleep(2.0)
    assert connect_codes(tenant, PV) == [4]
    assert agent.stop() == 0


# --- every operation ends (reference §6) ------------------------------------------------------

def statuses(tenant, client) -> list[str]:
    return [op.status for op in tenant.operations(client)]


def refusal(fragment: str) -> list[str]:
    return [f"501,{fragment}", f"502,{fragment},{NOT_SUPPORTED.format(fragment)}"]


def test_unsupported_operations_end_failed_in_order(tmp_path, tenant, agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory)
    wait_until(lambda: all_online(agent), 15, what="devices online")
    tenant.send_operation(PV, f"522,{PV},syslog,2026-01-01T00:00:00Z,2026-01-02T00:00:00Z,,100")
    tenant.send_operation(PV, f"515,{PV},c8ysim,2.0,http://example.invalid/fw.bin")
    tenant.send_operation(PV, f"519,{PV},OPEN,CLOSED")
    tenant.send_operation(HP, f"522,{HP},syslog")
    wait_until(lambda: statuses(tenant, PV) == ["FAILED"] * 3 and
               statuses(tenant, HP) == ["FAILED"], 15, what="all four FAILED")
    ops = tenant.operations(PV)
    assert [op.failure_reason for op in ops] == [
        NOT_SUPPORTED.format(f) for f in ("c8y_LogfileRequest", "c8y_Firmware", "c8y_RelayArray")]
    assert answers(tenant, PV) == (refusal("c8y_LogfileRequest") + refusal("c8y_Firmware")
                                   + refusal("c8y_RelayArray"))
    assert answers(tenant, HP) == refusal("c8y_LogfileRequest")
    assert answers(tenant, GRID) == []
    # a template without an operation fragment is ignored, and counted
    tenant.send_operation(PV, f"520,{PV}")
    wait_until(lambda: agent.devices()["pv-roof"]["inbound_ignored"] == 1, 5,
               what="520 ignored")
    assert statuses(tenant, PV)[-1] == "PENDING"
    assert agent.stop() == 0
    assert_clean(tenant)


def test_an_operation_pending_while_offline_is_answered_once_after_the_500(
        tmp_path, tenant, agent_factory):
    tenant.send_operation(PV, f"522,{PV},syslog")  # created before the device connects
    tenant.send_operation(PV, f"515,{PV},fw,1,u")
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")])
    wait_until(lambda: statuses(tenant, PV) == ["FAILED", "FAILED"], 15,
               what="both FAILED after the 500")
    assert [op.deliveries for op in tenant.operations(PV)] == [1, 1]
    for _ in range(2):  # reconnects and their 500s: nothing PENDING is left to deliver
        sessions = templates(tenant, PV).count("500")
        assert tenant.drop(PV)
        wait_until(lambda: templates(tenant, PV).count("500") > sessions, 15,
                   what="a reconnect with its 500")
    time.sleep(1.0)
    assert answers(tenant, PV) == refusal("c8y_LogfileRequest") + refusal("c8y_Firmware")
    assert [op.deliveries for op in tenant.operations(PV)] == [1, 1]
    assert agent.stop() == 0
    assert_clean(tenant)


def test_an_answer_cut_by_a_lost_connection_is_finished_after_it(tmp_path, tenant,
                                                                 agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")])
    wait_until(lambda: agent.devices()["pv-roof"]["connected"], 15, what="online")
    tenant.withhold_puback(PV, True)  # the 501 arrives, its PUBACK never does
    tenant.send_operation(PV, f"522,{PV},syslog")
    tenant.send_operation(PV, f"515,{PV},fw,1,u")  # queued behind it: nothing sent for it
    wait_until(lambda: statuses(tenant, PV) == ["EXECUTING", "PENDING"], 10,
               what="the 501 processed")
    assert tenant.drop(PV)
    tenant.withhold_puback(PV, False)
    wait_until(lambda: statuses(tenant, PV) == ["FAILED", "FAILED"], 15,
               what="the 502 after the reconnect, the 515 after the 500")
    time.sleep(1.0)
    # 522: its 501 once, its 502 on the new connection; 515: delivered again by the 500
    assert answers(tenant, PV) == refusal("c8y_LogfileRequest") + refusal("c8y_Firmware")
    assert [op.deliveries for op in tenant.operations(PV)] == [1, 2]
    assert agent.stop() == 0
    assert_clean(tenant)


def test_unsupported_answers_survive_a_restart_of_the_device(tmp_path, tenant, agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, devices=[("pv-roof", "pv")])
    wait_until(lambda: agent.devices()["pv-roof"]["connected"], 15, what="online")
    for line in (f"522,{PV},syslog", f"510,{PV}", f"515,{PV},fw,1,u"):
        tenant.send_operation(PV, line)
    wait_until(lambda: statuses(tenant, PV) == ["FAILED", "SUCCESSFUL", "FAILED"], 25,
               what="every operation of the payload ended")
    assert agent.devices()["pv-roof"]["restarts"] == 1
    lines = answers(tenant, PV)
    for fragment in ("c8y_LogfileRequest", "c8y_Firmware"):
        assert [line for line in lines if fragment in line] == refusal(fragment)
    assert [line for line in lines if "c8y_Restart" in line] == \
        ["501,c8y_Restart", "503,c8y_Restart"]
    assert lines.index("501,c8y_LogfileRequest") < lines.index("501,c8y_Restart")
    assert agent.stop() == 0
    assert_clean(tenant)
