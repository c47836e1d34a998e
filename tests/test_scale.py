"""Scale mode (`supervisor.devices_per_process`, issue 18) as real processes and a real broker:
ten devices in three processes, all online and publishing and each shown on its own; a
c8y_Restart that restarts one device's session inside its group; a killed or stuck group
coming back whole; a reload that restarts only the changed device's group and stops a
removed device; forty devices in two processes within a generous memory bound.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from c8ysim import config, exits, group, supervisor
from c8ysim.states import ChildState
import conftest
from conftest import children_of, free_port, wait_until, write_config
from test_restart import send_operation, upstream
from test_supervisor import alive, rewrite_devices

pytestmark = pytest.mark.timeout(60)

GROUPED = ("supervisor: {devices_per_process: 4, heartbeat_timeout_s: 2.0, kill_grace_s: 0.5, "
           "stop_timeout_s: 3.0}\n")
TEN = [(f"pv-{i}", "pv") for i in range(9)] + [("grid-meter", "grid")]


def start(tmp_path, mosquitto, agent_factory, devices=TEN, extra=GROUPED, interval_s=0.5):
    status_port = free_port()
    cfg = write_config(tmp_path, mosquitto.port, status_port, interval_s=interval_s,
                       devices=devices, extra=extra)
    agent = agent_factory(cfg, status_port).start()
    wait_until(lambda: len(agent.devices()) == len(devices) and
               all(d["connected"] and d["state"] == "running"
                   for d in agent.devices().values()), 30, what="every device online")
    return agent


def pids(agent) -> dict[str, int]:
    return {name: d["pid"] for name, d in agent.devices().items()}


# -- without processes ------------------------------------------------------------------------

def parse(devices: int, per_process: int | None) -> config.Config:
    extra = f"supervisor: {{devices_per_process: {per_process}}}\n" if per_process else ""
    return config.parse("site: {latitude: 52.5, longitude: 13.4}\n" + extra + "devices:\n" +
                        "".join(f"  - {{name: d{i}, type: pv}}\n" for i in range(devices)),
                        "c8ysim.yaml")


def test_groups_are_chunks_in_config_order_and_one_is_a_process_per_device():
    assert supervisor.groups(parse(3, None)) == {"d0": (), "d1": (), "d2": ()}
    assert supervisor.groups(parse(10, 4)) == {
        "group-1": ("d0", "d1", "d2", "d3"), "group-2": ("d4", "d5", "d6", "d7"),
        "group-3": ("d8", "d9")}
    assert parse(2, 25).supervisor.devices_per_process == 25
    assert isinstance(parse(2, None).supervisor.devices_per_process, int)
    for bad in ("0", "1001", "2.5"):
        with pytest.raises(config.ConfigError, match=r"c8ysim.yaml:2: supervisor\."
                                                      r"devices_per_process"):
            parse(2, bad)


def test_a_device_whose_buffer_cannot_open_backs_off_alone(tmp_path, monkeypatch):
    cfg = config.parse("site: {latitude: 52.5, longitude: 13.4}\n"
                       f"storage: {{path: {tmp_path}}}\n"
                       "devices:\n  - {name: good, type: pv}\n  - {name: bad, type: pv}\n",
                       "c8ysim.yaml")
    real_open = group.open_buffer

    def open_buffer(storage, name):
        if name == "bad":
            raise OSError("disk on fire")
        return real_open(storage, name)

    monkeypatch.setattr(group, "open_buffer", open_buffer)
    grp = group.Group(cfg, ("good", "bad"), None, os.getppid())
    for member in grp.members.values():
        grp._fire(member, group.Event.START, time.monotonic())
    good, bad = grp.members["good"], grp.members["bad"]
    assert good.state is ChildState.RUNNING and good.device is not None
    assert bad.state is ChildState.BACKOFF and bad.device is None
    assert bad.lifecycle(time.monotonic())["last_exit"] == \
        f"cannot open the buffer (exit code {exits.FAILURE})"
    assert bad.restarts == 1 and bad.lifecycle(time.monotonic())["retry_in_s"] > 0
    grp._turn(good, time.monotonic() + 10)  # the neighbour goes on
    assert good.state is ChildState.RUNNING
    grp._close(good)


# -- real processes ---------------------------------------------------------------------------

def test_ten_devices_in_three_processes_and_a_restart_stays_in_its_group(
        tmp_path, mosquitto, recorder, agent_factory):
    agent = start(tmp_path, mosquitto, agent_factory)
    children = sorted(children_of(agent.proc.pid))
    assert len(children) == 3, children
    by_device = pids(agent)
    assert sorted(set(by_device.values())) == children
    assert [by_device[f"pv-{i}"] for i in range(4)] == [by_device["pv-0"]] * 4
    assert by_device["pv-4"] != by_device["pv-0"] != by_device["grid-meter"]
    wait_until(lambda: all(d["sent"] > 0 for d in agent.devices().values()), 10,
               what="every device's readings acknowledged")
    registered = {line.split(",")[1] for line in upstream(recorder, "100,")}
    assert registered == {name for name, _kind in TEN}
    assert all(d["queued"] is not None and d["last_reading"] for d in agent.devices().values())
    log = agent.log_text()
    assert "<5>pv-5: online as c8ysim-pv-5" in log and "started 10 devices in 3 processes" in log

    before = agent.devices()
    send_operation(mosquitto.port, "510,c8ysim-pv-5")
    wait_until(lambda: upstream(recorder, "503,c8y_Restart"), 15, what="503 after the restart")
    assert upstream(recorder, "501,c8y_Restart") == ["501,c8y_Restart"]
    wait_until(lambda: agent.devices()["pv-5"]["connected"], 5, what="pv-5 online again")
    after = agent.devices()
    assert pids(agent) == by_device  # no process restarted
    assert {n: d["reconnects"] for n, d in after.items() if n != "pv-5"} == \
        {n: d["reconnects"] for n, d in before.items() if n != "pv-5"}
    assert {n: d["restarts"] for n, d in after.items() if d["restarts"]} == {"pv-5": 1}
    assert 'c8ysim_restarts_total{device="pv-5"} 1' in agent.get("/metrics").decode()
    assert "<5>pv-5: restarts for its restart operation" in agent.log_text()
    assert agent.stop() == 0


def test_a_killed_or_stuck_group_comes_back_whole(tmp_path, mosquitto, agent_factory):
    agent = start(tmp_path, mosquitto, agent_factory)
    before = pids(agent)
    victim = before["pv-0"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: all(d["pid"] not in (None, victim) and d["connected"]
                           for d in agent.devices().values()), 15,
               what="group-1's devices back")
    after = pids(agent)
    assert {after[f"pv-{i}"] for i in range(4)} == {after["pv-0"]}
    assert all(after[n] == before[n] for n in after if n not in {f"pv-{i}" for i in range(4)})
    assert {n: d["restarts"] for n, d in agent.devices().items() if d["restarts"]} == \
        {f"pv-{i}": 1 for i in range(4)}

    stuck = after["grid-meter"]
    os.kill(stuck, signal.SIGSTOP)  # its beats stop while the process lives
    wait_until(lambda: agent.devices()["grid-meter"]["pid"] not in (None, stuck) and
               agent.devices()["grid-meter"]["connected"], 15, what="the stuck group replaced")
    assert not alive(stuck)
    assert agent.devices()["pv-8"]["pid"] == agent.devices()["grid-meter"]["pid"]
    log = agent.log_text()
    assert "while its group's process group-3" in log and "the group is stuck" in log
    assert "with its devices pv-8, grid-meter" in log
    assert agent.stop() == 0


def wal_size(tmp_path: Path, device: str) -> int:
    wal = tmp_path / "state" / f"{device}.sqlite3-wal"
    return wal.stat().st_size if wal.exists() else 0


def readings_stored(tmp_path: Path, device: str) -> str | None:
    db = sqlite3.connect(tmp_path / "state" / f"{device}.sqlite3")
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'model.state'").fetchone()
    finally:
        db.close()
    return row[0] if row else None


def test_reload_restarts_the_changed_devices_group_and_stops_a_removed_device(
        tmp_path, mosquitto, agent_factory):
    agent = start(tmp_path, mosquitto, agent_factory)
    before = pids(agent)
    devices = [(name, kind, 0.5) for name, kind in TEN]
    devices[1] = ("pv-1", "pv", 0.7)  # changed: group-1 restarts
    del devices[8]  # pv-8 removed: group-3 is now grid-meter alone
    rewrite_devices(agent.config, devices)
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: set(agent.devices()) == {n for n, _k, _i in devices} and
               all(d["connected"] and d["state"] == "running"
                   for d in agent.devices().values()) and
               agent.devices()["pv-0"]["pid"] != before["pv-0"] and
               agent.devices()["grid-meter"]["pid"] != before["grid-meter"], 20,
               what="the reload applied")
    after = pids(agent)
    assert all(after[f"pv-{i}"] == before[f"pv-{i}"] for i in range(4, 8))  # group-2 untouched
    assert after["pv-0"] == after["pv-1"]
    assert sorted(children_of(agent.proc.pid)) == sorted(set(after.values()))
    assert not alive(before["grid-meter"])
    stored = readings_stored(tmp_path, "pv-8")
    time.sleep(1.5)  # three of its intervals: nothing stores readings for pv-8 any more
    assert readings_stored(tmp_path, "pv-8") == stored
    # the grid meter sums the household: it changed too (its group restarts anyway)
    assert "(0 added, 1 removed, 2 changed)" in agent.log_text()
    assert agent.stop() == 0


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])


def test_forty_devices_in_two_processes_stay_within_a_generous_memory_bound(
        tmp_path, mosquitto, agent_factory):
    devices = [(f"pv-{i}", "pv") for i in range(40)]
    extra = "supervisor: {devices_per_process: 20}\n"
    agent = start(tmp_path, mosquitto, agent_factory, devices=devices, extra=extra,
                  interval_s=1.0)
    time.sleep(2.0)  # a few readings each
    tree = [agent.proc.pid, *children_of(agent.proc.pid)]
    assert len(tree) == 3
    rss, pss = map(sum, zip(*(memory_kb(pid) for pid in tree)))
    print(f"40 devices in 2 processes: RSS sum {rss / 1024:.1f} MB, PSS sum {pss / 1024:.1f} MB")
    assert pss < 300 * 1024, "far beyond the ~100 MB target for 100 devices"
    assert agent.stop() == 0


def test_a_reload_to_groups_forks_a_group_only_once_its_devices_old_processes_are_gone(
        tmp_path, mosquitto, agent_factory):
    devices = [(f"pv-{i}", "pv") for i in range(6)]
    agent = start(tmp_path, mosquitto, agent_factory, devices=devices, extra="")
    assert len(children_of(agent.proc.pid)) == 6
    agent.config.write_text(agent.config.read_text().replace(
        "devices:\n", "supervisor: {devices_per_process: 4}\ndevices:\n"))
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(set(pids(agent).values())) == 2 and
               all(d["connected"] and d["state"] == "running"
                   for d in agent.devices().values()), 20, what="two groups running")
    lines = agent.log_text().splitlines()
    started = lines.index(next(line for line in lines if "started group-1 (pid" in line))
    for i in range(4):  # a device never runs in two processes at once
        assert lines.index(next(line for line in lines if f"supervisor: pv-{i} stopped" in line)) \
            < started
    assert len(children_of(agent.proc.pid)) == 2
    assert agent.stop() == 0


# A device whose buffer cannot open while a marker file lies beside it (the failure a full or
# broken disk gives one device); the rest is the real agent: supervisor, group, devices.
BROKEN_BUFFER_AGENT = """
import os, sys
from c8ysim import group, main
real_open = group.open_buffer
def open_buffer(storage, name):
    if os.path.exists(os.path.join(storage.path, name + ".broken")):
        raise OSError("disk on fire (test)")
    return real_open(storage, name)
