"""A reusable systemd-nspawn harness: a real systemd (Debian 12) to test units and packages in.

Owns: building a Debian root file system once (debootstrap, cached outside the clone and keyed
by suite and package list, so CI on the same machine reuses it), a throw-away overlay per
container so the cache stays pristine, booting it in a cgroup subtree of its own, running
commands inside, and always powering it off and removing its overlay and cgroups, also when a
test fails. It never starts systemd on the host (shared/docs/systemd-debian-testing.md).

    base = nspawn.rootfs()                       # ~60-90 s the first time, then cached
    with nspawn.Container(base, tmp_path) as box:
        box.write("etc/foo.conf", "...")         # files go in before or after boot
        box.boot()                               # returns once systemd is up
        box.run("systemctl", "start", "foo")     # nsenter into the container
    # here it is powered off, unmounted and its cgroups are gone

`unavailable()` says why this machine cannot run it (not root, tools missing), for skips.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("C8YSIM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE_DIR = Path(os.environ.get("C8YSIM_TEST_CACHE", "/var/cache/c8ysim-tests"))
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps", "iproute2", "python3",
                 "python3-yaml", "python3-paho-mqtt", "python3-bottle", "python3-sdnotify",
                 "python3-psycopg2")
ROOTFS_LAYOUT_VERSION = 1  # bump when _finish_rootfs changes: it is part of the cache key
BUILD_TIMEOUT_S = 900.0
BOOT_TIMEOUT_S = 60.0
POWEROFF_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 30.0
CLEANUP_TIMEOUT_S = 10.0
POLL_S = 0.1
CGROUP_FS = Path("/sys/fs/cgroup")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("systemd-nspawn", "debootstrap", "nsenter")

_names = itertools.count()


class NspawnError(RuntimeError):
    """The container could not be built, booted or reached."""


def unavailable() -> str | None:
    """Why this machine cannot boot a container (None: it can)."""
    if os.geteuid() != 0:
        return "needs root"
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install systemd-container debootstrap)"
    if not _cgroup_roots():
        return "no writable cgroup hierarchy under /sys/fs/cgroup"
    return None


# -- the cached root file system ----------------------------------------------------------

def cache_key(packages=BASE_PACKAGES, suite: str = SUITE) -> str:
    """A short digest of what goes into a rootfs: same key, same tree."""
    text = "\n".join([suite, str(ROOTFS_LAYOUT_VERSION), *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rootfs(packages=BASE_PACKAGES, suite: str = SUITE, cache_dir: Path = CACHE_DIR) -> Path:
    """The path of a Debian root with `packages`, built by debootstrap unless cached."""
    path = cache_dir / f"rootfs-{suite}-{cache_key(packages, suite)}"
    if path.is_dir():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with locked(cache_dir / ".lock"):
        if not path.is_dir():  # another process may have built it while we waited
            _build_rootfs(path, packages, suite)
    return path


@contextlib.contextmanager
def locked(lock_path: Path):
    """An exclusive flock on lock_path for the duration (one cache builder at a time)."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_rootfs(path: Path, packages, suite: str) -> None:
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log_path = path.with_name(path.name + ".log")
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
            suite, str(partial), MIRROR]
    with open(log_path, "w") as log:
        result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                timeout=BUILD_TIMEOUT_S, check=False)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise NspawnError(f"debootstrap failed ({result.returncode}):\n{tail}")
    _finish_rootfs(partial)
    partial.rename(path)  # atomic: a rootfs path that exists is complete


def _finish_rootfs(root: Path) -> None:
    """What minbase lacks for a test container, and what it need not keep."""
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    (root / "etc/machine-id").write_text("")  # each boot gets a fresh transient id


# -- cgroups ------------------------------------------------------------------------------

def _cgroup_roots() -> list[Path]:
    """The hierarchies a container's cgroup is made in: v2 alone, or hybrid's two."""
    if (CGROUP_FS / "cgroup.controllers").exists():
        return [CGROUP_FS]
    roots = [CGROUP_FS / "systemd", CGROUP_FS / "unified"]
    return [r for r in roots if (r / "cgroup.procs").exists() and os.access(r, os.W_OK)]


