"""The agent under a real systemd (Debian 12 in systemd-nspawn, see tests/nspawn.py).

Installed without a .deb: the agent package under /usr/lib/c8ysim, a /usr/bin/c8ysim
wrapper, the unit from systemd/, a sysusers entry for the `c8ysim` user, and /etc/c8ysim.yaml
pointing at a mosquitto on the host's loopback (the container shares the host network).
The tests run in file order on one booted container, each starting from a running service.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, Mosquitto, free_port, wait_until

import nspawn

AGENT_SRC = Path(os.environ.get("C8YSIM_AGENT_SRC", REPO / "c8ysim"))  # or a snapshot of it
UNIT = "c8ysim.service"
UNIT_PATH = "/usr/lib/systemd/system/c8ysim.service"
CONFIG_PATH = "/etc/c8ysim.yaml"
WATCHDOG_DROPIN = "/etc/systemd/system/c8ysim.service.d/test-watchdog.conf"
WATCHDOG_S = 3
RESTART_S = 1
MAX_EXPOSURE = 2.0  # systemd-analyze security: the unit must score this or better
SECURITY_THRESHOLD = 20  # the same on the tool's scale (tenths)
DEVICES = [("pv-roof", "pv"), ("heatpump", "heatpump"), ("grid-meter", "grid")]
WRAPPER = """#!/usr/bin/python3
import sys
sys.path.insert(0, "/usr/lib/c8ysim")
from c8ysim.main import main
sys.exit(main())
"""
SYSUSERS = 'u c8ysim - "c8ysim agent" /var/lib/c8ysim\n'

pytestmark = [
    pytest.mark.skipif(nspawn.unavailable() is not None,
                       reason=f"systemd-nspawn: {nspawn.unavailable()}"),
    # whichever test sets the module fixture up may build the rootfs (~2 min, bounded);
    # every wait inside is bounded on its own
    pytest.mark.timeout(nspawn.BUILD_TIMEOUT_S + nspawn.BOOT_TIMEOUT_S + 60),
]


def config_yaml(broker_port: int, status_port: int, devices=DEVICES) -> str:
    return ("site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin, seed: 1}\n"
            f"cumulocity: {{host: 127.0.0.1, port: {broker_port}, tenant: t1, user: u, "
            "password: secret, reconnect_max_s: 2}\n"
            f"status: {{listen: '127.0.0.1:{status_port}'}}\n"
            "devices:\n" + "".join(f"  - {{name: {n}, type: {t}, interval_s: 1}}\n"
                                   for n, t in devices))


def install_agent(box: nspawn.Container, config_text: str) -> None:
    """Put the agent, its wrapper, unit, user and config into the (not yet booted) root."""
    shutil.copytree(AGENT_SRC, box.root / "usr/lib/c8ysim/c8ysim",
                    ignore=shutil.ignore_patterns("__pycache__"))
    box.write("usr/bin/c8ysim", WRAPPER, 0o755)
    box.write(UNIT_PATH, (REPO / "systemd/c8ysim.service").read_text())
    box.write("usr/lib/sysusers.d/c8ysim.conf", SYSUSERS)
    box.write(CONFIG_PATH, config_text)


class Service:
    """The booted container with the agent installed, and what the tests measured."""

    def __init__(self, box: nspawn.Container, broker: Mosquitto, status_port: int):
        self.box, self.broker, self.status_port = box, broker, status_port
        self.figures: dict[str, float] = {}

    def systemctl(self, *args: str, check: bool = True, timeout_s: float = 60):
        return self.box.run("systemctl", *args, check=check, timeout_s=timeout_s)

    def show(self, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", UNIT).stdout.strip()

    def main_pid(self) -> int:
        return int(self.show("MainPID"))

    def status(self) -> dict | None:
        url = f"http://127.0.0.1:{self.status_port}/api/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def devices(self) -> dict:
        return {d["name"]: d for d in (self.status() or {}).get("devices", [])}

    def cgroup_pids(self) -> list[int]:
        group = self.show("ControlGroup")
        script = "".join(f"cat /sys/fs/cgroup/{h}{group}/cgroup.procs 2>/dev/null || "
                         for h in ("systemd", "unified", "")) + "true"
        return [int(p) for p in self.box.sh(script).stdout.split()] if group else []

    def journal(self, *args: str) -> str:
        return self.box.run("journalctl", "-u", UNIT, "--no-pager", *args).stdout

    def write_config(self, text: str) -> None:
        self.box.write(CONFIG_PATH, text)

    def ensure_running(self) -> None:
        """The service active on the base config, whatever an earlier test left."""
        self.write_config(config_yaml(self.broker.port, self.status_port))
        if self.show("ActiveState") != "active":
            self.systemctl("reset-failed", UNIT, check=False)
            self.systemctl("start", UNIT)
        elif set(self.devices()) != {n for n, _t in DEVICES}:
            self.systemctl("reload", UNIT)
        wait_until(lambda: set(self.devices()) == {n for n, _t in DEVICES} and all(
            d["state"] == "running" for d in self.devices().values()), 10,
            what="the base devices running")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    base = nspawn.rootfs()  # built once (~2 min), then cached outside the clone
    broker = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    status_port = free_port()
    box = nspawn.Container(base, tmp_path_factory.mktemp("nspawn"))
    try:
        with box:
            install_agent(box, config_yaml(broker.port, status_port))
            boot_s = box.boot()
            result = Service(box, broker, status_port)
            result.figures["boot_s"] = boot_s
            yield result
            print("\nsystemd figures:", json.dumps(
                {k: round(v, 2) for k, v in result.figures.items()}))
    finally:
        broker.stop()


def test_the_unit_verifies_without_a_word(service):
    result = service.box.run("systemd-analyze", "verify", "--man=no", UNIT_PATH, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_unit_is_hardened(service):
    result = service.box.run("systemd-analyze", "security", "--offline=true",
                          f"--threshold={SECURITY_THRESHOLD}", UNIT_PATH, check=False)
    line = next(x for x in result.stdout.splitlines() if "Overall exposure level" in x)
    score = float(line.split(":")[1].split()[0])
    service.figures["security_exposure"] = score
    assert result.returncode == 0 and score <= MAX_EXPOSURE, result.stdout[-3000:]


def test_start_returns_once_ready_and_the_status_page_answers(service):
    service.write_config(config_yaml(service.broker.port, service.status_port))
    started = time.monotonic()
    service.systemctl("start", UNIT)
    service.figures["start_to_ready_s"] = time.monotonic() - started
    status = service.status()  # no retry: READY=1 promised a bound status port
    assert status is not None, service.journal()
    assert service.show("ActiveState") == "active"
    main_pid = service.main_pid()
    assert status["agent"]["pid"] == main_pid
    assert service.box.run("ps", "-o", "user=", "-p", str(main_pid)).stdout.strip() == "c8ysim"
    assert len(service.cgroup_pids()) == 1 + len(DEVICES)
    wait_until(lambda: all(d["connected"] for d in service.devices().values()), 15,
               what="the devices to reach the broker on the host")


def test_reload_adds_a_device_and_keeps_the_rest(service):
    service.ensure_running()
    main_pid = service.main_pid()
    before = {n: d["pid"] for n, d in service.devices().items()}
    service.write_config(config_yaml(service.broker.port, service.status_port,
                                  DEVICES[:2] + [("pv-east", "pv")] + DEVICES[2:]))
    service.systemctl("reload", UNIT)  # returns before the daemon handled it (systemd 252)
    wait_until(lambda: service.devices().get("pv-east", {}).get("state") == "running", 10,
               what="the added device running")
    after = {n: d["pid"] for n, d in service.devices().items()}
    assert service.main_pid() == main_pid and service.show("ActiveState") == "active"
    assert after["pv-roof"] == before["pv-roof"] and after["heatpump"] == before["heatpump"]
    assert after["grid-meter"] != before["grid-meter"]  # it sums the household's devices
    assert len(service.cgroup_pids()) == 1 + 4


def test_an_invalid_reload_keeps_running_and_logs_file_and_line(service):
    service.ensure_running()
    main_pid, before = service.main_pid(), {n: d["pid"] for n, d in service.devices().items()}
    good = config_yaml(service.broker.port, service.status_port)
    service.write_config(good.replace("interval_s: 1}", "interval_s: 1", 1))  # unclosed mapping
    service.systemctl("reload", UNIT)
    wait_until(lambda: "reload refused" in service.journal("-p", "err"), 10,
               what="the refusal in the journal at priority err")
    refusal = [x for x in service.journal("-p", "err", "-o", "cat").splitlines()
               if "reload refused" in x]
    assert any(f"{CONFIG_PATH}:" in x for x in refusal), refusal
    assert service.show("ActiveState") == "active" and service.main_pid() == main_pid
    assert {n: d["pid"] for n, d in service.devices().items()} == before


def test_journal_filters_by_priority(service):
    warnings = service.journal("-p", "warning", "-o", "json").splitlines()
    everything = service.journal("-o", "json").splitlines()
    priorities = [int(json.loads(x)["PRIORITY"]) for x in warnings]
    assert priorities and max(priorities) <= 4, priorities
    assert any(int(json.loads(x)["PRIORITY"]) == 6 for x in everything)
    assert not any("<" in json.loads(x)["MESSAGE"][:3] for x in everything)


def test_the_watchdog_restarts_a_hung_supervisor(service):
    service.box.write(WATCHDOG_DROPIN,
                   f"[Service]\nWatchdogSec={WATCHDOG_S}\nRestartSec={RESTART_S}\n")
    service.systemctl("daemon-reload")
    service.write_config(config_yaml(service.broker.port, service.status_port))
    service.systemctl("restart", UNIT)
    hung = service.main_pid()
    restarts = int(service.show("NRestarts"))
    time.sleep(WATCHDOG_S)  # petted all along: still the same process
    assert service.main_pid() == hung
    service.box.run("kill", "-STOP", str(hung))
    stopped_at = time.monotonic()
    wait_until(lambda: service.show("ActiveState") == "active" and service.main_pid() not in
               (0, hung), WATCHDOG_S + RESTART_S + 15, interval=0.2,
               what="systemd to replace the hung supervisor")
    service.figures["watchdog_restart_s"] = time.monotonic() - stopped_at
    assert int(service.show("NRestarts")) == restarts + 1
    assert "Watchdog timeout" in service.journal("--since", "-60s")
    wait_until(lambda: len(service.devices()) == len(DEVICES) and
               len(service.cgroup_pids()) == 1 + len(DEVICES), 10,
               what="the new supervisor with its children alone in the cgroup")


def test_stop_leaves_the_cgroup_empty(service):
    service.ensure_running()
    started = time.monotonic()
    service.systemctl("stop", UNIT)
    service.figures["stop_s"] = time.monotonic() - started
    assert service.show("ActiveState") == "inactive"
    assert service.show("Result") == "success"
    assert service.cgroup_pids() == []
    assert service.status() is None


def test_a_bad_config_at_start_fails_with_78_and_no_restart_loop(service):
    service.write_config("site: {latitude: 99}\n")
    result = service.systemctl("start", UNIT, check=False)
    assert result.returncode != 0
    time.sleep(RESTART_S + 1)
    assert service.show("ExecMainStatus") == "78"
    assert service.show("ActiveState") == "failed" and service.show("NRestarts") == "0"
    # main.py prints these without a priority prefix, so journald files them at info
    assert f"{CONFIG_PATH}:1: site.latitude: must be between" in \
        service.journal("--since", "-30s", "-o", "cat")
