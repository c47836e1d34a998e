"""Footprint benchmark: memory (PSS), CPU and start time of the real agent.

Runs `python -m c8ysim run` as a real process tree against a private mosquitto on loopback
and measures, in one run:

- memory: PSS from /proc/<pid>/smaps_rollup summed over the supervisor and its children, for
  3, 10 and 100 devices (interval 10 s, after a settle time); and per extra device;
- CPU: % of one core (utime+stime from /proc/<pid>/stat over the process tree, including
  reaped children) at 3 devices / 1 s interval and at 100 devices / 10 s interval;
- start: exec -> READY=1 on a NOTIFY_SOCKET this script binds, as a ratio to a bare
  `python3 -c "import paho.mqtt.client, yaml, bottle"` measured in the same run (median).

Prints figures and PASS/MISS against the issue's targets; never asserts (the machine is
shared). `--doc docs/performance.md` writes the published note (machine, date, commit, the
tables, a short drain run and why any target was missed); `--markdown FILE` only the tables.

    .venv/bin/python bench/bench_footprint.py [--seconds 60] [--settle 20] [--starts 7]
                                              [--devices 3,10,100] [--doc docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import Mosquitto, children_of, free_port, write_config  # noqa: E402
from doc_sections import STATUS_HEADING, section  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1_000_000
ONLINE_TIMEOUT_S = 120.0  # 100 devices are forked 0.1 s apart, then each connects
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
BARE_IMPORT = "import paho.mqtt.client, yaml, bottle"
AGENT_IMPORT = "import c8ysim.main, c8ysim.device, c8ysim.status.app, c8ysim.notify, c8ysim.supervisor"
DRAIN_ARGS = ["--rows", "20000", "--backends", "sqlite"]
DRAIN_TIMEOUT_S = 300

TARGET_BASE_MB = 35.0  # supervisor + 3 children
TARGET_PER_DEVICE_MB = 6.0
TARGET_CPU_PCT = 1.0  # 3 devices at 1 s
TARGET_START_RATIO = 1.5


# -- /proc --------------------------------------------------------------------------------

def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children_of(current))
    return pids


def rollup_kb(pid: int, field: str) -> int:
    """One field of /proc/<pid>/smaps_rollup (e.g. "Pss"), in kB; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    return rollup_kb(pid, "Pss")


def private_dirty_kb(pid: int) -> int:
    return rollup_kb(pid, "Private_Dirty")


