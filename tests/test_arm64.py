"""The .deb on the Raspberry Pi's own userland: Debian 12 arm64 under qemu-user (issue 8).

An arm64 bookworm root (debootstrap --foreign + --second-stage under emulation, with the
package's Debian dependencies) is built once and cached outside the clone, under
/var/cache/c8ysim-tests/arm64-bookworm-<hash of suite, layout and package list>. It is built
into a temporary directory and renamed when complete, so an interrupted build never leaves a
cache that looks usable. Each test run works on a throw-away overlay of it: the .deb is
installed there with `apt-get install ./c8ysim_*.deb` (no network: every dependency is already
in the cached root), `c8ysim check-config` runs on the packaged config, and a short
`c8ysim run` publishes to a mosquitto on the host's loopback (the chroot shares the host's
network). /proc is bind-mounted for the run and always unmounted.

Needs root, debootstrap, qemu-user-static and binfmt-support (`make arm64-deps`); without them
the tests fail with what is missing, they never skip. Emulation says nothing about speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, wait_until
from nspawn import CACHE_DIR, MIRROR, locked
from test_package import DEB_NAME, PLAIN_ENV, make

SUITE = "bookworm"
# The .deb's Depends as Debian 12 arm64 provides them; systemd is the `systemd |
# systemd-standalone-sysusers | systemd-sysusers` alternative Raspberry Pi OS has.
ARM64_PACKAGES = ("python3", "python3-paho-mqtt", "python3-yaml", "python3-bottle",
                  "python3-sdnotify", "procps", "tzdata", "systemd")
LAYOUT_VERSION = 1  # bump when _build_root changes: it is part of the cache key
FIRST_STAGE_TIMEOUT_S = 600
SECOND_STAGE_TIMEOUT_S = 1200
CHROOT_TIMEOUT_S = 180
PUBLISH_TIMEOUT_S = 45
AGENT_STOP_TIMEOUT_S = 20
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
EM_AARCH64 = 0xB7
CHROOT_CONFIG = "/root/c8ysim-arm64.yaml"
# A cold build (~5 min on 2 shared cores) runs in the first test's setup; every wait inside is
# bounded on its own, this only lifts the project's 120 s default above the build's bounds.
pytestmark = pytest.mark.timeout(FIRST_STAGE_TIMEOUT_S + SECOND_STAGE_TIMEOUT_S + 300)


# -- prerequisites -------------------------------------------------------------------------

def _missing() -> list[str]:
    """What this machine lacks to run an arm64 root (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (chroot, mount)")
    for tool in ("debootstrap", "chroot", "mount", "umount"):
        if not shutil.which(tool, path=PLAIN_ENV["PATH"]):
            missing.append(tool)
    if not BINFMT.exists():
        missing.append(f"{BINFMT} (qemu-user-static + binfmt-support, binfmt_misc mounted)")
    else:
        entry = BINFMT.read_text()
        if not entry.startswith("enabled"):
            missing.append(f"{BINFMT} is disabled (update-binfmts --enable qemu-aarch64)")
        flags = next((line.split(":", 1)[1] for line in entry.splitlines()
                      if line.startswith("flags:")), "")
        if "F" not in flags:  # without F the interpreter must exist inside the chroot
            missing.append(f"{BINFMT} without the F flag (use qemu-user-static): {flags!r}")
    return missing


def _require_emulation() -> None:
    missing = _missing()
    if missing:
        pytest.fail("cannot run an arm64 root here; missing: " + "; ".join(missing) +
                    ". Run `make arm64-deps` as root.", pytrace=False)


# -- the cached root -------------------------------------------------------------------------

def cache_key(packages=ARM64_PACKAGES) -> str:
    text = "\n".join(["arm64", SUITE, str(LAYOUT_VERSION), *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (longest first), from /proc/self/mountinfo."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _umount_all(path: Path) -> None:
    for point in _mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
    left = _mounts_under(path)
    assert not left, f"still mounted: {left}"


def _remove_tree(path: Path) -> None:
    """rmtree, but never through a mount point (a bound /proc or /dev is not ours to delete)."""
    if path.exists():
        _umount_all(path)
        shutil.rmtree(path)


def _run_logged(argv, log, timeout: float, what: str) -> None:
    """Run argv in a session of its own; on a timeout or an interruption (pytest-timeout,
    Ctrl-C) kill its whole process group, so no emulated process outlives the build."""
    log.write(f"$ {' '.join(argv)}\n".encode())
    log.flush()
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**PLAIN_ENV, "DEBIAN_FRONTEND": "noninteractive"})
    try:
        code = proc.wait(timeout)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    log.write(f"# {what}: exit {code} after {time.monotonic() - started:.0f} s\n".encode())
    log.flush()
    if code:
        raise RuntimeError(f"{what} failed with exit {code} (see {log.name})")


def _build_root(partial: Path, log) -> None:
    packages = ",".join(ARM64_PACKAGES)
    _run_logged(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
                 f"--include={packages}", SUITE, str(partial), MIRROR],
                log, FIRST_STAGE_TIMEOUT_S, "debootstrap first stage")
    try:  # the second stage mounts /proc inside itself; make sure nothing stays mounted
        _run_logged(["chroot", str(partial), "/debootstrap/debootstrap", "--second-stage"],
                    log, SECOND_STAGE_TIMEOUT_S, "debootstrap second stage (emulated)")
    finally:
        _umount_all(partial)
    (partial / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    # No daemon may start in a chroot (there is no init): what Debian's own tools expect.
    policy = partial / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def arm64_root(cache_dir: Path = CACHE_DIR) -> tuple[Path, float | None]:
    """The cached arm64 root, built if missing; and the seconds a build took (None: cached)."""
    path = cache_dir / f"arm64-{SUITE}-{cache_key()}"
    if path.is_dir():
        return path, None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with locked(cache_dir / f".arm64-{SUITE}.lock"):
        if path.is_dir():  # built by another run while this one waited
            return path, None
        for stale in cache_dir.glob(f".{path.name}.partial-*"):  # interrupted builds
            _remove_tree(stale)
        started = time.monotonic()
        partial = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=cache_dir))
        partial.chmod(0o755)
        try:
            with open(path.with_name(path.name + ".log"), "wb") as log:
                _build_root(partial, log)
            assert not _mounts_under(partial)
            partial.rename(path)  # atomic: a root under the final name is complete
        except BaseException:
            _remove_tree(partial)
            raise
        return path, time.monotonic() - started


