"""The supervisor as real processes on the host (no systemd): the notify sequence seen by a
NOTIFY_SOCKET listener, reload by difference, a refused reload, a stuck child killed and
restarted, a stop within the timeout, and a status client that never stalls the loop.

The devices are the real ones (`python -m c8ysim run`); their uplink points at a closed port,
so they simulate and buffer, which is all the supervisor needs to see of them.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from c8ysim import config, supervisor
from c8ysim.heartbeat import Heartbeat
from c8ysim.states import ChildState
from conftest import REPO, Agent, children_of, free_port, wait_until, write_config

START_TIMEOUT_S = 10.0
FAST_TIMEOUTS = ("supervisor: {heartbeat_timeout_s: 2.0, kill_grace_s: 0.5, "
                 "stop_timeout_s: 2.0}\n")
WATCHDOG_USEC = 1_000_000  # the supervisor pets every 0.5 s
DEVICES = [("pv-roof", "pv"), ("heatpump", "heatpump"), ("grid-meter", "grid")]


class NotifyListener:
    """What systemd would see on $NOTIFY_SOCKET: an abstract AF_UNIX datagram socket."""

    def __init__(self):
        self.address = f"@c8ysim-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.messages: list[tuple[float, str]] = []  # (monotonic time, one assignment)

    def receive(self, timeout: float) -> list[str]:
        """The assignments of the next datagram ([] on timeout)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return []
        now = time.monotonic()
        lines = data.decode().splitlines()
        self.messages += [(now, line) for line in lines]
        return lines

    def wait_for(self, wanted: str, timeout: float) -> float:
        """Receive until an assignment starting with `wanted` arrives; its arrival time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(wanted) for line in self.receive(deadline - time.monotonic())):
                return time.monotonic()
        raise AssertionError(f"no {wanted} within {timeout} s; got {self.names()}")

    def names(self) -> list[str]:
        return [line.split("=")[0] for _t, line in self.messages]

    def close(self) -> None:
        self.sock.close()


class Daemon(Agent):
    """An agent process started with any command; `start(wait=False)` returns at once."""

    def __init__(self, argv: list[str], config: Path, status_port: int, env: dict | None = None):
        super().__init__(config, status_port, env)
        self.argv = argv

    def start(self, wait: bool = True) -> "Daemon":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            wait_until(lambda: self.proc.poll() is not None or self.get("/healthz") == 200,
                       START_TIMEOUT_S, what="the status page")
            assert self.proc.poll() is None, self.log_text()
        return self

    def pids(self) -> dict[str, int | None]:
        return {name: d["pid"] for name, d in self.devices().items()}

    def wait_all_running(self, names, timeout: float = START_TIMEOUT_S) -> dict:
        wait_until(lambda: set(self.devices()) == set(names) and
                   all(d["state"] == "running" for d in self.devices().values()),
                   timeout, what=f"{', '.join(names)} running")
        return self.pids()


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def make(argv: list[str], config: Path, status_port: int, env: dict | None = None):
        daemon = Daemon(argv, config, status_port, env)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.cleanup()


@pytest.fixture
def agent(tmp_path, daemons):
    """The real agent on three devices with short supervisor timeouts; not yet started."""
    status_port = free_port()
    config = write_config(tmp_path, free_port(), status_port, extra=FAST_TIMEOUTS,
                          devices=DEVICES)
    return daemons([sys.executable, "-m", "c8ysim", "run", "--config", str(config)],
                   config, status_port)


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def devices_yaml(devices) -> str:
    return "devices:\n" + "".join(f"  - {{name: {n}, type: {t}, interval_s: {i}, "
                                  f"external_id: c8ysim-{n}}}\n" for n, t, i in devices)


def rewrite_devices(config: Path, devices) -> None:
    head = config.read_text().split("devices:\n")[0]
    config.write_text(head + devices_yaml(devices))


# -- systemd notifications ------------------------------------------------------------------

def test_notify_sequence_ready_only_once_serving(agent):
    listener = NotifyListener()
    agent.env.update(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        started = time.monotonic()
        agent.start(wait=False)
        listener.wait_for("READY=1", START_TIMEOUT_S)
        with socket.create_connection(("127.0.0.1", agent.status_port), timeout=0.2):
            pass  # READY=1 came after the status port accepted connections ...
        assert len(children_of(agent.proc.pid)) == len(DEVICES)  # ... and the forks
        ready_s = time.monotonic() - started
        listener.wait_for("STATUS=", 3)
        first = listener.wait_for("WATCHDOG=1", 2)
        second = listener.wait_for("WATCHDOG=1", 2)
        assert 0.3 <= second - first <= 0.8, "pets at half of WATCHDOG_USEC"
        agent.proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING=1", 3)
        listener.wait_for("READY=1", 3)
        agent.proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", 3)
        assert agent.proc.wait(5) == 0
    finally:
        listener.close()
    names = listener.names()
    assert names[0] == "READY", names
    assert names.index("STATUS") > 0 and names.index("WATCHDOG") > 0
    reloading = names.index("RELOADING")
    assert names.index("READY", reloading) < names.index("STOPPING"), names
    assert [line for _t, line in listener.messages if line.startswith("STATUS=")][0] \
        .endswith("queued"), listener.messages
    print(f"start to READY=1: {ready_s:.2f} s")


def test_without_notify_socket_it_runs_silently(agent):
    agent.start()
    assert agent.stop(5) == 0
    assert "notify" not in agent.log_text()


# -- reload -----------------------------------------------------------------------------

def test_reload_applies_the_difference_and_keeps_unchanged_pids(agent):
    agent.start()
    before = agent.wait_all_running([n for n, _t in DEVICES])
    supervisor_pid = agent.proc.pid
    rewrite_devices(agent.config, [("pv-roof", "pv", 0.5),  # unchanged
                                   ("heatpump", "heatpump", 0.7),  # changed
                                   ("pv-east", "pv", 0.5)])  # added; grid-meter removed
    agent.proc.send_signal(signal.SIGHUP)
    after = agent.wait_all_running(["pv-roof", "heatpump", "pv-east"])
    assert agent.proc.pid == supervisor_pid and agent.proc.poll() is None
    assert after["pv-roof"] == before["pv-roof"]
    assert after["heatpump"] != before["heatpump"]
    wait_until(lambda: not alive(before["grid-meter"]) and not alive(before["heatpump"]), 5,
               what="the removed and the changed child to be gone")
    assert sorted(children_of(supervisor_pid)) == sorted(after.values())
    assert "(1 added, 1 removed, 1 changed)" in agent.log_text()


def parse(devices, extra: str = "") -> config.Config:
    head = ("site: {latitude: 52.5, longitude: 13.4, seed: 1}\n"
            "cumulocity: {host: localhost, tenant: t, user: u, password: p}\n")
    return config.parse(head + extra + devices_yaml(devices), "c8ysim.yaml")


BASE = [("pv-roof", "pv", 1), ("heatpump", "heatpump", 1), ("grid-meter", "grid", 1)]


@pytest.mark.parametrize("new, extra, expected", [
    (BASE, "", ([], [], [])),
    (BASE, "status: {listen: '127.0.0.1:9999'}\nsupervisor: {kill_grace_s: 1}\n",
     ([], [], [])),
    (BASE[:2] + [("grid-meter", "grid", 2)], "", ([], ["grid-meter"], [])),
    ([("pv-roof", "pv", 2)] + BASE[1:], "", ([], ["pv-roof"], [])),
    # the grid meter sums the household: another device there changes it, not the others
    (BASE + [("pv-east", "pv", 1)], "", ([], ["grid-meter"], ["pv-east"])),
    (BASE[1:], "", (["pv-roof"], ["grid-meter"], [])),
    (BASE[:2], "", (["grid-meter"], [], [])),
    (BASE, "log_level: debug\n", ([], ["pv-roof", "heatpump", "grid-meter"], [])),
])
def test_diff_by_value(new, extra, expected):
    assert supervisor.diff(parse(BASE), parse(new, extra)) == expected


def test_reload_of_a_shared_setting_restarts_every_child(agent):
    agent.start()
    before = agent.wait_all_running([n for n, _t in DEVICES])
    agent.config.write_text(agent.config.read_text().replace("seed: 1", "seed: 2"))
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: all(pid not in before.values() and pid
                           for pid in agent.pids().values()), START_TIMEOUT_S,
               what="every child restarted")


@pytest.mark.parametrize("broken, line", [
    ("devices:\n  - {name: x, type: pv\n", 3),  # YAML syntax: the flow mapping never closes
    ("devices:\n  - {name: x, type: pv, intervall_s: 1}\n", 2),  # a misspelt key
])
def test_invalid_reload_keeps_running_and_names_file_and_line(agent, broken, line):
    agent.start()
    before = agent.wait_all_running([n for n, _t in DEVICES])
    head = agent.config.read_text().split("devices:\n")[0]
    agent.config.write_text(head + broken)
    line += head.count("\n")
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in agent.log_text(), 5, what="the refusal")
    refusals = [text for text in agent.log_text().splitlines() if "reload refused" in text]
    assert any(text.startswith("<3>") and f"{agent.config}:{line}:" in text
               for text in refusals), refusals
    time.sleep(0.5)
    assert agent.pids() == before and agent.proc.poll() is None
    assert all(d["state"] == "running" for d in agent.devices().values())


def test_status_view_shapes():
    agent = supervisor.Supervisor(parse(BASE), None, None, config.load, None)
    now = time.monotonic()
    children = [supervisor.Child("pv-roof", ChildState.RUNNING, pid=42, restarts=2,
                                 last_exit="exit code 1", beat=Heartbeat(connected=True)),
                supervisor.Child("heatpump", ChildState.BACKOFF, next_start_at=now + 3),
                supervisor.Child("grid-meter", ChildState.FATAL, last_exit="exit code 78")]
    agent.children = {c.name: c for c in children}
    view = {d["name"]: d for d in agent.status()["devices"]}
    assert {k: view["pv-roof"][k] for k in ("state", "pid", "restarts", "last_exit",
                                            "connected", "type")} == \
        {"state": "running", "pid": 42, "restarts": 2, "last_exit": "exit code 1",
         "connected": True, "type": "pv"}
    assert view["heatpump"]["state"] == "backoff" and 2 < view["heatpump"]["retry_in_s"] <= 3
    assert view["grid-meter"]["state"] == "fatal" and "retry_in_s" not in view["grid-meter"]
    assert agent.history("pv-roof") == [] and agent.history("nope") is None
    assert agent._status_line() == "1/3 devices online, 0 queued, 1 fatal"


def test_history_keeps_a_point_per_min_step_gives_back_dicts_and_restarts_when_time_goes_back():
    child = supervisor.Child("pv-roof")
    step = supervisor.HISTORY_MIN_STEP_S
    readings = [{"time": 1000.0 + i, "c8y_P.P": float(i)} for i in range(0, 4 * int(step))]
    for reading in readings:
        child.remember(dict(reading))
    assert child.recent_readings() == readings[::int(step)]
    child.remember({"time": 2000.0, "c8y_P.P": 1.0, "c8y_E.A": 2.5})  # another set of series
    assert child.recent_readings()[-1] == {"time": 2000.0, "c8y_P.P": 1.0, "c8y_E.A": 2.5}
    child.remember({"time": 1500.0, "c8y_P.P": 3.0})  # the wall clock stepped back
    assert child.recent_readings() == [{"time": 1500.0, "c8y_P.P": 3.0}]
    for i in range(supervisor.HISTORY_MAX_ENTRIES + 10):
        child.remember({"time": 1500.0 + step * (i + 1), "c8y_P.P": 0.0})
    assert len(child.recent_readings()) == supervisor.HISTORY_MAX_ENTRIES


# -- stuck children and stop ----------------------------------------------------------------

def test_a_stuck_child_is_terminated_killed_and_restarted(agent):
    agent.start()
    before = agent.wait_all_running([n for n, _t in DEVICES])
    victim = before["heatpump"]
    os.kill(victim, signal.SIGSTOP)  # no heartbeats, and TERM stays pending: only KILL works
    stopped_at = time.monotonic()
    wait_until(lambda: agent.devices()["heatpump"]["pid"] not in (None, victim) and
               agent.devices()["heatpump"]["state"] == "running", 10,
               what="the stuck child replaced")
    took = time.monotonic() - stopped_at
    assert not alive(victim)
    assert agent.pids()["pv-roof"] == before["pv-roof"]
    text = agent.log_text()
    assert "<3>supervisor: heatpump sent no heartbeat" in text
    assert "<3>supervisor: heatpump did not stop within 0.5 s; killing it" in text
    assert agent.devices()["heatpump"]["restarts"] == 1
    assert took < 2.0 + 0.5 + 1.0 + 3.0  # timeout + grace + first backoff + a start
    print(f"stuck child replaced after {took:.1f} s")


def test_sigterm_stops_everything_within_the_stop_timeout(agent):
    agent.start()
    pids = agent.wait_all_running([n for n, _t in DEVICES])
    os.kill(pids["grid-meter"], signal.SIGSTOP)  # one child will not stop by itself
    started = time.monotonic()
    assert agent.stop(10) == 0
    took = time.monotonic() - started
    assert took < 2.0 + 1.5, f"stop took {took:.1f} s"  # stop_timeout_s + a margin
    assert not any(alive(pid) for pid in pids.values())
    assert "stopped in" in agent.log_text()


def test_a_child_exits_when_the_supervisor_dies(agent):
    agent.start()
    pids = agent.wait_all_running([n for n, _t in DEVICES])
    agent.proc.kill()  # no chance to stop its children: PR_SET_PDEATHSIG does it
    agent.proc.wait(5)
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), 5,
               what="orphaned children to exit")


def test_a_silent_status_client_never_stalls_the_loop(agent):
    listener = NotifyListener()
    agent.env.update(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        agent.start()
        silent = socket.create_connection(("127.0.0.1", agent.status_port))
        half = socket.create_connection(("127.0.0.1", agent.status_port))
        half.sendall(b"GET /api/status HTTP/1.0\r\nHost: x\r\n")  # never finishes
        try:
            asked = time.monotonic()
            assert agent.get("/healthz") == 200
            assert time.monotonic() - asked < 1.0
            listener.messages.clear()
            listener.wait_for("WATCHDOG=1", 1.5)
            listener.wait_for("WATCHDOG=1", 1.5)
        finally:
            silent.close()
            half.close()
    finally:
        listener.close()
    assert agent.stop(5) == 0


# -- reload of the status listener: all or nothing (issue 13, defect 3) -----------------------

def set_status(config: Path, listen: str, password_file: Path | None = None) -> None:
    extra = f", password_file: {password_file}" if password_file else ""
    text = "\n".join(f"status: {{listen: '{listen}'{extra}}}" if line.startswith("status:")
                     else line for line in config.read_text().splitlines())
    config.write_text(text + "\n")


def reload_and_wait(agent, text: str, times: int) -> list[str]:
    """SIGHUP, then wait until `text` is in the log `times` times; the matching lines."""
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: agent.log_text().count(text) >= times or agent.proc.poll() is not None,
               5, what=f"{text!r} in the log")
    assert agent.proc.poll() is None, agent.log_text()[-3000:]
    return [line for line in agent.log_text().splitlines() if text in line]


def test_two_failed_status_rebinds_keep_everything_then_a_good_one_applies(agent, tmp_path):
    """Used to: the first failed rebind replaced the config anyway, the second one logged
    "stays on B" (wrong) and died on `Address already in use`. Now a reload whose status
    address cannot be bound is refused as a whole (devices too) and says where the page
    really is; a good reload afterwards applies everything."""
    agent.start()
    port_a = agent.status_port
    before = agent.wait_all_running([n for n, _t in DEVICES])
    taken = socket.create_server(("127.0.0.1", 0))
    port_b = taken.getsockname()[1]
    try:
        set_status(agent.config, f"127.0.0.1:{port_b}")
        rewrite_devices(agent.config, [("pv-roof", "pv", 0.7), ("heatpump", "heatpump", 0.5),
                                       ("grid-meter", "grid", 0.5)])  # pv-roof changed
        lines = reload_and_wait(agent, "reload refused", 1)
        assert f"cannot listen on 127.0.0.1:{port_b}" in lines[-1]
        assert f"stays on http://127.0.0.1:{port_a}/" in lines[-1] and lines[-1][:3] == "<3>"
        password = tmp_path / "status-password"
        password.write_text("pw-never-logged\n")
        set_status(agent.config, "192.0.2.1:8080", password)  # TEST-NET-1: not ours
        lines = reload_and_wait(agent, "reload refused", 2)
        assert "cannot listen on 192.0.2.1:8080" in lines[-1]
        assert f"stays on http://127.0.0.1:{port_a}/" in lines[-1], lines
        time.sleep(0.5)
        assert agent.get("/healthz") == 200 and agent.pids() == before
        assert port_b != port_a and "pw-never-logged" not in agent.log_text()
    finally:
        taken.close()
    port_c = free_port()
    set_status(agent.config, f"127.0.0.1:{port_c}")
    reload_and_wait(agent, "status page now on", 1)
    agent.status_port = port_c
    assert agent.get("/healthz") == 200
    agent.status_port = port_a
    assert agent.get("/healthz") is None  # the old socket is closed
    agent.status_port = port_c
    after = agent.wait_all_running([n for n, _t in DEVICES])
    assert after["pv-roof"] != before["pv-roof"] and after["heatpump"] == before["heatpump"]
    assert agent.stop(5) == 0


def test_reload_to_all_interfaces_on_the_same_port_turns_on_basic_auth(agent, tmp_path):
    """127.0.0.1:P to 0.0.0.0:P: our own socket is in the way, so it is rebound in place;
    the password file (required off loopback) is read at reload and guards every page but
    /healthz; a new password in the file takes effect at the next reload."""
    agent.start()
    port = agent.status_port
    password = tmp_path / "status-password"
    password.write_text("first-pw\n")
    set_status(agent.config, f"0.0.0.0:{port}", password)
    reload_and_wait(agent, "status page now on http://0.0.0.0", 1)

    def get(path: str, secret: str | None = None) -> int:
        headers = {"Authorization": "Basic " + base64.b64encode(
            f"c8ysim:{secret}".encode()).decode()} if secret else {}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert get("/healthz") == 200 and get("/api/status") == 401 and get("/readyz") == 401
    assert get("/api/status", "first-pw") == 200 and get("/", "wrong") == 401
    password.write_text("second-pw\n")
    reload_and_wait(agent, "reloaded", 2)
    assert get("/api/status", "first-pw") == 401 and get("/api/status", "second-pw") == 200
    assert "first-pw" not in agent.log_text() and "second-pw" not in agent.log_text()
    assert agent.stop(5) == 0