def cpu_ticks(pid: int, with_reaped: bool) -> int:
    """utime+stime (and cutime+cstime for the root: children it already reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2:].split()  # fields from 3 (state) on
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return utime + stime + ((cutime + cstime) if with_reaped else 0)


def tree_cpu_ticks(root: int) -> int:
    return sum(cpu_ticks(pid, pid == root) for pid in tree(root))


# -- the agent ----------------------------------------------------------------------------

def device_list(count: int) -> list[tuple[str, str]]:
    devices = [("pv-roof", "pv"), ("heatpump", "heatpump"), ("grid-meter", "grid")]
    for i in range(3, count):
        kind = "pv" if i % 2 else "heatpump"
        devices.append((f"{kind}-{i:03d}", kind))
    return devices[:count]


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, directory: Path):
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(65536)
        except BlockingIOError:
            pass
        self.sock.setblocking(True)

    def wait_ready(self, deadline: float, proc: subprocess.Popen) -> float | None:
        """perf_counter() when READY=1 arrived; None on timeout or if `proc` died."""
        while (left := deadline - time.perf_counter()) > 0 and proc.poll() is None:
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if "READY=1" in data.decode(errors="replace").splitlines():
                return time.perf_counter()
        return None

    def close(self) -> None:
        self.sock.close()


class AgentRun:
    """One agent process tree (own session, so cleanup reaches every child)."""

    def __init__(self, workdir: Path, broker_port: int, count: int, interval_s: float,
                 notify: NotifySocket):
        self.workdir = workdir / f"agent-{count}-{interval_s:g}-{time.monotonic_ns()}"
        self.workdir.mkdir()
        self.status_port = free_port()
        self.count = count
        self.config = write_config(self.workdir, broker_port, self.status_port, interval_s,
                                   devices=device_list(count), extra="log_level: warning\n")
        self.notify = notify
        self.proc: subprocess.Popen | None = None
        self.log = open(self.workdir / "agent.log", "ab")

    def start(self) -> float:
        """Exec the agent; seconds from exec to READY=1 (raises if it never comes)."""
        self.notify.drain()
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "c8ysim", "run", "--config", str(self.config)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        ready = self.notify.wait_ready(started + READY_TIMEOUT_S, self.proc)
        if ready is None:
            raise RuntimeError(f"no READY=1 within {READY_TIMEOUT_S} s: "
                               f"{(self.workdir / 'agent.log').read_text()[-2000:]}")
        return ready - started

    def status(self) -> dict | None:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.status_port}/api/status", timeout=2) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def wait_online(self, timeout: float = ONLINE_TIMEOUT_S) -> float:
        """Seconds until every device runs and is connected (raises on timeout)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("the agent exited: "
                                   + (self.workdir / "agent.log").read_text()[-2000:])
            view = self.status() or {}
            devices = view.get("devices") or []
            online = [d for d in devices if d.get("state") == "running" and d.get("connected")]
            if len(devices) == self.count and len(online) == self.count:
                return time.monotonic() - start
            time.sleep(0.5)
        raise RuntimeError(f"not all {self.count} devices online within {timeout} s")

    def pss_mb(self) -> tuple[float, float, int, float]:
        """(PSS of the supervisor, PSS of the whole tree, processes, mean Private_Dirty of a
        child) in MB."""
        pids = tree(self.proc.pid)
        children = [pid for pid in pids if pid != self.proc.pid]
        dirty = (sum(map(private_dirty_kb, children)) / len(children) * 1000 / MB
                 if children else 0.0)
        return (pss_kb(self.proc.pid) * 1000 / MB, sum(map(pss_kb, pids)) * 1000 / MB,
                len(pids), dirty)

    def cpu_percent(self, seconds: float) -> float:
        """% of one core used by the whole tree over `seconds` of wall time."""
        ticks0, wall0 = tree_cpu_ticks(self.proc.pid), time.monotonic()
        time.sleep(seconds)
        ticks1, wall1 = tree_cpu_ticks(self.proc.pid), time.monotonic()
        return 100.0 * (ticks1 - ticks0) / CLK_TCK / (wall1 - wall0)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers in the agent's session
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None
        self.log.close()


# -- measurements -------------------------------------------------------------------------

@dataclass
class Memory:
    devices: int
    supervisor_mb: float
    total_mb: float
    processes: int
    online_s: float
    child_private_dirty_mb: float


def measure_memory(workdir, port, notify, count, settle, cpu_seconds=0.0):
    run = AgentRun(workdir, port, count, 10.0, notify)
    try:
        run.start()
        online_s = run.wait_online()
        time.sleep(settle)
        supervisor, total, processes, dirty = run.pss_mb()
        cpu = run.cpu_percent(cpu_seconds) if cpu_seconds else None
        return Memory(count, supervisor, total, processes, online_s, dirty), cpu
    finally:
        run.stop()


def measure_cpu(workdir, port, notify, count, interval_s, settle, seconds) -> float:
    run = AgentRun(workdir, port, count, interval_s, notify)
    try:
        run.start()
        run.wait_online()
        time.sleep(settle)
        return run.cpu_percent(seconds)
    finally:
        run.stop()


# The least a device process can do per tick in Python with the same libraries: commit a row
# to SQLite (WAL, synchronous=NORMAL), publish it at QoS 1, wait for the PUBACK, delete it.
BARE_DEVICE = r"""
import sqlite3, sys, threading, time
import paho.mqtt.client as mqtt
port, path, interval = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, p BLOB)")
acked = threading.Event()
client = (mqtt.Client(mqtt.CallbackAPIVersion.VERSION2) if hasattr(mqtt, "CallbackAPIVersion")
          else mqtt.Client())
client.on_publish = lambda *args: acked.set()
client.connect("127.0.0.1", port)
client.loop_start()
line = b"201,c8ysim_HeatPump,2026-11-29T10:00:00.000+00:00" + b",c8y_P,P,900.0,W" * 10
due = time.monotonic()
while True:
    due += interval
    time.sleep(max(0.0, due - time.monotonic()))
    db.execute("INSERT INTO outbox (p) VALUES (?)", (line,))
    acked.clear()
    client.publish("s/us", line, qos=1)
    acked.wait(5)
    db.execute("DELETE FROM outbox WHERE id = (SELECT min(id) FROM outbox)")
"""