# -- a throw-away overlay of it ----------------------------------------------------------

class Chroot:
    """An overlay of the cached root with /proc bound; always unmounted on exit."""

    def __init__(self, base: Path, workdir: Path):
        self.base, self.workdir = base, workdir
        self.root = workdir / "root"

    def __enter__(self) -> "Chroot":
        upper, work = self.workdir / "upper", self.workdir / "work"
        for directory in (self.root, upper, work):
            directory.mkdir(parents=True)
        try:
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={self.base},upperdir={upper},workdir={work}",
                            str(self.root)], check=True, capture_output=True, timeout=30)
            subprocess.run(["mount", "--bind", "/proc", str(self.root / "proc")], check=True,
                           capture_output=True, timeout=30)
        except BaseException:
            _umount_all(self.root)
            raise
        return self

    def __exit__(self, *exc) -> None:
        _umount_all(self.root)

    def run(self, *argv: str, check: bool = True, timeout: float = CHROOT_TIMEOUT_S):
        result = subprocess.run(["chroot", str(self.root), *argv], capture_output=True,
                                text=True, timeout=timeout,
                                env={**PLAIN_ENV, "DEBIAN_FRONTEND": "noninteractive"})
        if check:
            assert result.returncode == 0, (argv, result.returncode,
                                            result.stdout[-3000:], result.stderr[-3000:])
        return result

    def popen(self, *argv: str, log) -> subprocess.Popen:
        return subprocess.Popen(["chroot", str(self.root), *argv], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**PLAIN_ENV, "PYTHONUNBUFFERED": "1"})


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root() -> Path:
    _require_emulation()
    path, build_s = arm64_root()
    if build_s is not None:
        print(f"\nbuilt the arm64 root {path} in {build_s:.0f} s")
    return path


@pytest.fixture(scope="module")
def arm64_deb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arm64-deb")
    result = make("deb", out=out)
    deb = out / "dist" / DEB_NAME
    assert result.returncode == 0 and deb.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return deb


@pytest.fixture(scope="module")
def box(root, arm64_deb, tmp_path_factory):
    """One overlay for the module, with the .deb installed (the install is checked below)."""
    with Chroot(root, tmp_path_factory.mktemp("arm64-box")) as chroot:
        shutil.copy(arm64_deb, chroot.root / "root" / DEB_NAME)
        started = time.monotonic()
        chroot.install = chroot.run(
            "apt-get", "install", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0",
            f"/root/{DEB_NAME}", check=False)
        chroot.install_s = time.monotonic() - started
        yield chroot


