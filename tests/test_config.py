"""Config validation: the sample passes; every kind of mistake names file, line and fix."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from c8ysim import config, hostid

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "etc" / "c8ysim.yaml"


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "c8ysim", "check-config", str(path)],
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
    host = hostid.host_id()
    assert [d.external_id for d in cfg.devices] == [
        f"c8ysim-{host}-pv-roof", f"c8ysim-{host}-heatpump", f"c8ysim-{host}-grid-meter"]
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
    result = subprocess.run([sys.executable, "-m", "c8ysim", "run", "--config", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 78 and f"{path}:" in result.stderr


def test_config_path_from_environment(tmp_path):
    result = subprocess.run([sys.executable, "-m", "c8ysim", "check-config"], cwd=REPO,
                            capture_output=True, text=True, timeout=30,
                            env={"C8YSIM_CONFIG": str(SAMPLE), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert str(SAMPLE) in result.stdout


def test_version():
    result = subprocess.run([sys.executable, "-m", "c8ysim", "--version"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "c8ysim 0.1.0"


def test_password_file_and_secret_not_in_repr(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cr3t\n")
    path = mutate(tmp_path, "  password: secret", f"  password_file: {secret}")
    cfg = config.load(str(path))
    assert cfg.cumulocity.password == "s3cr3t"
    assert "s3cr3t" not in repr(cfg)


def test_no_record_with_a_secret_shows_it():
    """The records are named tuples, whose own repr shows every field: each one that holds a
    secret has a repr without it, also inside another record's repr, str() and f-strings."""
    from c8ysim.uplink.credentials import Credentials
    from c8ysim.uplink.transport import Endpoint

    secret = "pw-HUNTER2"
    records = [
        config.BootstrapConfig(password=secret),
        config.CumulocityConfig("h", 1883, None, "t", "u", password=secret,
                                bootstrap=config.BootstrapConfig(password=secret)),
        config.StorageConfig(backend="postgresql", dsn=f"postgresql://u:{secret}@db/x"),
        config.StatusConfig(password=secret),
        Endpoint("h", 8883, "id", "t/u", secret, 60),
        Credentials("t", "u", secret),
    ]
    for record in records:
        assert secret in str(tuple(record))  # it holds the secret: the repr leaves it out
        for shown in (repr(record), str(record), f"{record}", repr([record]),
                      repr(config.Problem(1, record))):
            assert secret not in shown, shown
            assert shown.count(type(record).__name__) == 1 and "=" in shown
    assert "password=" not in repr(records[0]) and "tenant='management'" in repr(records[0])


def test_device_parameters_are_checked_against_the_model_catalogue(tmp_path):
    path = mutate(tmp_path, "{name: pv-roof, type: pv, interval_s: 10}",
                  "{name: pv-roof, type: pv, interval_s: 10, pv: {peak_kw: 6.5, tilt: 3}}")
    with pytest.raises(config.ConfigError) as error:
        config.load(str(path))
    assert "unknown key 'tilt' in device.pv; did you mean 'tilt_deg'" in str(error.value)


# -- secrets (issue 13, defect 8) ----------------------------------------------------------

ENTRY_POINT = Path(sys.executable).with_name("c8ysim")
C8YSIM = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "c8ysim"]


def c8ysim_check_config(path: Path) -> subprocess.CompletedProcess:
    """The installed `c8ysim` entry point, as an admin runs it."""
    return subprocess.run([*C8YSIM, "check-config", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "JOURNAL_STREAM": ""})


