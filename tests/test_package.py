"""The Debian package and the single-file form, as a user gets them.

`make lint` (build + lintian) and `make pyz` run once per module into a private directory, so
parallel runs do not share build output. The pyz runs on Debian's own python3 and python3-*
packages (paho-mqtt 1.6.1), not the venv; the .deb is inspected with dpkg-deb and, where
systemd-nspawn works, installed, reloaded, upgraded and purged under a real systemd.
`c8ysim diag` is checked for leaking no secret. The autopkgtest (debian/tests/smoke) runs there
too: it passes on the installed package and fails when the service cannot serve.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from c8ysim import __version__, config, diag, exits
from c8ysim.storage import open_buffer
from conftest import REPO, Mosquitto, Recorder, free_port, port_open, wait_until, write_config

SYSTEM_PYTHON = "/usr/bin/python3"
PLAIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
DEB_NAME = f"c8ysim_{__version__}_all.deb"
MAKE_TIMEOUT_S = 300
PACKAGED_CONFIG = REPO / "debian" / "c8ysim.yaml"
SMOKE = REPO / "debian" / "tests" / "smoke"  # the autopkgtest (debian/tests/control)
SMOKE_TIMEOUT_S = 120
# pyproject.toml's dependencies -> the Debian 12 packages that provide them
DEBIAN_NAMES = {"paho-mqtt": "python3-paho-mqtt", "PyYAML": "python3-yaml",
                "bottle": "python3-bottle", "sdnotify": "python3-sdnotify"}
SECRET = "Hunter2-not-for-support"


def make(*targets: str, out: Path) -> subprocess.CompletedProcess:
    argv = ["make", "--no-print-directory", "-C", str(REPO), *targets, f"DIST={out}/dist",
            f"DEB_BUILD_DIR={out}/deb", f"PYZ_BUILD_DIR={out}/pyz"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=MAKE_TIMEOUT_S)


@pytest.fixture(scope="module")
def lint(tmp_path_factory) -> subprocess.CompletedProcess:
    """`make lint`: builds the .deb, then runs lintian -I --pedantic on it."""
    for tool in ("dpkg-buildpackage", "dh", "lintian"):
        assert shutil.which(tool, path=PLAIN_ENV["PATH"]), f"no {tool}: run `make deb-deps`"
    out = tmp_path_factory.mktemp("package")
    result = make("lint", out=out)
    result.deb = out / "dist" / DEB_NAME
    return result


@pytest.fixture(scope="module")
def deb(lint) -> Path:
    assert lint.deb.exists(), lint.stdout[-3000:] + lint.stderr[-3000:]
    return lint.deb


@pytest.fixture(scope="module")
def unpacked(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(root / "DEBIAN")], check=True)
    return root


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pyz")
    result = make("pyz", out=out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "dist" / "c8ysim.pyz"


def system_python(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEM_PYTHON, *map(str, argv)], env=PLAIN_ENV, capture_output=True,
                          text=True, timeout=30, **kwargs)


# -- the build ---------------------------------------------------------------------------

def test_one_version_everywhere():
    changelog = (REPO / "debian/changelog").read_text().split("\n", 1)[0]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    man = (REPO / "docs/c8ysim.8").read_text()
    assert changelog.startswith(f"c8ysim ({__version__}) ")
    assert pyproject["project"]["version"] == __version__
    assert f'"c8ysim {__version__}"' in man


def test_lintian_reports_no_error_and_no_warning(lint):
    output = lint.stdout + lint.stderr
    assert lint.returncode == 0, output[-5000:]
    tags = [line for line in output.splitlines() if re.match(r"^[EW]: ", line)]
    assert not tags, tags


def test_source_package_runs_the_autopkgtest(deb):
    # dpkg-source adds the field for debian/tests/control; lintian checked the source too
    dsc = (deb.parent / f"c8ysim_{__version__}.dsc").read_text()
    assert re.search(r"^Testsuite: autopkgtest$", dsc, re.M), dsc


def test_control_fields_and_depends_match_pyproject(deb):
    fields = dict(re.findall(r"^ (\w[\w-]*): (.*)$",
                             subprocess.check_output(["dpkg-deb", "--info", str(deb)], text=True),
                             re.M))
    assert (fields["Package"], fields["Version"], fields["Architecture"]) == \
        ("c8ysim", __version__, "all")
    depends = {d.strip() for d in fields["Depends"].split(",")}
    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
            "dependencies"]:
        name, minimum = re.fullmatch(r"([\w.-]+)>=([\w.]+)", requirement).groups()
        assert f"{DEBIAN_NAMES[name]} (>= {minimum})" in depends, (requirement, depends)
    assert {"procps", "tzdata"} <= depends  # ExecReload's /bin/kill; zoneinfo's data
    assert any(d.startswith("python3:any (>= 3.11") for d in depends), depends
    assert fields["Suggests"] == "python3-psycopg2"


def test_files_unit_conffile_user_and_man_page(unpacked):
    paths = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()}
    for path in ("usr/bin/c8ysim", "usr/lib/python3/dist-packages/c8ysim/main.py",
                 "usr/lib/python3/dist-packages/c8ysim/diag.py", "lib/systemd/system/c8ysim.service",
                 "usr/lib/sysusers.d/c8ysim.conf", "usr/share/man/man8/c8ysim.8.gz",
                 "etc/c8ysim.yaml", "usr/share/doc/c8ysim/copyright"):
        assert path in paths, path
    assert not [p for p in paths if "__pycache__" in p or
                p.endswith(".pyc")]
    assert os.access(unpacked / "usr/bin/c8ysim", os.X_OK)
    # one copy of the unit and of the packaged default config, shipped as they are
    assert (unpacked / "lib/systemd/system/c8ysim.service").read_bytes() == \
        (REPO / "systemd/c8ysim.service").read_bytes()
    assert (unpacked / "etc/c8ysim.yaml").read_bytes() == PACKAGED_CONFIG.read_bytes()
    assert (unpacked / "DEBIAN/conffiles").read_text().split() == ["/etc/c8ysim.yaml"]
    assert re.search(r"^u c8ysim ", (unpacked / "usr/lib/sysusers.d/c8ysim.conf").read_text(),
                     re.M)
    postinst = (unpacked / "DEBIAN/postinst").read_text()
    assert "dpkg-statoverride --update --add root c8ysim 0640" in postinst
    assert postinst.index("dpkg-statoverride --update") < postinst.index("deb-systemd-invoke")
    man = gzip.decompress((unpacked / "usr/share/man/man8/c8ysim.8.gz").read_bytes()).decode()
    assert man.startswith(".TH C8YSIM 8")


def test_man_page_covers_every_command():
    from c8ysim import main

    parser = main._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    man = (REPO / "docs/c8ysim.8").read_text().replace("\\-", "-")
    assert [c for c in commands.choices if f".B {c}" not in man] == []


# -- the packaged default config ----------------------------------------------------------

def test_packaged_config_runs_without_an_uplink_and_its_example_is_valid():
    cfg = config.load(str(PACKAGED_CONFIG))
    assert cfg.cumulocity is None
    assert cfg.storage.backend == "sqlite" and cfg.storage.path == "/var/lib/c8ysim"
    assert cfg.status.host == "127.0.0.1"
    # the commented-out example, uncommented, is a valid uplink
    text = re.sub(r"^# (cumulocity:|  )", r"\1", PACKAGED_CONFIG.read_text(), flags=re.M)
    example = config.parse(text, "uncommented example")
    assert example.cumulocity and example.cumulocity.host.endswith("cumulocity.com")


# -- the single-file form on Debian's python3 ---------------------------------------------

def test_pyz_runs_on_debian_python(pyz, tmp_path):
    assert os.access(pyz, os.X_OK)
    version = system_python(pyz, "--version")
    assert version.stdout.strip() == f"c8ysim {__version__}", version.stderr
    checked = system_python(pyz, "check-config", PACKAGED_CONFIG)
    assert checked.returncode == 0 and checked.stdout.strip().endswith(": OK"), checked.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: {latitude: 91}\n")
    refused = subprocess.run([str(pyz), "check-config", str(bad)], env=PLAIN_ENV,
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == exits.CONFIG, refused
    assert f"{bad}:1:" in refused.stderr


def test_pyz_agent_publishes_with_debian_paho_1_6_1(pyz, tmp_path, mosquitto, recorder):
    paho = system_python("-c", "import paho.mqtt as m, sys; print(m.__version__, sys.path)")
    assert paho.stdout.startswith("1.6.1 "), paho.stdout + paho.stderr
    assert ".venv" not in paho.stdout
    status_port = free_port()
    cfg = write_config(tmp_path, mosquitto.port, status_port)
    log = open(tmp_path / "pyz.log", "wb")
    proc = subprocess.Popen([SYSTEM_PYTHON, str(pyz), "run", "--config", str(cfg)],
                            env={**PLAIN_ENV, "PYTHONUNBUFFERED": "1"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:  # 201: SmartREST measurements; field 1 is the device type
        wait_until(lambda: len({line.split(",")[1] for line in recorder.lines()
                                if line.startswith("201,")}) == 3, 20,
                   what="measurements of all three devices")
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/api/status") as response:
            assert json.load(response)["agent"]["uplink"] == f"127.0.0.1:{mosquitto.port}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


# -- c8ysim diag ---------------------------------------------------------------------------

REDACT_CASES = [
    (f"  password: {SECRET}\n", "  password: <redacted>\n"),
    (f'  password: "{SECRET} #x"  # note\n', "  password: <redacted>\n"),
    (f"# password: {SECRET}\n", "# password: <redacted>\n"),
    (f"c: {{host: h, password: '{SECRET}', user: u}}\n",
     "c: {host: h, password: <redacted>, user: u}\n"),
    (f"  password: |\n    {SECRET}\n  port: 1\n", "  password: <redacted>\n    <redacted>\n"
                                                     "  port: 1\n"),
    (f"  dsn: postgresql://c8y:{SECRET}@db/c8y\n", "  dsn: postgresql://c8y:<redacted>@db/c8y\n"),
    (f"  dsn: host=db password={SECRET} user=c8y\n",
     "  dsn: host=db password=<redacted> user=c8y\n"),
    ("  password_file: /etc/c8ysim/password\n  tls: {key_file: /etc/c8ysim/key.pem}\n",
     "  password_file: /etc/c8ysim/password\n  tls: {key_file: /etc/c8ysim/key.pem}\n"),
]


@pytest.mark.parametrize(("text", "expected"), REDACT_CASES)
def test_redact_removes_passwords_and_keeps_paths_and_lines(text, expected):
    assert diag.redact(text) == expected


def _write_diag_config(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "c8ysim.yaml"
    cfg.write_text(
        "site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin}\n"
        "cumulocity:\n  host: 127.0.0.1\n  port: 1\n  tenant: t1\n  user: u\n"
        f"  password: {SECRET}\n"
        f"storage: {{path: {state}}}\n"
        f"status: {{listen: '127.0.0.1:{free_port()}'}}\n"
        "devices:\n  - {name: pv-roof, type: pv, interval_s: 1}\n")
    buffer = open_buffer(config.StorageConfig(path=str(state)), "pv-roof")
    buffer.put_many([("s/us", b"201,x", time.time())] * 3, meta={"registered": "1"})
    buffer.close()
    return cfg


def _bundle(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()
                for m in tar.getmembers() if m.isfile()}


def test_diag_bundle_holds_no_password_but_the_buffer_stats(tmp_path):
    parser = argparse.ArgumentParser()
    diag.add_parser(parser.add_subparsers())
    output = tmp_path / "bundle.tar.gz"
    args = parser.parse_args(["diag", "--config", str(_write_diag_config(tmp_path)),
                              "-o", str(output)])
    assert args.handler(args) == 0
    assert output.stat().st_mode & 0o777 == 0o600
    files = _bundle(output)
    assert {"summary.txt", "config.yaml", "journal.txt", "buffers.json",
            "versions.json"} <= set(files)
    assert [name for name, text in files.items() if SECRET in text] == []
    assert "  password: <redacted>" in files["config.yaml"]
    assert "check-config: OK" in files["summary.txt"]
    buffer = json.loads(files["buffers.json"])["pv-roof"]
    assert buffer["outbox_rows"] == 3 and buffer["meta"]["registered"] == "1"
    versions = json.loads(files["versions.json"])
    assert versions["c8ysim"] == __version__ and versions["yaml"] and versions["paho"]


def test_c8ysim_diag_command(tmp_path):
    from c8ysim import main

    if "diag" not in main._parser().format_help():
        pytest.skip("c8ysim/main.py does not call diag.add_parser yet")
    output = tmp_path / "cli.tar.gz"
    result = subprocess.run([sys.executable, "-m", "c8ysim", "diag", "--config",
                             str(_write_diag_config(tmp_path)), "--output", str(output)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not [name for name, text in _bundle(output).items() if SECRET in text]


# -- under a real systemd ------------------------------------------------------------------

def _rebuilt_package(tmp_path: Path) -> Path:
    """The same package as a newer version whose default config changed (for the upgrade)."""
    tree = tmp_path / "tree"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "build", "dist", ".pytest_cache", ".hypothesis",
        "var", "*.egg-info"), symlinks=True)
    changelog = tree / "debian/changelog"
    top = changelog.read_text().split("\n", 1)[0]
    changelog.write_text(changelog.read_text().replace(
        top, top.replace(f"({__version__})", f"({__version__}.1)"), 1))
    conffile = tree / "debian/c8ysim.yaml"
    conffile.write_text(conffile.read_text() + "# a changed default\n")
    result = subprocess.run(["make", "--no-print-directory", "-C", str(tree), "deb"],
                            capture_output=True, text=True, timeout=MAKE_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tree / "dist" / f"c8ysim_{__version__}.1_all.deb"


def test_deb_under_systemd_install_reload_upgrade_purge(deb, tmp_path, mosquitto):
    import nspawn

    reason = nspawn.unavailable()
    if reason:
        pytest.skip(f"systemd-nspawn: {reason}")
    newer = _rebuilt_package(tmp_path)
    base = nspawn.rootfs()
    with nspawn.Container(base, tmp_path / "box") as box:
        for package in (deb, newer):
            shutil.copy(package, box.root / "root" / package.name)
        status_port = _preseed_status_port(box)
        box.boot()
        _install_and_check(box, deb, status_port)
        recorder = Recorder(mosquitto.port)
        try:
            wait_until(recorder.client.is_connected, 5, what="the recorder to connect")
            _connect_to_broker(box, mosquitto, recorder, status_port)
            _upgrade_keeps_the_edited_conffile(box, newer, recorder)
        finally:
            recorder.close()
        _purge_and_check(box)


def test_autopkgtest_smoke_passes_and_fails_when_the_service_cannot_serve(deb, tmp_path):
    import nspawn

    reason = nspawn.unavailable()
    if reason:
        pytest.skip(f"systemd-nspawn: {reason}")
    control = (REPO / "debian/tests/control").read_text()
    assert re.search(r"^Tests: smoke$", control, re.M) and os.access(SMOKE, os.X_OK)
    with nspawn.Container(nspawn.rootfs(), tmp_path / "box") as box:
        shutil.copy(deb, box.root / "root" / deb.name)
        shutil.copy(SMOKE, box.root / "root/smoke")
        status_port = _preseed_status_port(box)
        box.boot()
        _apt(box, "install", "--no-install-recommends", f"/root/{deb.name}")
        passed = _smoke(box)
        # autopkgtest fails a test that writes to stderr (control has no allow-stderr)
        assert (passed.returncode, passed.stderr) == (0, ""), passed.stdout + passed.stderr
        assert passed.stdout.splitlines()[-1] == "smoke: OK"
        assert "/api/status: grid-meter, heatpump, pv-roof running, with readings" in \
            passed.stdout, passed.stdout
        # it leaves the service as it found it: running
        assert box.run("systemctl", "is-active", "c8ysim").stdout.strip() == "active"

        # Something else holds the status port (the container shares the host's loopback):
        # the agent cannot serve, and the smoke test must fail, for that reason.
        box.run("systemctl", "stop", "c8ysim")
        with socket.create_server(("127.0.0.1", status_port)):
            blocked = _smoke(box)
        assert blocked.returncode not in (0, 77), blocked.stdout + blocked.stderr
        assert "smoke: FAIL: the service did not start" in blocked.stderr, blocked.stderr
        assert "Address already in use" in blocked.stderr, blocked.stderr

        # the port free again, the same service passes again
        again = _smoke(box)
        assert (again.returncode, again.stderr) == (0, ""), again.stdout + again.stderr


def _smoke(box) -> subprocess.CompletedProcess:
    return box.run("/root/smoke", check=False, timeout_s=SMOKE_TIMEOUT_S)


def _preseed_status_port(box) -> int:
    """The status port the installed service will use. The container shares the host's
    loopback: if someone else holds the default one, preseed the conffile with a free one
    (dpkg keeps a preseeded file)."""
    if not port_open(8080):
        return 8080
    status_port = free_port()
    box.write("etc/c8ysim.yaml", PACKAGED_CONFIG.read_text().replace(
        "127.0.0.1:8080", f"127.0.0.1:{status_port}"))
    return status_port


def _apt(box, *args: str):
    return box.sh("DEBIAN_FRONTEND=noninteractive apt-get -q -y "
                  "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
                  + " ".join(args), timeout_s=180)


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as response:
        return json.load(response)


def _uplink(port: int) -> str | None:
    try:
        return _status(port)["agent"]["uplink"]
    except OSError:
        return None


def _install_and_check(box, deb: Path, status_port: int) -> None:
    _apt(box, "install", "--no-install-recommends", f"/root/{deb.name}")
    assert box.run("systemctl", "is-enabled", "c8ysim").stdout.strip() == "enabled"
    assert box.run("systemctl", "is-active", "c8ysim").stdout.strip() == "active"
    assert box.run("stat", "-c", "%a %U %G", "/etc/c8ysim.yaml").stdout.split() == \
        ["640", "root", "c8ysim"]
    main_pid = box.run("systemctl", "show", "-p", "MainPID", "--value", "c8ysim").stdout.strip()
    assert box.run("ps", "-o", "user=", "-p", main_pid).stdout.strip() == "c8ysim"
    assert _status(status_port)["agent"]["uplink"] == "not configured"
    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/", timeout=2) as response:
        assert re.search(r"not configured|no uplink", response.read().decode())
    assert box.run("c8ysim", "check-config").stdout.splitlines()[-1] == "/etc/c8ysim.yaml: OK"
    verify = box.run("systemd-analyze", "verify", "--man=no", "c8ysim.service")
    assert verify.stderr == "", verify.stderr


def _connect_to_broker(box, mosquitto: Mosquitto, recorder: Recorder, status_port: int):
    """Edit the conffile as a user would (keeping its owner and mode) and reload."""
    uplink = (f"cumulocity: {{host: 127.0.0.1, port: {mosquitto.port}, tenant: t1, user: u, "
              f"password: {SECRET}, reconnect_max_s: 2}}\n")
    box.sh(f"sed -i 's/^devices:/{uplink.strip()}\\ndevices:/' /etc/c8ysim.yaml")
    box.sh("sed -i 's/interval_s: 10/interval_s: 1/' /etc/c8ysim.yaml")
    box.run("systemctl", "reload", "c8ysim")
    wait_until(lambda: _uplink(status_port) == f"127.0.0.1:{mosquitto.port}", 15,
               what="the reload")
    wait_until(lambda: any(line.startswith("201,") for line in recorder.lines()), 30,
               what="measurements from the service")
    if "diag" in box.run("c8ysim", "--help").stdout:
        box.run("c8ysim", "diag", "-o", "/root/diag.tar.gz")
        assert SECRET not in box.sh("tar -xzOf /root/diag.tar.gz").stdout


def _upgrade_keeps_the_edited_conffile(box, newer: Path, recorder: Recorder) -> None:
    edited = box.run("cat", "/etc/c8ysim.yaml").stdout
    _apt(box, "install", f"/root/{newer.name}")
    assert box.run("dpkg-query", "-W", "-f", "${Version}", "c8ysim").stdout == \
        f"{__version__}.1"
    assert box.run("cat", "/etc/c8ysim.yaml").stdout == edited
    assert "# a changed default" in box.run("cat", "/etc/c8ysim.yaml.dpkg-dist").stdout
    assert box.run("stat", "-c", "%a %U %G", "/etc/c8ysim.yaml").stdout.split() == \
        ["640", "root", "c8ysim"]
    assert box.run("systemctl", "is-active", "c8ysim").stdout.strip() == "active"
    seen = len(recorder.lines())
    wait_until(lambda: len(recorder.lines()) > seen, 20, what="measurements after the upgrade")


def _purge_and_check(box) -> None:
    _apt(box, "purge", "c8ysim")
    assert box.run("getent", "passwd", "c8ysim", check=False).returncode != 0
    assert box.run("pgrep", "-f", "c8ysim", check=False).returncode != 0
    for path in ("/etc/c8ysim.yaml", "/var/lib/c8ysim", "/lib/systemd/system/c8ysim.service",
                 "/usr/lib/python3/dist-packages/c8ysim"):
        assert box.run("test", "-e", path, check=False).returncode != 0, path
    assert "c8ysim" not in box.run("dpkg-statoverride", "--list").stdout