def _assert_installed(box) -> None:
    install = box.install
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]


# -- the tests -----------------------------------------------------------------------------

def test_root_is_arm64_userland_under_emulation(box):
    assert box.run("uname", "-m").stdout.strip() == "aarch64"
    assert box.run("dpkg", "--print-architecture").stdout.strip() == "arm64"
    # the python3 that runs the agent is an aarch64 ELF, not the host's
    python = (box.root / "usr/bin/python3").resolve()
    header = python.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    machine = box.run("python3", "-c", "import platform; print(platform.machine())")
    assert machine.stdout.strip() == "aarch64"


def test_deb_installs_with_its_debian_dependencies_offline(box):
    _assert_installed(box)
    assert box.run("dpkg-query", "-W", "-f", "${Status} ${Version} ${Architecture}",
                   "c8ysim").stdout.split() == ["install", "ok", "installed",
                                                DEB_NAME.split("_")[1], "all"]
    # every dependency was already in the cached root: c8ysim is the only new package
    assert "0 upgraded, 1 newly installed, 0 to remove" in box.install.stdout, box.install.stdout
    # the packaged Debian 12 libraries, arm64 builds where they are not arch: all
    versions = box.run("python3", "-c", "import paho.mqtt, yaml, bottle, sdnotify; "
                       "print(paho.mqtt.__version__, bottle.__version__)").stdout.split()
    assert versions == ["1.6.1", "0.12.23"]
    assert box.run("dpkg-query", "-W", "-f", "${Architecture}",
                   "python3-yaml").stdout == "arm64"
    # what the postinst does: the system user, the conffile's mode, the enabled unit
    assert box.run("getent", "passwd", "c8ysim").stdout.startswith("c8ysim:")
    assert box.run("stat", "-c", "%a %U %G", "/etc/c8ysim.yaml").stdout.split() == \
        ["640", "root", "c8ysim"]
    assert (box.root / "etc/systemd/system/multi-user.target.wants/c8ysim.service").is_symlink()
    assert box.run("dpkg", "--audit").stdout == ""


def test_check_config_passes_on_the_packaged_config(box):
    _assert_installed(box)
    result = box.run("c8ysim", "check-config", "/etc/c8ysim.yaml", check=False)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "/etc/c8ysim.yaml: OK"), \
        result.stdout + result.stderr


def test_run_publishes_to_a_mosquitto_on_the_host(box, mosquitto, recorder, tmp_path):
    _assert_installed(box)
    status_port = free_port()
    (box.root / CHROOT_CONFIG.lstrip("/")).write_text(
        "site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin, seed: 1}\n"
        f"cumulocity: {{host: 127.0.0.1, port: {mosquitto.port}, tenant: t1, user: u, "
        "password: secret, reconnect_max_s: 2}\n"
        "storage: {backend: sqlite, path: /tmp/c8ysim-arm64-state}\n"
        f"status: {{listen: '127.0.0.1:{status_port}'}}\n"
        "devices:\n"
        "  - {name: pv-roof, type: pv, interval_s: 1}\n"
        "  - {name: heatpump, type: heatpump, interval_s: 1}\n"
        "  - {name: grid-meter, type: grid, interval_s: 1}\n")
    check = box.run("c8ysim", "check-config", CHROOT_CONFIG, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    log_path = tmp_path / "arm64-agent.log"
    with open(log_path, "wb") as log:
        proc = box.popen("timeout", "60", "c8ysim", "run", "--config", CHROOT_CONFIG, log=log)
        try:  # 201: SmartREST measurements; field 1 is the device type
            try:
                wait_until(lambda: proc.poll() is not None or
                           len({line.split(",")[1] for line in recorder.lines()
                                if line.startswith("201,")}) == 3,
                           PUBLISH_TIMEOUT_S, interval=0.2,
                           what="measurements of all three devices from the arm64 agent")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}")
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/api/status",
                                        timeout=5) as response:
                assert json.load(response)["agent"]["uplink"] == f"127.0.0.1:{mosquitto.port}"
            proc.send_signal(signal.SIGTERM)  # timeout(1) passes it on and exits with c8ysim's code
            code = proc.wait(AGENT_STOP_TIMEOUT_S)
            assert code == 0, (code, log_path.read_text(errors="replace")[-3000:])
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