group.open_buffer = open_buffer
sys.exit(main.main(["run", "--config", sys.argv[1]]))
"""


class BrokenBufferAgent(conftest.Agent):
    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BROKEN_BUFFER_AGENT, str(self.config)], cwd=conftest.REPO,
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.proc.poll() is not None or self.get("/healthz") == 200, 20,
                   what="the status page")
        return self


@pytest.mark.timeout(90)
def test_a_device_failing_in_its_group_goes_fatal_alone_and_a_reload_retries_it(
        tmp_path, mosquitto):
    """Default restart policy: five quick deaths (backoff 1, 2, 4, 8 s with full jitter) make
    the device FATAL; its three neighbours keep their process and publish throughout."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "pv-2.broken").touch()
    status_port = free_port()
    cfg = write_config(tmp_path, mosquitto.port, status_port, interval_s=0.5,
                       devices=TEN[:4], extra=GROUPED)
    agent = BrokenBufferAgent(cfg, status_port)
    try:
        agent.start()
        neighbours = ("pv-0", "pv-1", "pv-3")
        wait_until(lambda: all(agent.devices()[n]["connected"] for n in neighbours), 20,
                   what="the neighbours online")
        group_pid = agent.devices()["pv-0"]["pid"]
        sent = {n: agent.devices()[n]["sent"] for n in neighbours}
        wait_until(lambda: agent.devices()["pv-2"]["state"] == "fatal", 45,
                   what="pv-2 FATAL")
        view = agent.devices()
        assert not view["pv-2"]["connected"] and view["pv-2"]["restarts"] >= 4
        assert "cannot open the buffer" in view["pv-2"]["last_exit"]
        assert {view[n]["pid"] for n in (*neighbours, "pv-2")} == {group_pid}
        assert children_of(agent.proc.pid) == [group_pid]
        wait_until(lambda: all(agent.devices()[n]["sent"] > sent[n] for n in neighbours), 10,
                   what="the neighbours still publishing")
        assert all(view[n]["state"] == "running" and view[n]["restarts"] == 0
                   for n in neighbours)
        assert "<3>pv-2: FATAL after cannot open the buffer" in agent.log_text()
        assert agent.get("/healthz") == 200

        (state / "pv-2.broken").unlink()  # the disk repaired: a reload tries it again
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: agent.devices()["pv-2"]["connected"], 20, what="pv-2 back online")
        assert all(d["state"] == "running" for d in agent.devices().values())
        assert agent.stop() == 0
    finally:
        agent.cleanup()