def measure_bare_cpu(workdir: Path, port: int, count: int, interval_s: float, settle: float,
                     seconds: float) -> float:
    """% of one core of `count` BARE_DEVICE processes at `interval_s`, over `seconds`."""
    procs = [subprocess.Popen([sys.executable, "-c", BARE_DEVICE, str(port),
                               str(workdir / f"bare-{i}.sqlite3"), str(interval_s)])
             for i in range(count)]
    try:
        time.sleep(settle)
        ticks0, wall0 = sum(cpu_ticks(p.pid, False) for p in procs), time.monotonic()
        time.sleep(seconds)
        ticks1, wall1 = sum(cpu_ticks(p.pid, False) for p in procs), time.monotonic()
        return (ticks1 - ticks0) / CLK_TCK / (wall1 - wall0) * 100
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def measure_history_kib(workdir: Path, name: str = "heatpump") -> float:
    """The supervisor's memory for one device's full status-page history: an hour of
    readings, one per HISTORY_MIN_STEP_S, as the heartbeats bring them (the device's own
    summary, through JSON), traced with tracemalloc in this process. Not in the PSS rows:
    those are taken 20 s after start, when the history holds a few points."""
    import tracemalloc

    from c8ysim import config as agent_config
    from c8ysim import device, supervisor

    site = agent_config.load(str(write_config(workdir, 1883, 8080))).site
    model = device.sim.build_model(site, name)
    state, child = model.initial_state(), supervisor.Child(name)
    start = time.time() - supervisor.HISTORY_SPAN_S
    beats = []
    for i in range(supervisor.HISTORY_MAX_ENTRIES):
        t = round(start + i * supervisor.HISTORY_MIN_STEP_S, 3)
        state, reading = model.step(state, t, supervisor.HISTORY_MIN_STEP_S)
        beats.append(json.dumps({"last_reading": device._summary(reading), "queued": 0}))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for beat in beats:
        child.remember(json.loads(beat)["last_reading"])
    grown = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    return grown / 1024


def import_s(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, cwd=REPO)
    return time.perf_counter() - started


def measure_start(workdir, port, notify, repeat: int) -> tuple[float, float, float]:
    """Medians (agent exec -> READY=1, bare import, import of the agent's modules) in
    seconds, interleaved runs. The agent's modules are byte-compiled first, as the package
    does on install (dh_python3) and pip does for the libraries; without that an environment
    with PYTHONDONTWRITEBYTECODE=1 compiles them from source at every start."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "c8ysim")], check=True)
    import_s(BARE_IMPORT), import_s(AGENT_IMPORT)  # warm the page cache for all
    agents, bares, modules = [], [], []
    for _ in range(repeat):
        bares.append(import_s(BARE_IMPORT))
        modules.append(import_s(AGENT_IMPORT))
        run = AgentRun(workdir, port, 3, 10.0, notify)
        try:
            agents.append(run.start())
        finally:
            run.stop()
    return statistics.median(agents), statistics.median(bares), statistics.median(modules)


def heaviest_imports(code: str, count: int = 5) -> list[tuple[str, float]]:
    """The `count` costliest modules at the top two levels of `python -X importtime -c code`
    (cumulative ms, one run)."""
    try:
        result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO,
                                capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return []
    rows = []
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        if depth <= 1:
            rows.append((name.strip(), int(parts[1]) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:count]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {"nproc": str(os.cpu_count()), "model": model, "kernel": platform.release(),
            "python": platform.python_version(), "commit": commit or "unknown",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load": f"{os.getloadavg()[0]:.1f}"}


def drain_figures() -> list[str]:
    """The drain benchmark's output (a short run), or a pointer to it if it fails."""
    command = [sys.executable, str(REPO / "bench" / "bench_drain.py"), *DRAIN_ARGS]
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                timeout=DRAIN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        result = None
    if result is None or result.returncode != 0 or not result.stdout.strip():
        return ["The drain figures come from `bench/bench_drain.py` (run by `make bench`); "
                "it did not finish in this run."]
    return ["From `bench/bench_drain.py " + " ".join(DRAIN_ARGS) + "` in the same run "
            "(the full run, 100 000 rows and PostgreSQL too, is part of `make bench`); target "
            "≥ 1.0 × bare paho:", "", "```", *result.stdout.rstrip().splitlines(), "```"]