@pytest.mark.parametrize("value, shown", [
    ("3.14159265", "3.14159265"),
    ("!!binary aHVudGVyMi1zZWNyZXQ=", "aHVudGVyMi1zZWNyZXQ="),
    ("0777", "0777"), ("0777", "511"),
    ("12:30:45", "12:30:45"), ("12:30:45", "45045"),
    ("!!int hunter2-abc", "hunter2-abc"),
    ("2024-02-30", "2024-02-30"),
    ("[hunter2-in-a-list]", "hunter2-in-a-list"),
    ("{hunter2: x}", "hunter2"),
])
def test_mistyped_password_is_an_error_that_never_shows_it(tmp_path, value, shown):
    path = mutate(tmp_path, "  password: secret", f"  password: {value}")
    result = c8ysim_check_config(path)
    assert result.returncode == 78, result.stderr
    assert f"{path}:{line_of(path, 'password:')}: cumulocity.password must be a string" \
        in result.stderr
    assert "quotes" in result.stderr and shown not in result.stderr.replace(str(path), "")
    with pytest.raises(config.ConfigError) as error:  # what a reload logs, line by line
        config.load(str(path))
    assert shown not in str(error.value).replace(str(path), "")


@pytest.mark.parametrize("value, expected", [
    ('"0777"', "0777"), ("'12:30:45'", "12:30:45"), ("!!str 0777", "0777"),
    ('"3.14159265"', "3.14159265"), ("hunter2", "hunter2")])
def test_quoted_password_is_kept_as_written(tmp_path, value, expected):
    path = mutate(tmp_path, "  password: secret", f"  password: {value}")
    assert config.load(str(path)).cumulocity.password == expected


@pytest.mark.parametrize("line", [
    "  password_file: hunter2-typed-here",  # the password typed where its file goes
    "  password_file: [hunter2-typed-here]",
    "  password_file: '/nonexistent/hunter2-typed-here'"])
def test_password_file_errors_never_show_the_value(tmp_path, line):
    path = mutate(tmp_path, "  password: secret", line)
    result = c8ysim_check_config(path)
    assert result.returncode == 78 and "cumulocity.password_file" in result.stderr
    assert "hunter2" not in result.stderr.replace(str(path), "")


def test_no_message_shows_a_value_under_a_secret_looking_key(tmp_path):
    path = mutate(tmp_path, "  password: secret",
                  "  password: secret\n  Password: hunter2-typo\n  api_token: hunter2-tok")
    result = c8ysim_check_config(path)
    assert result.returncode == 78 and "unknown key 'Password'" in result.stderr
    assert "hunter2" not in result.stderr


def _warnings(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if ": warning: " in line]


def test_password_in_a_file_others_can_read_is_a_warning(tmp_path):
    path = mutate(tmp_path, "  seed: 1", "  seed: 1")
    path.chmod(0o644)
    result = c8ysim_check_config(path)
    assert result.returncode == 0, result.stderr
    assert _warnings(result) == [
        f"{path}:{line_of(path, 'password:')}: warning: cumulocity.password is in this file, "
        f"and every user can read {path} (mode 0644): run chmod o-rwx {path} "
        "(group c8ysim may read it)"]
    path.chmod(0o640)  # the packaged mode (root:c8ysim): the service's group reads it
    result = c8ysim_check_config(path)
    assert result.returncode == 0 and _warnings(result) == [], result.stderr


