"""Config validation: the sample passes; every kind of mistake names file, line and fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import config

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "etc" / "c8ysim.yaml"


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "check-config", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=30)


def mutate(tmp_path: Path, old: str, new: str) -> Path:
    text = SAMPLE.read_text()
    assert old in text, old
    path = tmp_path / "c8ysim.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(needle)


def test_sample_config_is_valid():
    result = check_config(SAMPLE)
    assert result.returncode == 0, result.stderr
    cfg = config.load(str(SAMPLE))
    assert [d.name for d in cfg.devices] == ["pv-roof", "heatpump", "grid-meter"]
    assert [d.external_id for d in cfg.devices] == [
        "c8ysim-pv-roof", "c8ysim-heatpump", "c8ysim-grid-meter"]
    assert cfg.cumulocity.username == "t12345/devuser"
    assert cfg.status.host == "127.0.0.1" and cfg.status.port == 8080


@pytest.mark.parametrize("old, new, needle, message", [
    ("  seed: 1", "  seed: 1\n  sed: 2", "sed: 2", "unknown key 'sed' in site; did you mean 'seed'"),
    ("  port: 1883", "  port: eighteen", "port: eighteen", "cumulocity.port must be an integer"),
    ("  port: 1883", "  port: 70000", "port: 70000", "cumulocity.port: must be a TCP port"),
    ("{name: heatpump,", "{name: pv-roof,", "{name: pv-roof, type: heatpump",
     "duplicate device name 'pv-roof'"),
    ("interval_s: 10}\n  - {name: heatpump", "interval_s: -1}\n  - {name: heatpump",
     "interval_s: -1", "device.interval_s: must be between"),
    ("type: grid", "type: windmill", "type: windmill", "device.type: must be one of"),
    ("  tenant: t12345", "  tenant: [t12345]", "tenant: [t12345]", "cumulocity.tenant must be a string"),
    ("{name: pv-roof, type: pv, interval_s: 10}",
     "{name: pv-roof, type: pv, interval_s: 10, external_id: 'a:b'}", "external_id",
     "must not contain ':'"),
    ("  backend: sqlite", "  backend: postgres", "backend: postgres", "set storage.dsn"),
    ("  listen: 127.0.0.1:8080", "  listen: localhost", "listen: localhost", "use HOST:PORT"),
    ("  timezone: Europe/Berlin", "  timezone: Mars/Olympus", "timezone", "unknown time zone"),
    ("  host: localhost", "  host: localhost\n  host: other", "host: other", "duplicate key 'host'"),
])
def test_mistakes_give_file_line_and_exit_78(tmp_path, old, new, needle, message):
    path = mutate(tmp_path, old, new)
    result = check_config(path)
    assert result.returncode == 78
    expected = f"{path}:{line_of(path, needle)}: "
    matching = [line for line in result.stderr.splitlines() if line.startswith(expected)]
    assert any(message in line for line in matching), result.stderr


def test_broken_yaml_names_the_line(tmp_path):
    path = mutate(tmp_path, "  seed: 1", "  seed: [1")
    result = check_config(path)
    assert result.returncode == 78
    assert result.stderr.startswith(f"{path}:") and "not valid YAML" in result.stderr


def test_all_problems_reported_at_once(tmp_path):
    path = mutate(tmp_path, "  seed: 1", "  seed: x\n  foo: 1")
    result = check_config(path)
    assert result.returncode == 78
    assert len(result.stderr.strip().splitlines()) == 2, result.stderr


def test_missing_file_and_empty_file(tmp_path):
    assert check_config(tmp_path / "nope.yaml").returncode == 78
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = check_config(empty)
    assert result.returncode == 78 and f"{empty}:1:" in result.stderr


def test_run_with_bad_config_exits_78(tmp_path):
    path = mutate(tmp_path, "  seed: 1", "  seed: x")
    result = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 78 and f"{path}:" in result.stderr


def test_config_path_from_environment(tmp_path):
    result = subprocess.run([sys.executable, "-m", "agent", "check-config"], cwd=REPO,
                            capture_output=True, text=True, timeout=30,
                            env={"C8YSIM_CONFIG": str(SAMPLE), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert str(SAMPLE) in result.stdout


def test_version():
    result = subprocess.run([sys.executable, "-m", "agent", "--version"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "c8ysim 0.1.0"


def test_password_file_and_secret_not_in_repr(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cr3t\n")
    path = mutate(tmp_path, "  password: secret", f"  password_file: {secret}")
    cfg = config.load(str(path))
    assert cfg.cumulocity.password == "s3cr3t"
    assert "s3cr3t" not in repr(cfg)


def test_device_parameters_are_checked_against_the_model_catalogue(tmp_path):
    path = mutate(tmp_path, "{name: pv-roof, type: pv, interval_s: 10}",
                  "{name: pv-roof, type: pv, interval_s: 10, pv: {peak_kw: 6.5, tilt: 3}}")
    with pytest.raises(config.ConfigError) as error:
        config.load(str(path))
    assert "unknown key 'tilt' in device.pv; did you mean 'tilt_deg'" in str(error.value)