def write_doc(path: Path, lines: list[str], notes: list[str], drain: list[str]) -> None:
    text = [
        "# Performance", "",
        "Regenerated by `make bench` (`bench/bench_footprint.py --doc docs/performance.md`): "
        "the real agent (`python -m c8ysim run`) as a process tree against a private mosquitto "
        "on loopback. Memory is PSS from `/proc/<pid>/smaps_rollup` summed over the supervisor "
        "and its children (mosquitto not included); CPU is utime+stime from `/proc/<pid>/stat` "
        "over the tree; start is exec → `READY=1` on a NOTIFY_SOCKET the benchmark binds, "
        "against a bare `python3 -c \"" + BARE_IMPORT + "\"` timed in the same run, both "
        "from byte-compiled modules (as installed from the package). The "
        "machine is shared: read the figures as ratios within one run.", "",
        "## Footprint", "", *lines, "",
        "## Drain", "", *drain, "",
        "## Targets missed", "",
        *(notes or ["None in this run."]), "",
    ]
    kept = section(path.read_text(), STATUS_HEADING) if path.exists() else None
    if kept:  # bench_status.py's section, regenerated by `make bench-status`
        text += [kept]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    print(f"  wrote {path}")


def miss_notes(memories: dict, per_device, cpu3: float, bare3: float, ratio: float,
               agent_s: float, bare_s: float, modules_s: float) -> list[str]:
    """Why a target was missed, from what this run measured."""
    notes = []
    base = memories.get(3)
    if base and (base.total_mb > TARGET_BASE_MB
                 or (per_device is not None and per_device > TARGET_PER_DEVICE_MB)):
        notes.append(
            f"- **Memory.** A device child holds {base.child_private_dirty_mb:.1f} MB "
            "Private_Dirty on average. Nearly all of it is copies of the supervisor's pages "
            "that the child wrote to after the fork, mostly reference counts of shared "
            "strings, code objects and types: in one child's page tables 6.8 of 7.3 MB were "
            "copies of parent pages, most differing from the original in one or two 8-byte "
            "words; only ~0.4 MB was new memory. Done so far: the supervisor stays gc-frozen "
            "after the fork (about 15 MB off 1 + 3 devices); the storage and model modules "
            "and the idna codec (first used by a child's connect) are imported before the "
            "forks; libc's prctl is looked up once; a child reuses the log handler instead of "
            "replacing it (together 8.6 → 6.3 MB per child). What is left is spread thin: "
            "threading's after-fork handler ~0.4 MB, the first sqlite3 connection ~0.4 MB, "
            "paho's network thread 0.4–0.9 MB, the first tick ~0.8 MB. Python 3.11 has no "
            "immortal objects (3.12 has, PEP 683), so the next steps are driving paho from "
            "the device loop instead of its own thread, or several devices per child.")
    if cpu3 > TARGET_CPU_PCT:
        notes.append(
            f"- **CPU.** {cpu3:.2f} % of one core at 3 devices / 1 s, against {bare3:.2f} % "
            f"for three bare loops that only commit, publish, wait for the PUBACK and delete "
            f"({cpu3 / bare3:.2f} ×): on this machine even the least a Python device can do "
            "with these libraries takes a good part of the budget. A cProfile of a child "
            "shows no single hot spot: per tick the model step, two SQLite transactions "
            "(the reading, then its acknowledgement), the publish, the heartbeat with the "
            "buffer's counters, and paho's network thread. Fewer wake-ups per tick (the loop "
            "wakes at least every 0.5 s) is the next thing to try.")
    if ratio > TARGET_START_RATIO:
        heavy = ", ".join(f"`{name}` {ms:.0f} ms" for name, ms in heaviest_imports(AGENT_IMPORT))
        rest = agent_s - modules_s
        rest_text = (f"the remaining {rest * 1000:.0f} ms are loading the config, binding the "
                     "status page and forking the children" if rest > 0.1 * agent_s else
                     "so the imports are nearly all of it; loading the config, binding the "
                     "status page and forking the children cost little")
        notes.append(
            f"- **Start.** exec → READY=1 takes {agent_s * 1000:.0f} ms against "
            f"{bare_s * 1000:.0f} ms for the bare import; importing the agent's own modules "
            f"(`{AGENT_IMPORT}`, timed to process exit) alone takes {modules_s * 1000:.0f} ms "
            f"({modules_s / bare_s:.2f} × the bare import), {rest_text}. Costliest imports "
            f"(cumulative, `python -X importtime`): {heavy}. `c8ysim.main` imports modules that "
            "`run` does not need (e.g. `c8ysim.diag` for the `diag` command); importing them in "
            "their command handlers is the first fix to try.")
    return notes


