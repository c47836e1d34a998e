"""Unique, stable default external IDs: `c8ysim-<host ID>-<name>`.

The host ID comes from the Raspberry Pi's serial number, else /etc/machine-id (real files in
a temporary directory stand in for /proc and /etc); two agents on one tenant with different
machine IDs get different IDs and both stay online; the same machine gets the same IDs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from c8ysim import config, hostid
from conftest import free_port, wait_until
from fake_tenant import FakeTenant

PI_SERIAL = "10000000c0ffee42"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """Point every source at files in tmp_path (none exist until a test writes them)."""
    paths = {name: tmp_path / name for name in ("serial-number", "cpuinfo", "machine-id")}
    monkeypatch.setattr(hostid, "PI_SERIAL_FILE", str(paths["serial-number"]))
    monkeypatch.setattr(hostid, "CPUINFO_FILE", str(paths["cpuinfo"]))
    monkeypatch.setattr(hostid, "MACHINE_ID_FILE", str(paths["machine-id"]))
    monkeypatch.delenv(hostid.ENV_VAR, raising=False)
    hostid._host_id.cache_clear()
    yield paths
    hostid._host_id.cache_clear()


def test_a_pi_is_known_by_its_serial_number(machine):
    machine["serial-number"].write_bytes(PI_SERIAL.encode() + b"\x00")
    machine["machine-id"].write_text("0123456789abcdef0123456789abcdef\n")
    assert hostid.host_id() == "c0ffee42"


def test_the_cpuinfo_serial_when_the_device_tree_has_none(machine):
    machine["cpuinfo"].write_text("processor\t: 0\nHardware\t: BCM2835\n"
                                  f"Serial\t\t: {PI_SERIAL.upper()}\nModel\t: Pi 4\n")
    assert hostid.host_id() == "c0ffee42"


def test_a_zero_serial_falls_through_to_the_machine_id(machine):
    machine["serial-number"].write_bytes(b"0000000000000000\x00")
    machine["cpuinfo"].write_text("Serial\t\t: 0000000000000000\n")
    machine["machine-id"].write_text("0123456789ABCDEF0123456789abcdef\n")
    assert hostid.host_id() == "01234567"


def test_no_source_at_all_still_gives_a_hex_id(machine, caplog):
    found = hostid.host_id()
    assert len(found) == hostid.LENGTH and int(found, 16) >= 0
    assert "host name" in caplog.text


def test_the_override_file_wins(machine, tmp_path, monkeypatch):
    machine["serial-number"].write_bytes(PI_SERIAL.encode())
    other = tmp_path / "other-machine-id"
    other.write_text("fedcba9876543210fedcba9876543210\n")
    monkeypatch.setenv(hostid.ENV_VAR, str(other))
    assert hostid.host_id() == "fedcba98"


def test_default_and_templated_external_ids(machine):
    machine["machine-id"].write_text("abcdef0123456789abcdef0123456789\n")
    text = ("site: {latitude: 52.5, longitude: 13.4}\ndevices:\n  - {name: pv, type: pv}\n"
            "  - {name: hp, type: heatpump, external_id: 'house-{host}-hp'}\n"
            "  - {name: meter, type: grid, external_id: my-meter}\n")
    ids = [d.external_id for d in config.parse(text).devices]
    assert ids == ["c8ysim-abcdef01-pv", "house-abcdef01-hp", "my-meter"]
    assert [d.external_id for d in config.parse(text).devices] == ids  # same machine: same


def write_default_id_config(directory: Path, port: int, status_port: int) -> Path:
    path = directory / "c8ysim.yaml"
    path.write_text(
        "site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin, seed: 1}\n"
        f"cumulocity: {{host: 127.0.0.1, port: {port}, tenant: t1, user: u, "
        "password: secret, reconnect_max_s: 2}\n"
        f"storage: {{path: {directory / 'state'}}}\n"
        f"status: {{listen: '127.0.0.1:{status_port}'}}\n"
        "devices:\n  - {name: pv-roof, type: pv, interval_s: 0.5}\n"
        "  - {name: grid-meter, type: grid, interval_s: 0.5}\n")
    path.chmod(0o600)
    return path


def test_two_machines_on_one_tenant_get_their_own_devices(tmp_path, agent_factory):
    agents = []
    with FakeTenant({"t1/u": "secret"}) as tenant:
        for machine_id in ("1111111122222222", "3333333344444444"):
            home = tmp_path / machine_id
            home.mkdir()
            (home / "machine-id").write_text(machine_id * 2 + "\n")
            status_port = free_port()
            agent = agent_factory(write_default_id_config(home, tenant.port, status_port),
                                  status_port, {hostid.ENV_VAR: str(home / "machine-id")})
            agents.append(agent.start())
        wait_until(lambda: all(d["connected"] for a in agents for d in a.devices().values()),
                   15, what="both machines online")
        ids = [{d["external_id"] for d in a.devices().values()} for a in agents]
        assert ids == [{"c8ysim-11111111-pv-roof", "c8ysim-11111111-grid-meter"},
                       {"c8ysim-33333333-pv-roof", "c8ysim-33333333-grid-meter"}]
        time.sleep(3)  # long enough for a takeover loop to show (each knock-off reconnects)
        for client in ids[0] | ids[1]:
            sessions = [f[0] for f in tenant.lines(client)].count("100")
            assert sessions == 1 and tenant.is_connected(client), (client, sessions)
            assert [f[0] for f in tenant.lines(client)].count("201") >= 3, client
        assert tenant.violations == []


def test_check_config_shows_the_ids_to_register(tmp_path):
    (tmp_path / "machine-id").write_text("5555555566666666" * 2 + "\n")
    path = write_default_id_config(tmp_path, 1883, 8080)
    result = subprocess.run([sys.executable, "-m", "c8ysim", "check-config", str(path)],
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, hostid.ENV_VAR: str(tmp_path / "machine-id")})
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[-1] == f"{path}: OK", result.stderr
    assert lines[1].split() == ["pv-roof", "pv", "c8ysim-55555555-pv-roof"]
    assert lines[2].split() == ["grid-meter", "grid", "c8ysim-55555555-grid-meter"]