def _cgroup_pids(directory: Path) -> list[int]:
    pids: list[int] = []
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _remove_cgroup(directory: Path) -> None:
    """Kill what is left in `directory` (only this container's processes) and remove it."""
    deadline = time.monotonic() + CLEANUP_TIMEOUT_S
    while directory.exists() and time.monotonic() < deadline:
        for pid in _cgroup_pids(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for sub in sorted((d for d in directory.rglob("*") if d.is_dir()),
                          key=lambda d: len(d.parts), reverse=True) + [directory]:
            with contextlib.suppress(OSError):
                sub.rmdir()
        time.sleep(POLL_S)
    if directory.exists():
        raise NspawnError(f"could not remove cgroup {directory}")


# -- the container ------------------------------------------------------------------------

class Container:
    """One booted copy of a cached rootfs; a context manager that always cleans up."""

    def __init__(self, base: Path, workdir: Path, name: str | None = None):
        self.base, self.workdir = Path(base), Path(workdir)
        self.name = name or f"c8ysim-test-{os.getpid()}-{next(_names)}"
        self.root = self.workdir / "root"
        self.log_path = self.workdir / "nspawn.log"
        self.cgroups = [r / self.name for r in _cgroup_roots()]
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self._mounted = False

    def __enter__(self) -> "Container":
        self._mount_overlay()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _mount_overlay(self) -> None:
        upper, work = self.workdir / "upper", self.workdir / "overlay-work"
        for directory in (self.root, upper, work):
            directory.mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={self.base},upperdir={upper},workdir={work}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
                       check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
        self._mounted = True

    def write(self, path: str, text: str, mode: int = 0o644) -> Path:
        """Write `text` to `path` (relative to the container's /), creating directories."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        return target

    # -- boot and run ---------------------------------------------------------------------

    def boot(self, timeout_s: float = BOOT_TIMEOUT_S) -> float:
        """Boot systemd in the container; returns the seconds until it reported running."""
        started = time.monotonic()
        for cgroup in self.cgroups:
            cgroup.mkdir(exist_ok=True)
        moves = "".join(f"echo 0 > {c}/cgroup.procs; " for c in self.cgroups)
        argv = ["sh", "-c", moves + 'exec "$@"', "sh", "systemd-nspawn", "-D", str(self.root),
                "-b", f"--machine={self.name}", "--register=no", "--keep-unit",
                "--console=read-only", "--system-call-filter=bpf"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.leader = self._wait(self._find_leader, started + timeout_s, "the container's init")
        self._wait(self._system_up, started + timeout_s, "systemd to finish booting")
        return time.monotonic() - started

    def _find_leader(self) -> int | None:
        if self.proc.poll() is not None:
            raise NspawnError(f"systemd-nspawn exited:\n{self.log_text()[-2000:]}")
        with contextlib.suppress(OSError):
            for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") \
                    .read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return None

    def _system_up(self) -> bool:
        state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def _wait(self, predicate, deadline: float, what: str):
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(POLL_S)
        raise NspawnError(f"timed out waiting for {what}:\n{self.log_text()[-2000:]}")

    def run(self, *argv: str, timeout_s: float = RUN_TIMEOUT_S, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run `argv` inside the booted container; text output captured."""
        if self.leader is None:
            raise NspawnError("the container is not booted")
        env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
               "SYSTEMD_COLORS": "0"}
        result = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv], env=env,
                                input=input, capture_output=True, text=True,
                                timeout=timeout_s, check=False)
        if check and result.returncode != 0:
            raise NspawnError(f"{' '.join(argv)} exited {result.returncode}:\n"
                              f"{result.stdout}{result.stderr}")
        return result

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess:
        """Run a shell script inside the container."""
        return self.run("sh", "-c", script, **kwargs)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- shutdown -------------------------------------------------------------------------

    def poweroff(self, timeout_s: float = POWEROFF_TIMEOUT_S) -> float | None:
        """Power the container off cleanly; returns the seconds it took (None: killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        started = time.monotonic()
        with contextlib.suppress(NspawnError, subprocess.TimeoutExpired):
            self.run("systemctl", "poweroff", "--no-block", check=False)
        try:
            self.proc.wait(timeout_s)
            return time.monotonic() - started
        except subprocess.TimeoutExpired:
            self._kill()
            return None

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for cgroup in self.cgroups:
            for pid in _cgroup_pids(cgroup):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(CLEANUP_TIMEOUT_S)

    def close(self) -> None:
        """Power off (or kill), remove the cgroups, unmount the overlay: always safe to call."""
        errors: list[Exception] = []
        for step in (self.poweroff, *[lambda c=c: _remove_cgroup(c) for c in self.cgroups],
                     self._unmount):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - clean up the rest, then report
                errors.append(exc)
        self.leader = None
        if errors:
            raise NspawnError(f"cleanup of {self.name} failed: {errors}")

    def _unmount(self) -> None:
        if not self._mounted:
            return
        result = subprocess.run(["umount", str(self.root)], capture_output=True, check=False,
                                timeout=RUN_TIMEOUT_S)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True, check=False,
                           timeout=RUN_TIMEOUT_S)
        self._mounted = False
        shutil.rmtree(self.workdir / "upper", ignore_errors=True)
        shutil.rmtree(self.workdir / "overlay-work", ignore_errors=True)