def test_password_file_others_can_read_is_a_warning(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cr3t-pw\n")
    path = mutate(tmp_path, "  password: secret", f"  password_file: {secret}")
    path.chmod(0o644)  # no password in it: no warning about the config file itself
    secret.chmod(0o604)
    result = c8ysim_check_config(path)
    assert result.returncode == 0, result.stderr
    assert len(_warnings(result)) == 1 and f"every user can read {secret}" in result.stderr
    assert "s3cr3t-pw" not in result.stderr
    secret.chmod(0o640)
    assert _warnings(c8ysim_check_config(path)) == []


def test_dsn_with_a_password_in_a_file_others_can_read_is_a_warning(tmp_path):
    path = mutate(tmp_path, "  backend: sqlite",
                  "  backend: postgres\n  dsn: postgresql://c8y:hunter2-db@db/c8y")
    path.chmod(0o644)
    cfg = config.load(str(path))
    assert len(cfg.warnings) == 2 and "storage.dsn holds a password" in cfg.warnings[1]
    assert not any("hunter2" in w for w in cfg.warnings)


def test_the_warning_is_one_log_line_at_warning_once_logging_runs(tmp_path, caplog):
    path = mutate(tmp_path, "  seed: 1", "  seed: 1")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        config.load(str(path))  # as a reload does
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1 and "every user can read" in records[0].getMessage()


@pytest.mark.parametrize("name", ["pv\\n", "pv\\n\\n", "pv\\r", "\\npv", "pv\\t"])
def test_device_name_with_a_line_break_is_refused(tmp_path, name):
    path = mutate(tmp_path, "{name: pv-roof,", f'{{name: "{name}",')
    result = c8ysim_check_config(path)
    assert result.returncode == 78, result.stderr
    assert f"{path}:{line_of(path, 'type: pv,')}: device.name: use 1-64" in result.stderr


def test_no_anchored_validation_pattern_uses_match_with_dollar():
    """`re.match(r"...$")` accepts a trailing newline: names and ids use fullmatch()."""
    import re
    offenders = []
    for source in (REPO / "c8ysim").rglob("*.py"):
        text = source.read_text()
        for pattern in re.findall(r"re\.compile\(\s*r?[\"']([^\"']*)[\"']", text):
            if pattern.endswith("$") and not pattern.endswith("\\$"):
                offenders.append(f"{source.name}: {pattern}")
    assert not offenders, offenders


# -- cumulocity.bootstrap (issue 15) --------------------------------------------------------

def bootstrap_config(tmp_path: Path, cumulocity: str, mode: int = 0o600) -> Path:
    path = tmp_path / "c8ysim.yaml"
    path.write_text("site: {latitude: 52.52, longitude: 13.40}\n"
                    "cumulocity:\n  host: mqtt.example.invalid\n" + cumulocity +
                    "devices:\n  - {name: pv, type: pv, external_id: xid-pv}\n")
    path.chmod(mode)
    return path


def test_bootstrap_alone_is_a_valid_uplink(tmp_path):
    cfg = config.load(str(bootstrap_config(
        tmp_path, "  bootstrap:\n    password: \"0777-boot\"\n")))
    c8y = cfg.cumulocity
    assert (c8y.tenant, c8y.user, c8y.password, c8y.username) == (None, None, None, None)
    assert c8y.bootstrap == config.BootstrapConfig("management", "devicebootstrap",
                                                   "0777-boot")
    assert c8y.bootstrap.username == "management/devicebootstrap"
    assert "0777-boot" not in repr(cfg) and cfg.warnings == ()


def test_bootstrap_password_file_tenant_and_user(tmp_path):
    secret = tmp_path / "bootstrap-password"
    secret.write_text("b00t-secret\n")
    secret.chmod(0o600)
    cfg = config.load(str(bootstrap_config(tmp_path, (
        f"  bootstrap: {{tenant: edge, user: bootstrapper, password_file: {secret}}}\n"
        "  tenant: t1\n  user: u\n  password: pw\n"))))  # a login too: allowed
    assert cfg.cumulocity.bootstrap == config.BootstrapConfig("edge", "bootstrapper",
                                                              "b00t-secret")
    assert cfg.cumulocity.username == "t1/u"


@pytest.mark.parametrize("cumulocity, needle, message", [
    ("  bootstrap:\n    tenant: management\n", "tenant: management",  # the mapping's line
     "cumulocity.bootstrap needs 'password' or 'password_file'"),
    ("  bootstrap: true\n", "bootstrap:", "cumulocity.bootstrap must be a mapping"),
    ("  bootstrap: {password: x, pasword: y}\n", "bootstrap:",
     "unknown key 'pasword' in cumulocity.bootstrap; did you mean 'password'"),
    ("  bootstrap:\n    password: \"\"\n", "password:", "cumulocity.bootstrap: the password "
     "is empty"),
    ("  bootstrap:\n    password: pw\n    password_file: /etc/hostname\n", "password_file",
     "set either cumulocity.bootstrap.password or cumulocity.bootstrap.password_file"),
    ("  bootstrap:\n    password: pw\n    tenant: a/b\n", "tenant:",
     "cumulocity.bootstrap.tenant: must not contain '/'"),
    ("  bootstrap:\n    password: pw\n    user: [x]\n", "user:",
     "cumulocity.bootstrap.user must be a string"),
    ("  bootstrap:\n    password_file: /nonexistent/boot\n", "password_file",
     "cumulocity.bootstrap.password_file: cannot read that file"),
    ("  tenant: t1\n  bootstrap: {password: pw}\n", "tenant: t1",
     "cumulocity.tenant, user and password (or password_file) go together"),
    ("  tenant: t1\n  user: u\n", "host:", "cumulocity needs 'password' or "
     "'password_file' (or tls.cert_file for certificate login, or bootstrap"),
    ("  tls: {cert_file: '/x/{external_id}.pem', key_file: '/x/{external_id}.key'}\n"
     "  bootstrap: {password: pw}\n", "bootstrap:",
     "cumulocity.bootstrap is for devices that log in with a password"),
])
def test_bootstrap_mistakes_give_file_line_and_exit_78(tmp_path, cumulocity, needle, message):
    path = bootstrap_config(tmp_path, cumulocity)
    result = check_config(path)
    assert result.returncode == 78, result.stderr
    expected = f"{path}:{line_of(path, needle)}: "
    assert any(line.startswith(expected) and message in line
               for line in result.stderr.splitlines()), result.stderr


@pytest.mark.parametrize("value, shown", [("0777", "511"), ("12:30:45", "45045"),
                                          ("[hunter2-boot]", "hunter2-boot")])
def test_mistyped_bootstrap_password_is_an_error_that_never_shows_it(tmp_path, value, shown):
    path = bootstrap_config(tmp_path, f"  bootstrap:\n    password: {value}\n")
    result = c8ysim_check_config(path)
    assert result.returncode == 78, result.stderr
    assert (f"{path}:{line_of(path, 'password:')}: cumulocity.bootstrap.password must be a "
            "string") in result.stderr and "quotes" in result.stderr
    assert shown not in result.stderr.replace(str(path), "")


def test_bootstrap_password_others_can_read_is_a_warning(tmp_path):
    path = bootstrap_config(tmp_path, "  bootstrap:\n    password: hunter2-boot\n", 0o644)
    result = c8ysim_check_config(path)
    assert result.returncode == 0, result.stderr
    assert _warnings(result) == [
        f"{path}:{line_of(path, 'password:')}: warning: cumulocity.bootstrap.password is in "
        f"this file, and every user can read {path} (mode 0644): run chmod o-rwx {path} "
        "(group c8ysim may read it)"]
    assert "hunter2" not in result.stderr
    secret = tmp_path / "boot-password"
    secret.write_text("hunter2-boot\n")
    secret.chmod(0o644)
    path = bootstrap_config(tmp_path, f"  bootstrap:\n    password_file: {secret}\n", 0o644)
    warnings = _warnings(c8ysim_check_config(path))
    assert len(warnings) == 1 and "cumulocity.bootstrap.password_file holds the password, " \
        f"and every user can read {secret}" in warnings[0]


def test_a_device_may_have_its_own_place_on_the_map():
    cfg = config.parse("site: {latitude: 52.5, longitude: 13.4}\ndevices:\n"
                       "  - {name: pv, type: pv}\n"
                       "  - {name: hp, type: heatpump, latitude: -33.9, altitude_m: 12}\n")
    assert cfg.position("pv") == (52.5, 13.4, None)
    assert cfg.position("hp") == (-33.9, 13.4, 12.0)
    with pytest.raises(config.ConfigError, match=r"<string>:3: device.latitude: must be "
                                                 r"between -90 and 90"):
        config.parse("site: {latitude: 52.5, longitude: 13.4}\ndevices:\n"
                     "  - {name: pv, type: pv, latitude: 91}\n")


SCENARIOS_OK = """scenarios:
  - {at: "14:00", for: 30m, device: heatpump, fault: compressor_fault}
  - {at: 07:30, for: 1h, weather: overcast}
  - {after: 2m, for: 90s, device: grid-meter, fault: outage}
  - {after: 10m, for: 5m, device: pv-roof, uplink_outage: true}
  - {after: 1h, for: 2h, device: pv-roof, fault: comms_loss}
"""


def test_scenarios_are_read_with_their_times(tmp_path):
    path = tmp_path / "c8ysim.yaml"
    path.write_text(SAMPLE.read_text() + SCENARIOS_OK)
    assert check_config(path).returncode == 0
    found = [(s.what, s.name, s.device, s.duration_s, s.daily_at_s, s.after_s)
             for s in config.load(str(path)).site.scenarios]
    assert found == [
        ("fault", "compressor_fault", "heatpump", 1800.0, 50400.0, None),
        ("weather", "overcast", "", 3600.0, 27000.0, None),  # 07:30 unquoted: YAML's 450
        ("fault", "outage", "grid-meter", 90.0, None, 120.0),
        ("fault", "comms_loss", "pv-roof", 300.0, None, 600.0),
        ("fault", "comms_loss", "pv-roof", 7200.0, None, 3600.0)]


@pytest.mark.parametrize("entry, message", [
    ('{at: "14:00", for: 30m, device: pv-roof, fault: outage}',
     "scenario.fault: 'outage' is not a fault of pv-roof (type pv): use one of inverter_trip, "
     "comms_loss"),
    ('{at: "24:00", for: 30m, weather: clear}', "scenario.at: '24:00' is not a time of day"),
    ('{at: "14:00", for: 2d, weather: clear}', "scenario.for: a duration must be more than 0 "
     "and at most 1d"),
    ('{after: 1m, for: 8d, device: pv-roof, fault: inverter_trip}', "at most 7d"),
    ('{after: soon, for: 1m, weather: clear}', "scenario.after: 'soon' is not a duration like "
     "30s, 10m, 2h or 7d"),
    ('{at: "14:00", for: 1m, device: attic, fault: outage}',
     "the scenario's device 'attic' is not one of the devices (pv-roof, heatpump, grid-meter)"),
    ('{at: "14:00", for: 1m, fault: outage}', "a fault scenario needs 'device'"),
    ('{at: "14:00", after: 1m, for: 1m, weather: clear}', "a scenario needs one of 'at'"),
    ('{at: "14:00", for: 1m, weather: clear, fault: outage, device: grid-meter}',
     "a scenario needs one of 'at'"),
    ('{at: "14:00", for: 1m, device: pv-roof, weather: clear}',
     "weather is the whole site's: leave 'device' out"),
    ('{at: "14:00", for: 1m, weather: sunny}', "scenario.weather: must be one of clear, "
     "cloudy, overcast"),
    ('{at: "14:00", for: 1m, device: pv-roof, uplink_outage: false}',
     "scenario.uplink_outage: must be true"),
    ('{at: "14:00", for: 1m, weather: clear, when: now}', "unknown key 'when' in a scenario"),
    ("just words", "a scenario must be a mapping"),
])
def test_scenario_mistakes_give_file_line_and_exit_78(tmp_path, entry, message):
    path = tmp_path / "c8ysim.yaml"
    path.write_text(SAMPLE.read_text() + "scenarios:\n  - {at: \"01:00\", for: 1m, weather: "
                    f"clear}}\n  - {entry}\n")
    result = check_config(path)
    assert result.returncode == 78, result.stderr
    expected = f"{path}:{len(path.read_text().splitlines())}: "
    assert any(line.startswith(expected) and message in line
               for line in result.stderr.splitlines()), result.stderr


def test_scenarios_must_be_a_list(tmp_path):
    path = tmp_path / "c8ysim.yaml"
    path.write_text(SAMPLE.read_text() + "scenarios: {at: '14:00'}\n")
    result = check_config(path)
    assert result.returncode == 78 and "'scenarios' must be a list" in result.stderr
