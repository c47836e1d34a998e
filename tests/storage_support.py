"""Support for the storage tests and benchmarks: real PostgreSQL, real file-system trouble.

- `PgCluster`: a throwaway PostgreSQL cluster (initdb + pg_ctl from /usr/lib/postgresql/*/bin)
  in a temp dir, on a free loopback port, its socket in that dir; run as the `postgres` user
  when we are root. Stopped and removed at teardown.
- `ExternalPg`: `C8YSIM_TEST_PG_DSN` (e.g. the local server on 5432) with a throwaway
  database; tests that must stop the server skip on it.
- `postgres_server`: the session fixture choosing between them; it fails (never skips) when
  neither is available, so the PostgreSQL contract cases always run.
- `tmpfs`, `ext4_image`: small file systems mounted by the test (root only) for disk-full
  and read-only trouble.

Test modules load the fixtures with `pytest_plugins = ["storage_support"]`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from conftest import free_port, port_open, wait_until

PG_DSN_ENV = "C8YSIM_TEST_PG_DSN"
PG_START_TIMEOUT_S = 30
PG_USER = "postgres"
# Test speed: commits reach the OS page cache but are never fsynced, so they survive a server
# crash (pg_ctl -m immediate), not an OS crash, which no test makes. synchronous_commit=off
# would lose the last commits on an immediate stop: the outage tests would see lost rows.
FAST_SETTINGS = ("fsync=off", "full_page_writes=off")


def pg_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


class PgCluster:
    """A private PostgreSQL server for one test session (or one benchmark run)."""

    def __init__(self, bindir: str, port: int | None = None, fast: bool = True):
        self.bindir, self.port, self.fast = bindir, port or free_port(), fast
        self.workdir = Path(tempfile.mkdtemp(prefix="c8ysim-pg-"))
        self.data = self.workdir / "data"
        self.as_user = _run_as_postgres()
        self.running = False
        if self.as_user:
            shutil.chown(self.workdir, PG_USER, PG_USER)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres"

    def init(self) -> "PgCluster":
        self._run("initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        return self

    def start(self) -> "PgCluster":
        if self.running:
            return self
        settings = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                    + " ".join(f"-c {s}" for s in (FAST_SETTINGS if self.fast else ())))
        self._run("pg_ctl", "-D", str(self.data), "-o", settings, "-l",
                  str(self.workdir / "server.log"), "-w", "-t", str(PG_START_TIMEOUT_S),
                  "start")
        wait_until(lambda: port_open(self.port), PG_START_TIMEOUT_S, what="PostgreSQL")
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash (recovery on the next start); `fast` a clean stop."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
        self.running = False

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        command = [os.path.join(self.bindir, tool), *args]
        if self.as_user:
            command = ["runuser", "-u", PG_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.workdir)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr or result.stdout}\n"
                               f"{self.log_text()[-2000:]}")


class ExternalPg:
    """An existing server (C8YSIM_TEST_PG_DSN) with a throwaway database for this session."""

    def __init__(self, dsn: str):
        import psycopg2
        import psycopg2.extensions

        self.base_dsn, self.name = dsn, f"c8ysim_test_{uuid.uuid4().hex[:10]}"
        self._admin(f"CREATE DATABASE {self.name}", psycopg2)
        self.dsn = psycopg2.extensions.make_dsn(dsn, dbname=self.name)

    def destroy(self) -> None:
        import psycopg2

        self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)", psycopg2)

    def stop(self, mode: str = "fast") -> None:
        pytest.skip(f"{PG_DSN_ENV} is set: this test must stop its own PostgreSQL")

    def start(self) -> "ExternalPg":
        return self  # it is always running

    def _admin(self, sql: str, psycopg2) -> None:
        conn = psycopg2.connect(self.base_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.close()


def _run_as_postgres() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise RuntimeError("running as root, but there is no 'postgres' user to run "
                           "PostgreSQL as: apt-get install postgresql") from None
    return True


def start_postgres():
    """A server for the tests: C8YSIM_TEST_PG_DSN if set, else a throwaway cluster."""
    if os.environ.get(PG_DSN_ENV):
        return ExternalPg(os.environ[PG_DSN_ENV])
    bindir = pg_bindir()
    if bindir is None:
        pytest.fail("no PostgreSQL for the storage tests: install it (`make storage-deps`, "
                    f"i.e. apt-get install postgresql) or set {PG_DSN_ENV}", pytrace=False)
    return PgCluster(bindir).init().start()


@pytest.fixture(scope="session")
def postgres_server():
    server = start_postgres()
    yield server
    server.destroy()


# -- file systems made by the test -------------------------------------------------------------


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a test file system needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int):
    """A tmpfs of `size_kib` at `path`: a disk that really fills up."""
    need_root()
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def ext4_image(workdir: Path, size_mib: int = 16):
    """An ext4 file system on a loop device with errors=remount-ro: `trigger_error()` makes
    the kernel turn it read-only under open files, as a failing SD card does."""
    need_root()
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    image, mount = workdir / "ext4.img", workdir / "ext4"
    mount.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    fs = Ext4(image, mount)
    fs.mount()
    try:
        yield fs
    finally:
        _unmount(mount)


class Ext4:
    def __init__(self, image: Path, mount: Path):
        self.image, self.path = image, mount

    def mount(self) -> None:
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(self.image),
                        str(self.path)], check=True)

    def trigger_error(self) -> None:
        os.sync()  # what was committed reaches the image before the journal aborts
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.path)],
                                capture_output=True, text=True, check=True).stdout.strip()
        Path(f"/sys/fs/ext4/{os.path.basename(source)}/trigger_fs_error").write_text("test\n")

    def repair(self) -> None:
        """Unmount (fails if a file is still open), fsck, mount read-write again."""
        subprocess.run(["umount", str(self.path)], check=True)
        subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True)
        self.mount()


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only_bind(path: Path):
    """`path` seen read-only (a read-only bind mount over itself) until the block ends."""
    need_root()
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        _unmount(path)


def fill_up(directory: Path) -> Path:
    """Write a file until the file system is full; deleting it gives the space back."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
    return filler


def retry_now(buffer) -> None:
    """Make a TieredBuffer retry its failing stores at its next call (skip the backoff)."""
    for tier in buffer.tiers:
        tier.retry_at = 0.0
