"""The agent against the strict fake tenant: every checker rule of the protocol reference
(§9) holds on the recorded traffic of three devices through first start, outage, cuts,
a killed child and a stop/start; plus the restart operation and refused connects."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import free_port, wait_until, write_config
from fake_tenant import FakeTenant
from fault_proxy import FaultProxy

CLIENTS = ("c8ysim-pv-roof", "c8ysim-heatpump", "c8ysim-grid-meter")
STARTUP = ["100", "110", "114", "117"]


@pytest.fixture
def tenant():
    with FakeTenant({"t1/u": "secret"}) as fake:
        yield fake


def templates(tenant, client) -> list[str]:
    return [fields[0] for fields in tenant.lines(client)]


def measurements(tenant, client) -> int:
    return templates(tenant, client).count("201")


def sessions_ok(tenant, client, sessions: int) -> bool:
    """`sessions` complete registrations (100..117, 500) seen for `client`."""
    return templates(tenant, client).count("500") >= sessions


def check_rules(tenant) -> None:
    assert tenant.violations == [], tenant.violations
    assert tenant.internal_errors == [], tenant.internal_errors
    for client in CLIENTS:
        sequence = templates(tenant, client)
        assert sequence[:4] == STARTUP, sequence[:6]
        # every session starts with 100 and sends 500 before any measurement
        for session in _sessions(sequence):
            assert session[:4] == STARTUP, session[:6]
            if "201" in session:
                assert session.index("500") < session.index("201"), session[:8]
            if "500" in session:  # the device's place on the map, once per registration
                assert session.count("112") == 1, session[:8]
                assert session.index("112") < session.index("500"), session[:8]
        # the site's coordinates (write_config: 52.52, 13.40), as numbers Cumulocity reads
        assert tenant.device(client).position == ["52.52", "13.4"], client


def _sessions(sequence: list[str]) -> list[list[str]]:
    starts = [i for i, t in enumerate(sequence) if t == "100"] + [len(sequence)]
    return [sequence[a:b] for a, b in zip(starts, starts[1:])]


def start_agent(tmp_path, port, agent_factory, interval_s=0.3):
    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, port, status_port, interval_s=interval_s),
                          status_port)
    agent.start()
    wait_until(lambda: all(d["connected"] for d in agent.devices().values()), 15,
               what="devices online")
    return agent


def test_checker_rules_hold_through_outage_cuts_kill_and_restart(tmp_path, tenant,
                                                                 agent_factory):
    proxy = FaultProxy(tenant.port)
    try:
        agent = start_agent(tmp_path, proxy.port, agent_factory)
        wait_until(lambda: all(measurements(tenant, c) >= 3 for c in CLIENTS), 10,
                   what="first measurements")
        check_rules(tenant)

        proxy.refuse(True)  # the broker goes away ...
        proxy.cut()
        wait_until(lambda: not any(d["connected"] for d in agent.devices().values()), 10,
                   what="devices offline")
        wait_until(lambda: all(d["queued"] >= 5 for d in agent.devices().values()), 10,
                   what="a backlog")
        proxy.refuse(False)  # ... and comes back
        wait_until(lambda: all(sessions_ok(tenant, c, 2) for c in CLIENTS), 20,
                   what="second sessions")

        for _ in range(3):  # connection cuts (RST)
            before = {c: templates(tenant, c).count("500") for c in CLIENTS}
            proxy.cut()
            wait_until(lambda: all(templates(tenant, c).count("500") > before[c]
                                   for c in CLIENTS), 20, what="reconnect after a cut")

        victim = agent.devices()["heatpump"]["pid"]
        before = templates(tenant, "c8ysim-heatpump").count("500")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: templates(tenant, "c8ysim-heatpump").count("500") > before, 15,
                   what="the killed child to come back")

        assert agent.stop() == 0
        agent = start_agent(tmp_path, proxy.port, agent_factory)
        assert agent.stop() == 0
        check_rules(tenant)
    finally:
        proxy.close()


def test_no_measurement_lost_or_reordered_over_outage(tmp_path, tenant, agent_factory):
    proxy = FaultProxy(tenant.port)
    try:
        agent = start_agent(tmp_path, proxy.port, agent_factory, interval_s=0.2)
        proxy.refuse(True)
        proxy.cut()
        wait_until(lambda: all(d["queued"] >= 10 for d in agent.devices().values()), 15,
                   what="a backlog")
        proxy.refuse(False)
        wait_until(lambda: all(d["connected"] and d["queued"] == 0
                               for d in agent.devices().values()), 20, what="drained")
        assert agent.stop() == 0
        for client in CLIENTS:
            times = [m["time"] for m in tenant.measurements(client)]
            assert len(times) >= 10
            assert times == sorted(times) and len(set(times)) == len(times), client
        check_rules(tenant)
    finally:
        proxy.close()


def test_restart_operation_reaches_successful(tmp_path, tenant, agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory)
    tenant.send_operation("c8ysim-pv-roof", "510,c8ysim-pv-roof")
    status = lambda: [op.status for op in tenant.operations("c8ysim-pv-roof")]  # noqa: E731
    wait_until(lambda: status() == ["SUCCESSFUL"], 20, what="restart SUCCESSFUL")
    assert templates(tenant, "c8ysim-pv-roof").count("501") == 1
    assert agent.stop() == 0
    check_rules(tenant)


def test_refused_connect_shows_auth_failed_then_recovers(tmp_path, tenant, agent_factory):
    tenant.refuse_connects(5)
    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, tenant.port, status_port), status_port)
    agent.start()
    # CONNACK 5 may be transient (reference §1.9): auth_failed after 3 retries 1-3 s apart
    wait_until(lambda: all(d.get("connection") == "auth_failed"
                           for d in agent.devices().values()), 20, what="auth_failed")
    assert "not authorized" in agent.log_text().lower()
    tenant.accept_connects()
    wait_until(lambda: all(d["connected"] for d in agent.devices().values()), 15,
               what="recovery (reconnect_max_s is 2 in the test config)")
    assert agent.stop() == 0
    check_rules(tenant)


def test_withheld_pubacks_keep_rows_and_bound_the_window(tmp_path, tenant, agent_factory):
    agent = start_agent(tmp_path, tenant.port, agent_factory, interval_s=0.1)
    tenant.withhold_puback("c8ysim-grid-meter", True)
    wait_until(lambda: agent.devices()["grid-meter"]["queued"] >= 30, 15, what="rows kept")
    device = agent.devices()["grid-meter"]
    assert device["inflight"] <= device["queued"]
    tenant.withhold_puback("c8ysim-grid-meter", False)
    wait_until(lambda: agent.devices()["grid-meter"]["queued"] < 5, 15, what="drained")
    assert agent.stop() == 0
    check_rules(tenant)


def test_rate_limit_disconnects_back_off_and_recover(tmp_path, tenant, agent_factory):
    client = "c8ysim-pv-roof"
    tenant.disconnect_after_first_message(client, sessions=4)
    agent = start_agent_unchecked(tmp_path, tenant.port, agent_factory)
    wait_until(lambda: agent.devices()["pv-roof"]["connected"], 30, what="recovery")
    connects = [r.time for r in tenant.records(client) if r.kind == "connect"]
    assert len(connects) >= 5
    gaps = [b - a for a, b in zip(connects, connects[1:])]
    assert sum(gaps) > 0.5, gaps  # it waited between attempts instead of hammering
    assert agent.stop() == 0
    assert tenant.violations == [], tenant.violations


def start_agent_unchecked(tmp_path, port, agent_factory):
    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, port, status_port), status_port)
    return agent.start()