def run(args) -> list[str]:
    """Measure everything; returns the markdown table lines."""
    workdir = Path(tempfile.mkdtemp(prefix="c8ysim-footprint-"))
    broker = Mosquitto(workdir).start()
    notify = NotifySocket(workdir)
    out: list[str] = []
    try:
        info = machine()
        print(f"c8ysim footprint benchmark: {info['nproc']} x {info['model']}, kernel "
              f"{info['kernel']}, Python {info['python']}, commit {info['commit']}, "
              f"load average {info['load']}")
        print(f"  settle {args.settle:g} s, CPU window {args.seconds:g} s, "
              f"start median of {args.starts}")

        agent_s, bare_s, modules_s = measure_start(workdir, broker.port, notify, args.starts)
        ratio = agent_s / bare_s
        print(f"  start: exec -> READY=1 {agent_s * 1000:.0f} ms (3 devices); bare import "
              f"{bare_s * 1000:.0f} ms; ratio {ratio:.2f} (importing the agent's modules "
              f"alone: {modules_s * 1000:.0f} ms)")

        history_kib = measure_history_kib(workdir)
        print(f"  status history, a full hour of one device in the supervisor: "
              f"{history_kib:.0f} KiB")

        memories: dict[int, Memory] = {}
        cpu100 = None
        for count in args.devices:
            cpu_s = args.seconds if count == 100 else 0.0
            memory, cpu = measure_memory(workdir, broker.port, notify, count, args.settle, cpu_s)
            memories[count] = memory
            if cpu is not None:
                cpu100 = cpu
            print(f"  memory, {count:3d} devices: PSS {memory.total_mb:6.1f} MB over "
                  f"{memory.processes} processes (supervisor {memory.supervisor_mb:.1f} MB, "
                  f"child Private_Dirty {memory.child_private_dirty_mb:.1f} MB; "
                  f"all online after {memory.online_s:.1f} s)")
        cpu3 = measure_cpu(workdir, broker.port, notify, 3, 1.0, min(args.settle, 10.0),
                           args.seconds)
        print(f"  CPU, 3 devices at 1 s:     {cpu3:5.2f} % of one core over {args.seconds:g} s")
        bare3 = measure_bare_cpu(workdir, broker.port, 3, 1.0, min(args.settle, 10.0),
                                 args.seconds)
        print(f"  CPU, 3 bare paho + SQLite device loops at 1 s: {bare3:5.2f} % "
              f"(the agent: {cpu3 / bare3:.2f} x)")
        if cpu100 is not None:
            print(f"  CPU, 100 devices at 10 s:  {cpu100:5.2f} % of one core over "
                  f"{args.seconds:g} s")

        base = memories.get(3)
        counts = sorted(memories)
        per_device = None
        if base and len(counts) > 1:
            top = memories[counts[-1]]
            per_device = (top.total_mb - base.total_mb) / (top.devices - base.devices)
        rows = [("PSS, supervisor + 3 children", f"{base.total_mb:.1f} MB" if base else "-",
                 f"≤ {TARGET_BASE_MB:g} MB",
                 verdict(base.total_mb <= TARGET_BASE_MB) if base else "-")]
        if per_device is not None:
            rows.append((f"PSS per extra device ({counts[0]} → {counts[-1]})",
                         f"{per_device:.2f} MB", f"≤ {TARGET_PER_DEVICE_MB:g} MB",
                         verdict(per_device <= TARGET_PER_DEVICE_MB)))
        rows.append(("CPU, 3 devices at 1 s", f"{cpu3:.2f} %", f"≤ {TARGET_CPU_PCT:g} %",
                     verdict(cpu3 <= TARGET_CPU_PCT)))
        rows.append(("start, exec → READY=1 / bare import", f"{ratio:.2f}",
                     f"≤ {TARGET_START_RATIO:g}", verdict(ratio <= TARGET_START_RATIO)))
        print("  targets:")
        for what, value, target, result in rows:
            print(f"    {result}  {what}: {value} (target {target})")

        out += [f"- machine: {info['nproc']} × {info['model']}, kernel {info['kernel']}, "
                f"Python {info['python']}", f"- date: {info['date']}",
                f"- commit: {info['commit']}",
                f"- load average at start: {info['load']} (shared machine: compare rows "
                "within one run, not across runs)",
                f"- settle {args.settle:g} s after every device is online; CPU window "
                f"{args.seconds:g} s; start is the median of {args.starts}", "",
                "| target | measured | target | result |", "|---|---|---|---|"]
        out += [f"| {w} | {v} | {t} | {r} |" for w, v, t, r in rows]
        out += ["", "| devices (interval 10 s) | PSS total | supervisor | per device above 3 |"
                " child Private_Dirty (mean) | processes |", "|---|---|---|---|---|---|"]
        for count in counts:
            m = memories[count]
            extra = (f"{(m.total_mb - base.total_mb) / (count - 3):.2f} MB"
                     if base and count > 3 else "-")
            out.append(f"| {count} | {m.total_mb:.1f} MB | {m.supervisor_mb:.1f} MB | {extra} "
                       f"| {m.child_private_dirty_mb:.1f} MB | {m.processes} |")
        from c8ysim.supervisor import HISTORY_MAX_ENTRIES, HISTORY_MIN_STEP_S
        out += ["", f"The supervisor also keeps an hour of readings per device for the status "
                f"page (one per {HISTORY_MIN_STEP_S:g} s, {HISTORY_MAX_ENTRIES} points); full, "
                f"that is {history_kib:.0f} KiB per "
                "device (tracemalloc, the readings as the heartbeats bring them), on top of the "
                "rows above, which are taken before the history fills."]
        out += ["", "| CPU (% of one core, whole process tree) | measured |", "|---|---|",
                f"| 3 devices, interval 1 s | {cpu3:.2f} % |",
                f"| for reference: 3 bare Python loops at 1 s, each committing a row to SQLite, "
                f"publishing it at QoS 1, waiting for the PUBACK, deleting it | {bare3:.2f} % "
                f"(the agent: {cpu3 / bare3:.2f} ×) |"]
        if cpu100 is not None:
            out.append(f"| 100 devices, interval 10 s | {cpu100:.2f} % |")
        out += ["", "| start | median |", "|---|---|",
                f"| agent (3 devices), exec → READY=1 | {agent_s * 1000:.0f} ms |",
                f"| bare `python3 -c \"{BARE_IMPORT}\"` | {bare_s * 1000:.0f} ms |",
                f"| ratio | {ratio:.2f} |",
                f"| for reference: `python3 -c \"{AGENT_IMPORT}\"` | {modules_s * 1000:.0f} ms |"]
        if args.doc:
            notes = miss_notes(memories, per_device, cpu3, bare3, ratio, agent_s, bare_s,
                               modules_s)
            write_doc(Path(args.doc), out, notes, drain_figures())
        return out
    finally:
        notify.close()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="CPU measurement window (60 s in the issue; less for a quick run)")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="wait this long after every device is online before measuring")
    parser.add_argument("--starts", type=int, default=7, help="start-time runs (median)")
    parser.add_argument("--devices", default="3,10,100",
                        type=lambda s: [int(n) for n in s.split(",") if n])
    parser.add_argument("--markdown", help="write the tables to this file (markdown lines)")
    parser.add_argument("--doc", help="write the whole performance note (docs/performance.md), "
                                      "with a short drain run (bench/bench_drain.py)")
    args = parser.parse_args()
    lines = run(args)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
