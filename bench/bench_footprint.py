"""Footprint benchmark: memory, CPU and start time of the real agent (issue 18's method).

Runs `python -m c8ysim run` as a real process tree against a private mosquitto on loopback
and measures, in one run:

- memory: the distinct physical pages of the whole tree (supervisor and children, every page
  counted once: page frame numbers from /proc/<pid>/pagemap, as root; `pagemap.py`), for 3,
  10 and 30 devices (interval 10 s), after every device is online (told by the STATUS= lines
  on a NOTIFY_SOCKET, so no request builds the status app) and a settle time; per extra
  device; where a child's own pages come from (copies of the supervisor's, or new); and, for
  reference, the PSS sum the earlier note gave;
- CPU per delivered measurement: the scheduler's CPU time (ns) of every thread of the tree
  over a window, divided by the measurements (201 lines) a subscriber received in it, against bare
  loops (one process per device: insert a row, publish it at QoS 1, wait for the PUBACK,
  delete it) at the same interval, running in the same window;
- start: exec -> READY=1 on that NOTIFY_SOCKET, as a ratio to a bare
  `python3 -c "import paho.mqtt.client, yaml, bottle"` measured in the same run (median);
- scale mode: 100 devices at interval 10 s with `supervisor.devices_per_process: 25`, and
  for comparison a process per device (`--scale 100:25,100:1`, ~85 s a case; `''` skips
  them): distinct pages and PSS sum of the tree as above, then its CPU as % of one core over
  the CPU window (`--only-scale` measures nothing else).

Prints figures and PASS/MISS against the targets; never asserts (the machine is shared).
`--doc docs/performance.md` writes the published note (machine, date, commit, method, tables,
the drain runs of bench_agent_drain.py and bench_drain.py, and why a target was missed).

    .venv/bin/python bench/bench_footprint.py [--seconds 60] [--settle 20] [--starts 7]
                                              [--devices 3,10,30] [--scale 100:25,100:1]
                                              [--only-scale] [--doc docs/performance.md]
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

sys.path.insert(0, str(REPO / "bench"))

import pagemap  # noqa: E402
from conftest import Mosquitto, children_of, free_port, write_config  # noqa: E402
from doc_sections import SAVINGS_HEADING, STATUS_HEADING, section  # noqa: E402

MB = 1_000_000
ONLINE_TIMEOUT_S = 120.0  # devices are forked 0.1 s apart, then each connects
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
BARE_IMPORT = "import paho.mqtt.client, yaml, bottle"
# what `c8ysim run` imports before it forks (the status app comes with the first request)
AGENT_IMPORT = ("import c8ysim.main, c8ysim.device, c8ysim.status.deferred, c8ysim.notify, "
                "c8ysim.supervisor, c8ysim.warmup, c8ysim.sim.devices")
SESSION_DRAIN_ARGS = ["--rows", "20000", "--backends", "sqlite"]
AGENT_DRAIN_ARGS = ["--interval", "2", "--window", "15",
                    "--cases", "0:1000,0:default,50:1000,50:default"]
DRAIN_TIMEOUT_S = 400
CPU_INTERVAL_S = 1.0
SAMPLE_INTERVAL_S = 10.0  # etc/c8ysim.yaml's: CPU measured there too, for reference

TARGET_BASE_MB = 40.0  # distinct pages, supervisor + 3 children
TARGET_PER_DEVICE_MB = 5.0
TARGET_CPU_RATIO = 1.5  # per delivered measurement, against the bare loops
TARGET_START_RATIO = 1.3
TARGET_DRAIN_LOOPBACK = 3.0  # x bare paho, at the configured default max_lines_per_s
TARGET_DRAIN_RTT = 20.0  # the same over 50 ms
SCALE_TARGET_CASE = (100, 25)  # devices, devices_per_process: the case the two below are for
TARGET_SCALE_MB = 100.0  # distinct pages of the whole tree
TARGET_SCALE_CPU_PERCENT = 15.0  # of one core, at SCALE_INTERVAL_S
SCALE_INTERVAL_S = 10.0


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


def task_cpu_ns(pids) -> dict[tuple[int, int], int]:
    """{(pid, tid): ns on a CPU} for every thread of `pids`, from
    /proc/<pid>/task/<tid>/schedstat: the scheduler's own sum in ns. (utime+stime in
    /proc/<pid>/stat come in whole 10 ms clock ticks: a bare loop's ~30 ms in a 30 s window
    read as 2, 3 or 4 ticks, ±35 %.) A process or thread gone meanwhile is left out."""
    found = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                found[pid, int(tid)] = int(
                    Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return found


class CpuCounter:
    """CPU time of a set of processes (all their threads) over a window, in ns precision.
    A thread that ends inside the window takes its CPU time with it: `seconds()` counts
    them, and the window is reported as not clean."""

    def __init__(self, pids_now):
        self.pids_now = pids_now  # -> the processes to count, read at each end of the window
        self.start = task_cpu_ns(pids_now())

    def seconds(self) -> tuple[float, int]:
        """(CPU seconds since the start, threads of the start that are gone)."""
        end = task_cpu_ns(self.pids_now())
        lost = sum(1 for task in self.start if task not in end)
        return sum(ns - self.start.get(task, 0) for task, ns in end.items()) / 1e9, lost


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
        for line in self._lines(deadline, proc):
            if line == "READY=1":
                return time.perf_counter()
        return None

    def wait_status(self, wanted: str, deadline: float, proc: subprocess.Popen) -> bool:
        """Whether a STATUS= line starting with `wanted` came before `deadline`."""
        return any(line.startswith("STATUS=" + wanted) for line in self._lines(deadline, proc))

    def _lines(self, deadline: float, proc: subprocess.Popen):
        """The lines of the datagrams that arrive before `deadline` while `proc` lives."""
        while (left := deadline - time.perf_counter()) > 0 and proc.poll() is None:
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            yield from data.decode(errors="replace").splitlines()

    def close(self) -> None:
        self.sock.close()


class AgentRun:
    """One agent process tree (own session, so cleanup reaches every child)."""

    def __init__(self, workdir: Path, broker_port: int, count: int, interval_s: float,
                 notify: NotifySocket, per_process: int = 1, checkout: Path = REPO):
        self.workdir = workdir / f"agent-{count}-{interval_s:g}-{time.monotonic_ns()}"
        self.workdir.mkdir()
        self.status_port = free_port()
        self.count = count
        extra = "log_level: warning\n" + (f"supervisor: {{devices_per_process: {per_process}}}\n"
                                          if per_process > 1 else "")
        self.config = write_config(self.workdir, broker_port, self.status_port, interval_s,
                                   devices=device_list(count), extra=extra)
        self.notify = notify
        self.checkout = checkout  # `python -m c8ysim` runs the c8ysim package found here
        self.proc: subprocess.Popen | None = None
        self.log = open(self.workdir / "agent.log", "ab")

    def start(self) -> float:
        """Exec the agent; seconds from exec to READY=1 (raises if it never comes)."""
        self.notify.drain()
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "c8ysim", "run", "--config", str(self.config)],
            cwd=self.checkout, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        ready = self.notify.wait_ready(started + READY_TIMEOUT_S, self.proc)
        if ready is None:
            raise RuntimeError(f"no READY=1 within {READY_TIMEOUT_S} s: "
                               f"{(self.workdir / 'agent.log').read_text()[-2000:]}")
        return ready - started

    def wait_online_quietly(self, timeout: float = ONLINE_TIMEOUT_S) -> float:
        """Seconds until every device is connected, from the STATUS= lines systemd would get:
        without a request to the status page, which builds its app on the first one."""
        start = time.perf_counter()
        if not self.notify.wait_status(f"{self.count}/{self.count} devices online",
                                       start + timeout, self.proc):
            raise RuntimeError(f"not all {self.count} devices online within {timeout} s: "
                               + (self.workdir / "agent.log").read_text()[-2000:])
        return time.perf_counter() - start

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


# -- measurements ----------------------------------------------------------------------------

@dataclass
class Memory:
    devices: int
    distinct_mb: float  # the whole tree, every page once
    supervisor_mb: float  # every page the supervisor has
    supervisor_own_mb: float  # pages no child has
    child_own_mb: float  # mean over the children: pages no other process has
    pss_mb: float  # the PSS sum, for comparison with earlier notes
    processes: int
    online_s: float
    child: pagemap.ChildPages | None  # the first child's own pages, classified


def online_agent(workdir, port, notify, count, interval_s, settle, measure, per_process=1):
    """measure(run, online_s) of an agent of `count` devices, `settle` s after every device
    is online; the agent is stopped afterwards."""
    run = AgentRun(workdir, port, count, interval_s, notify, per_process)
    try:
        run.start()
        online_s = run.wait_online_quietly()
        time.sleep(settle)
        return measure(run, online_s)
    finally:
        run.stop()


def measure_memory(workdir, port, notify, count, settle) -> Memory:
    return online_agent(workdir, port, notify, count, 10.0, settle,
                        lambda run, online_s: tree_memory(run.proc.pid, count, online_s))


def tree_memory(root: int, count: int, online_s: float) -> Memory:
    """The distinct pages of the tree under `root` and where they are."""
    pids = tree(root)
    pss = sum(map(pss_kb, pids)) * 1000 / MB
    processes = [pagemap.pages(pid) for pid in pids]
    own = pagemap.own_frames(processes)
    supervisor, children = processes[0], processes[1:]
    child_own = [len(own[c.pid]) * pagemap.PAGE / MB for c in children]
    detail = (pagemap.classify_child(children[0], supervisor, own[children[0].pid],
                                     diff_words=True) if children else None)
    return Memory(count, pagemap.distinct_mb(processes),
                  len(supervisor.pfns) * pagemap.PAGE / MB,
                  len(own[supervisor.pid]) * pagemap.PAGE / MB,
                  statistics.mean(child_own) if child_own else 0.0, pss, len(pids),
                  online_s, detail)


class MeasurementCounter:
    """A subscriber on s/us counting the measurement lines (201) it receives: the agent's,
    and apart from them the bare loops' (measurement type BARE_TYPE)."""

    def __init__(self, port: int):
        import threading

        import paho.mqtt.client as mqtt
        self.counts, self.lock = {False: 0, True: 0}, threading.Lock()
        kwargs = dict(client_id=f"counter-{os.getpid()}")
        self.client = (mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
                       if hasattr(mqtt, "CallbackAPIVersion") else mqtt.Client(**kwargs))
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, *_: client.subscribe("s/us", 1)
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()

    def _on_message(self, _client, _userdata, message) -> None:
        lines = [line for line in message.payload.split(b"\n") if line.startswith(b"201,")]
        bare = sum(1 for line in lines if line.startswith(b"201," + BARE_TYPE + b","))
        with self.lock:
            self.counts[True] += bare
            self.counts[False] += len(lines) - bare

    def read(self, bare: bool = False) -> int:
        with self.lock:
            return self.counts[bare]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Cpu:
    cpu_s: float
    measurements: int
    wall_s: float

    @property
    def per_measurement_ms(self) -> float:
        return 1000 * self.cpu_s / max(1, self.measurements)

    @property
    def percent(self) -> float:
        return 100 * self.cpu_s / self.wall_s


def _window(counter: MeasurementCounter, pids_now, seconds: float) -> Cpu:
    """The agent's Cpu over one window."""
    return cpu_window({"agent": (pids_now, counter.read)}, seconds)["agent"]


def cpu_window(sides: dict, seconds: float) -> dict[str, Cpu]:
    """{name: Cpu} over one window; `sides` maps a name to (pids_now, delivered): the
    processes to count, and a reader of the measurements delivered so far, by which that
    side's CPU time is divided."""
    cpus = {name: CpuCounter(pids_now) for name, (pids_now, _) in sides.items()}
    counts0, wall0 = {name: read() for name, (_, read) in sides.items()}, time.monotonic()
    time.sleep(seconds)
    used = {name: cpu.seconds() for name, cpu in cpus.items()}
    counts1, wall1 = {name: read() for name, (_, read) in sides.items()}, time.monotonic()
    for name, (_cpu_s, lost) in used.items():
        if lost:
            print(f"  warning: {lost} threads of {name} ended inside the CPU window; their "
                  "CPU time is not counted", file=sys.stderr)
    return {name: Cpu(cpu_s, counts1[name] - counts0[name], wall1 - wall0)
            for name, (cpu_s, _lost) in used.items()}


def measure_cpu(workdir, port, notify, counter, count, interval_s, settle,
                seconds) -> tuple[Cpu, Cpu]:
    """(agent, bare): the agent of `count` devices and `count` BARE_DEVICE loops at
    `interval_s`, measured in the same window, so that the shared machine's load at that
    time weighs on both alike (run one after the other, the ratio swung by ±20 %)."""
    procs = [subprocess.Popen([sys.executable, "-c", BARE_DEVICE, str(port),
                               str(workdir / f"bare-{i}-{time.monotonic_ns()}.sqlite3"),
                               str(interval_s)])
             for i in range(count)]
    try:
        cpus = online_agent(
            workdir, port, notify, count, interval_s, settle,
            lambda run, _: cpu_window(
                {"agent": (lambda: tree(run.proc.pid), counter.read),
                 "bare": (lambda: [p.pid for p in procs], lambda: counter.read(bare=True))},
                seconds))
        return cpus["agent"], cpus["bare"]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


@dataclass
class Scale:
    memory: Memory  # taken first, then the CPU window
    cpu: Cpu


def measure_scale(workdir, port, notify, counter, count, per_process, settle,
                  seconds) -> Scale:
    """Scale mode: `count` devices at SCALE_INTERVAL_S in groups of `per_process`."""
    def measure(run: AgentRun, online_s: float) -> Scale:
        memory = tree_memory(run.proc.pid, count, online_s)
        return Scale(memory, _window(counter, lambda: tree(run.proc.pid), seconds))
    return online_agent(workdir, port, notify, count, SCALE_INTERVAL_S, settle, measure,
                        per_process)


BARE_TYPE = b"c8ysim_Bare"  # the measurement type the bare loops send

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
line = b"201,c8ysim_Bare,2026-11-29T10:00:00.000+00:00" + b",c8y_P,P,900.0,W" * 10  # BARE_TYPE
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
    """Seconds from exec to exit of `python -c code`. A blocking wait(): with a timeout,
    subprocess polls waitpid() in sleeps growing to 50 ms, which measured a 114 ms import as
    114 or 164 ms; a timer kills a hung one instead."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    killer = threading.Timer(30.0, proc.kill)
    killer.start()
    try:
        returncode = proc.wait()
    finally:
        killer.cancel()
    elapsed = time.perf_counter() - started
    if returncode:
        raise subprocess.CalledProcessError(returncode, code)
    return elapsed


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
        changed = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                  "--untracked-files=no", "--", "c8ysim"],
                                 capture_output=True, text=True, timeout=10).stdout.split("\n")
        changed = sorted({line[3:] for line in changed if line.strip()})
        if commit and changed:
            commit += " with uncommitted changes to " + ", ".join(changed)
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {"nproc": str(os.cpu_count()), "model": model, "kernel": platform.release(),
            "python": platform.python_version(), "commit": commit or "unknown",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load": f"{os.getloadavg()[0]:.1f}"}


# -- drain (the two drain benchmarks, run as they are) ------------------------------------------

def _bench(script: str, args: list[str]) -> str | None:
    command = [sys.executable, str(REPO / "bench" / script), *args]
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                timeout=DRAIN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0 or not result.stdout.strip():
        print(f"  {script} failed: {result.stderr[-1000:]}")
        return None
    return result.stdout.rstrip()


@dataclass
class AgentDrain:
    """Rates of bench_agent_drain.py: {(rtt_ms, max_lines_per_s): (lines/s, x bare)}."""

    text: str
    cases: dict

    def ratio(self, rtt_ms: float, rate: float) -> float | None:
        found = self.cases.get((rtt_ms, rate))
        return found[1] if found else None


def agent_drain() -> AgentDrain | None:
    import re

    text = _bench("bench_agent_drain.py", AGENT_DRAIN_ARGS)
    if text is None:
        return None
    cases = {}
    for match in re.finditer(r"agent, RTT \+([0-9.]+) ms, max_lines_per_s ([0-9.e+]+):\s+"
                             r"([0-9,]+) lines/s =\s+([0-9.]+) x", text):
        cases[(float(match[1]), float(match[2]))] = (float(match[3].replace(",", "")),
                                                     float(match[4]))
    return AgentDrain(text, cases)


def default_drain_rate() -> float:
    """What a user gets without setting it: the config's default max_lines_per_s (a ceiling:
    the rate below it follows the PUBACK latency), as bench_agent_drain.py prints it for its
    `default` cases (and for 0, the same 100000)."""
    from c8ysim.config import CumulocityConfig
    return CumulocityConfig._field_defaults["max_lines_per_s"]


def drain_lines(agent: AgentDrain | None, session: str | None) -> list[str]:
    lines = ["Through the real agent (`bench/bench_agent_drain.py " + " ".join(AGENT_DRAIN_ARGS)
             + "`): three devices' buffers filled with `c8ysim backfill --since 24h` (a day "
               "each), then `c8ysim run` to the private mosquitto, directly or through "
               "`bench/delay_proxy.py` (+50 ms round trip); the rate is rows leaving the "
               "SQLite files (the buffer's own row count, polled read-only) from the first "
               "row gone until the backlog is gone, or over a 15 s window when the rate limit "
               "makes that long. 100000 is the most `cumulocity.max_lines_per_s` takes and "
               "its default (a ceiling: below it the drain rate follows the PUBACK latency, "
               "from 1 % of it up while Cumulocity keeps up; a `default` case leaves it out "
               "of the YAML). Bare paho (one line per QoS 1 publish, 20 in flight) runs "
               "through the same path in the same run.", ""]
    lines += (["```", agent.text, "```"] if agent else
              ["`bench_agent_drain.py` did not finish in this run."])
    lines += ["", "`Session` alone, pacing off (`bench/bench_drain.py "
              + " ".join(SESSION_DRAIN_ARGS) + "`; the full run, 100 000 rows from SQLite "
              "and PostgreSQL, is `make bench-storage`):", ""]
    lines += ["```", session, "```"] if session else ["It did not finish in this run."]
    return lines


# -- the note -------------------------------------------------------------------------------------

METHOD = (
    "Regenerated by `make bench` (`bench/bench_footprint.py --doc docs/performance.md`, then "
    "`bench/bench_status.py`): the real agent (`python -m c8ysim run`) as a process tree "
    "against a private mosquitto on loopback. **Memory** is the number of distinct physical "
    "pages of the whole tree, each page counted once however many processes map it: the page "
    "frame numbers of every present page from `/proc/<pid>/pagemap` (root only; "
    "`bench/pagemap.py`), not a sum of PSS (which splits shared pages between their "
    "processes); the PSS sum is shown beside it for comparison with earlier notes. It is taken "
    "after every device is online (told by the `STATUS=` lines the agent sends to a "
    "NOTIFY_SOCKET the benchmark binds: no request builds the status app) and a settle time. "
    "A child's *own* pages are those no other process of the tree has. **CPU** is the "
    "scheduler's CPU time of every thread of the tree (`/proc/<pid>/task/<tid>/schedstat`, in "
    "ns; until the fourth round utime+stime in whole 10 ms ticks) divided by the measurements "
    "(201 lines) a subscriber received in the same window, against three bare loops (one "
    "process per device: insert a row in SQLite, publish it at QoS 1, wait for the PUBACK, "
    "delete it) at the same interval, running at the same time in the same window. **Start** "
    "is exec → `READY=1` on that socket against a bare `python3 -c \"" + BARE_IMPORT + "\"` "
    "timed in the same run, both from byte-compiled modules (as installed from the package). "
    "The machine is shared: read the figures as ratios within one run.")


def write_doc(path: Path, lines: list[str], notes: list[str], drain: list[str]) -> None:
    text = ["# Performance", "", METHOD, "", "## Footprint", "", *lines, "",
            "## Drain", "", *drain, "", "## Targets missed", "",
            *(notes or ["None in this run."]), ""]
    old = path.read_text() if path.exists() else ""
    for heading in (SAVINGS_HEADING, STATUS_HEADING):  # kept: written by hand / bench_status
        kept = section(old, heading)
        if kept:
            text += [kept.rstrip("\n"), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text).rstrip("\n") + "\n")
    print(f"  wrote {path}")


def miss_notes(memories: dict, per_device, cpu: Cpu, bare: Cpu, start: tuple,
               drain: AgentDrain | None, scales: dict) -> list[str]:
    """Why a target was missed, from what this run measured."""
    notes = []
    base = memories.get(3)
    if base and (base.distinct_mb > TARGET_BASE_MB
                 or (per_device is not None and per_device > TARGET_PER_DEVICE_MB)):
        child = base.child
        detail = ""
        if child and child.own:
            same = sum(n for k, n in child.words_changed.items() if k in ("0", "1", "2"))
            detail = (f" Of one child's {child.own * pagemap.PAGE / MB:.1f} MB of own pages, "
                      f"{child.copied * pagemap.PAGE / MB:.1f} MB are copies of the supervisor's "
                      f"pages at the same address and {child.new * pagemap.PAGE / MB:.1f} MB new "
                      f"memory; {100 * same / max(1, child.copied):.0f} % of the copies differ "
                      "from the supervisor's page in at most two 8-byte words (reference counts "
                      "written, or written and restored).")
        notes.append(
            f"- **Memory.** {base.distinct_mb:.1f} MB distinct for 3 devices, "
            f"{per_device:.2f} MB per extra device: a child owns {base.child_own_mb:.1f} MB "
            f"and the supervisor {base.supervisor_mb:.1f} MB in all.{detail} Python 3.11 "
            "writes the reference count of every object a child touches, even for a moment, "
            "and so copies its page; calling a function also writes to its function and code "
            "objects. The immortal objects of 3.12 (PEP 683) would not change that much: they "
            "are built-in singletons, static types and interned strings, not the functions, "
            "code objects and constants a device runs through. See the savings section for "
            "what was tried.")
    ratio = cpu.per_measurement_ms / bare.per_measurement_ms
    if ratio > TARGET_CPU_RATIO:
        notes.append(
            f"- **CPU.** {cpu.per_measurement_ms:.2f} ms of CPU per delivered measurement "
            f"against {bare.per_measurement_ms:.2f} ms for the bare loops ({ratio:.2f} ×). "
            "Per tick a device steps its model, commits the reading with its model state "
            "(and the ledger), publishes, and commits the acknowledgement; every 5 s when "
            "steady it builds a heartbeat with the buffer's counters, which the supervisor "
            "decodes. Its loop wakes twice per reading (the reading, its PUBACK), as the bare "
            "loop does, but the bare loop does none of the model, state, ledger, heartbeat or "
            "supervisor work. Where a device's CPU goes: the savings section.")
    agent_s, bare_s, modules_s = start
    if agent_s / bare_s > TARGET_START_RATIO:
        heavy = ", ".join(f"`{name}` {ms:.0f} ms" for name, ms in heaviest_imports(AGENT_IMPORT))
        notes.append(
            f"- **Start.** exec → READY=1 takes {agent_s * 1000:.0f} ms against "
            f"{bare_s * 1000:.0f} ms for the bare import ({agent_s / bare_s:.2f} ×); importing "
            f"the modules `run` needs before it forks takes {modules_s * 1000:.0f} ms. "
            f"Costliest imports (cumulative, `python -X importtime`): {heavy}.")
    rate = default_drain_rate()
    loopback, rtt = (drain.ratio(0.0, rate), drain.ratio(50.0, rate)) if drain else (None, None)
    if drain and ((loopback is not None and loopback < TARGET_DRAIN_LOOPBACK)
                  or (rtt is not None and rtt < TARGET_DRAIN_RTT)):
        notes.append(
            f"- **Drain.** With the default (a ceiling of {rate:g} lines/s, the rate below it "
            "found from the PUBACK latency) the agent drains at "
            + (f"{loopback:.2f} × bare paho on loopback" if loopback is not None else "")
            + (f", {rtt:.1f} × over 50 ms" if rtt is not None else "") + "; see the drain "
              "table.")
    if any(result == "MISS" for *_, result in scale_rows(scales)):
        found = scales[SCALE_TARGET_CASE]
        memory = found.memory
        notes.append(
            "- **Scale mode.** {} devices at {} per process: ".format(*SCALE_TARGET_CASE)
            + f"{memory.distinct_mb:.1f} MB distinct over {memory.processes} processes (the "
            f"supervisor {memory.supervisor_mb:.1f} MB, a group process owns "
            f"{memory.child_own_mb:.1f} MB), {found.cpu.percent:.1f} % of one core. A group "
            "runs one paho network thread per device.")
    return notes


def measure_scales(workdir, port, notify, counter, args) -> dict[tuple[int, int], Scale]:
    """The scale cases of `--scale`, {(devices, devices_per_process): Scale}."""
    scales = {}
    for count, per_process in args.scale:
        started = time.monotonic()
        found = scales[(count, per_process)] = measure_scale(
            workdir, port, notify, counter, count, per_process, args.settle, args.seconds)
        memory, cpu = found.memory, found.cpu
        print(f"  scale, {count} devices at {per_process} per process: "
              f"{memory.distinct_mb:.1f} MB distinct over {memory.processes} processes (PSS "
              f"sum {memory.pss_mb:.1f} MB); CPU {cpu.percent:.1f} % of one core "
              f"({cpu.measurements} measurements in {cpu.wall_s:.0f} s); all online after "
              f"{memory.online_s:.1f} s; {time.monotonic() - started:.0f} s in all")
    return scales


def scale_rows(scales: dict) -> list[tuple[str, str, str, str]]:
    """The targets table's rows for SCALE_TARGET_CASE, if it was measured."""
    found = scales.get(SCALE_TARGET_CASE)
    if found is None:
        return []
    case = "{} devices at {} per process".format(*SCALE_TARGET_CASE)
    mb, percent = found.memory.distinct_mb, found.cpu.percent
    return [(f"memory, {case} (distinct pages)", f"{mb:.1f} MB", f"≤ {TARGET_SCALE_MB:g} MB",
             verdict(mb <= TARGET_SCALE_MB)),
            (f"CPU, {case}, {SCALE_INTERVAL_S:g} s", f"{percent:.1f} % of one core",
             f"≤ {TARGET_SCALE_CPU_PERCENT:g} %", verdict(percent <= TARGET_SCALE_CPU_PERCENT))]


def scale_table(scales: dict, seconds: float) -> list[str]:
    if not scales:
        return []
    out = ["", f"Scale mode (`supervisor.devices_per_process`), every device at "
           f"{SCALE_INTERVAL_S:g} s: memory taken as above, then the tree's CPU over a "
           f"{seconds:g} s window.", "",
           "| devices | per process | processes | distinct pages, whole tree | PSS sum | CPU "
           "(% of one core) | measurements | all online after |",
           "|---|---|---|---|---|---|---|---|"]
    for (count, per_process), found in scales.items():
        memory, cpu = found.memory, found.cpu
        out.append(f"| {count} | {per_process} | {memory.processes} | "
                   f"{memory.distinct_mb:.1f} MB | {memory.pss_mb:.1f} MB | {cpu.percent:.1f} % | "
                   f"{cpu.measurements} | {memory.online_s:.1f} s |")
    return out


def print_targets(rows) -> None:
    print("  targets:")
    for what, value, target, result in rows:
        print(f"    {result}  {what}: {value} (target {target})")


def run(args) -> list[str]:
    """Measure everything; returns the markdown lines of the footprint section."""
    workdir = Path(tempfile.mkdtemp(prefix="c8ysim-footprint-"))
    broker = Mosquitto(workdir).start()
    notify = NotifySocket(workdir)
    counter = MeasurementCounter(broker.port)
    try:
        info = machine()
        print(f"c8ysim footprint benchmark: {info['nproc']} x {info['model']}, kernel "
              f"{info['kernel']}, Python {info['python']}, commit {info['commit']}, "
              f"load average {info['load']}")
        print(f"  settle {args.settle:g} s, CPU window {args.seconds:g} s, "
              f"start median of {args.starts}")
        if args.only_scale:
            scales = measure_scales(workdir, broker.port, notify, counter, args)
            print_targets(scale_rows(scales))
            return scale_table(scales, args.seconds)[1:]
        start = measure_start(workdir, broker.port, notify, args.starts)
        agent_s, bare_s, modules_s = start
        ratio = agent_s / bare_s
        print(f"  start: exec -> READY=1 {agent_s * 1000:.0f} ms (3 devices); bare import "
              f"{bare_s * 1000:.0f} ms; ratio {ratio:.2f} (importing the agent's modules "
              f"alone: {modules_s * 1000:.0f} ms)")
        history_kib = measure_history_kib(workdir)
        memories: dict[int, Memory] = {}
        for count in args.devices:
            memory = measure_memory(workdir, broker.port, notify, count, args.settle)
            memories[count] = memory
            print(f"  memory, {count:3d} devices: {memory.distinct_mb:6.1f} MB distinct over "
                  f"{memory.processes} processes (supervisor {memory.supervisor_mb:.1f} MB, "
                  f"{memory.supervisor_own_mb:.1f} MB its own; a child owns "
                  f"{memory.child_own_mb:.2f} MB; PSS sum {memory.pss_mb:.1f} MB)")
        settle = min(args.settle, 10.0)
        cpu, bare = measure_cpu(workdir, broker.port, notify, counter, 3, CPU_INTERVAL_S,
                                settle, args.seconds)
        cpu_ratio = cpu.per_measurement_ms / bare.per_measurement_ms
        print(f"  CPU, 3 devices at {CPU_INTERVAL_S:g} s: {cpu.per_measurement_ms:.2f} ms per "
              f"delivered measurement ({cpu.measurements} in {cpu.wall_s:.0f} s, "
              f"{cpu.percent:.2f} % of a core); bare loops {bare.per_measurement_ms:.2f} ms "
              f"({bare.measurements}); ratio {cpu_ratio:.2f}")
        sample, sample_bare = measure_cpu(workdir, broker.port, notify, counter, 3,
                                          SAMPLE_INTERVAL_S, settle, args.seconds)
        print(f"  CPU, 3 devices at {SAMPLE_INTERVAL_S:g} s: {sample.per_measurement_ms:.2f} "
              f"ms per delivered measurement ({sample.measurements}, {sample.percent:.3f} % of "
              f"a core); bare loops {sample_bare.per_measurement_ms:.2f} ms; ratio "
              f"{sample.per_measurement_ms / sample_bare.per_measurement_ms:.2f} (no target)")
        scales = measure_scales(workdir, broker.port, notify, counter, args)
        drain = agent_drain() if args.doc else None
        session = _bench("bench_drain.py", SESSION_DRAIN_ARGS) if args.doc else None
        if drain:
            print("  " + drain.text.replace("\n", "\n  "))

        base = memories.get(3)
        counts = sorted(memories)
        per_device = None
        if base and len(counts) > 1:
            top = memories[counts[-1]]
            per_device = (top.distinct_mb - base.distinct_mb) / (top.devices - base.devices)
        rows = [("memory, supervisor + 3 devices (distinct pages)",
                 f"{base.distinct_mb:.1f} MB" if base else "-", f"≤ {TARGET_BASE_MB:g} MB",
                 verdict(base.distinct_mb <= TARGET_BASE_MB) if base else "-")]
        if per_device is not None:
            rows.append((f"memory per extra device ({counts[0]} → {counts[-1]})",
                         f"{per_device:.2f} MB", f"≤ {TARGET_PER_DEVICE_MB:g} MB",
                         verdict(per_device <= TARGET_PER_DEVICE_MB)))
        rows.append(("CPU per delivered measurement / bare loop", f"{cpu_ratio:.2f}",
                     f"≤ {TARGET_CPU_RATIO:g}", verdict(cpu_ratio <= TARGET_CPU_RATIO)))
        rows.append(("start, exec → READY=1 / bare import", f"{ratio:.2f}",
                     f"≤ {TARGET_START_RATIO:g}", verdict(ratio <= TARGET_START_RATIO)))
        rate = default_drain_rate()
        for rtt, target in ((0.0, TARGET_DRAIN_LOOPBACK), (50.0, TARGET_DRAIN_RTT)):
            found = drain.ratio(rtt, rate) if drain else None
            if found is not None:
                rows.append((f"drain through the agent / bare paho, +{rtt:g} ms, default "
                             f"max_lines_per_s {rate:g}", f"{found:.3f}", f"≥ {target:g}",
                             verdict(found >= target)))
        rows += scale_rows(scales)
        print_targets(rows)

        out = [f"- machine: {info['nproc']} × {info['model']}, kernel {info['kernel']}, "
               f"Python {info['python']}", f"- date: {info['date']}",
               f"- commit: {info['commit']}",
               f"- load average at start: {info['load']} (shared machine: compare rows within "
               "one run, not across runs)",
               f"- settle {args.settle:g} s after every device is online; CPU window "
               f"{args.seconds:g} s; start is the median of {args.starts}", "",
               "| target | measured | target | result |", "|---|---|---|---|"]
        out += [f"| {w} | {v} | {t} | {r} |" for w, v, t, r in rows]
        out += ["", "| devices (interval 10 s) | distinct pages, whole tree | per device above 3 "
                "| supervisor (all its pages / its own) | a child's own pages (mean) | PSS sum "
                "(earlier method) | processes |", "|---|---|---|---|---|---|---|"]
        for count in counts:
            m = memories[count]
            extra = (f"{(m.distinct_mb - base.distinct_mb) / (count - 3):.2f} MB"
                     if base and count > 3 else "-")
            out.append(f"| {count} | {m.distinct_mb:.1f} MB | {extra} | {m.supervisor_mb:.1f} / "
                       f"{m.supervisor_own_mb:.1f} MB | {m.child_own_mb:.2f} MB | "
                       f"{m.pss_mb:.1f} MB | {m.processes} |")
        if base and base.child and base.child.own:
            child = base.child
            page_mb = pagemap.PAGE / MB
            words = ", ".join(f"{k}: {child.words_changed.get(k, 0)}"
                              for k in ("0", "1", "2", "3-8", "9-64", ">64"))
            kinds = ", ".join(f"{k} {n * page_mb:.2f} MB"
                              for k, n in child.by_mapping.most_common())
            out += ["", f"One child of the 3-device run owns {child.own * page_mb:.2f} MB: "
                    f"{child.copied * page_mb:.2f} MB are copies of pages the supervisor has "
                    f"at the same address (copy-on-write after the fork), "
                    f"{child.new * page_mb:.2f} MB new memory. By mapping: {kinds}. The copies "
                    f"by how many 8-byte words differ from the supervisor's page now (pages): "
                    f"{words} (0: written and restored, such as a reference count that went "
                    "up and down)."]
        out += ["", f"The supervisor also keeps an hour of readings per device for the status "
                f"page; full, that is {history_kib:.0f} KiB per device (tracemalloc), on top of "
                "the rows above, which are taken before the history fills."]
        out += ["", f"| CPU, 3 devices at {CPU_INTERVAL_S:g} s, {args.seconds:g} s window | CPU "
                "per delivered measurement | measurements | % of one core |", "|---|---|---|---|",
                f"| the agent (whole tree) | {cpu.per_measurement_ms:.2f} ms | {cpu.measurements} "
                f"| {cpu.percent:.2f} % |",
                f"| 3 bare loops (insert, publish QoS 1, PUBACK, delete) | "
                f"{bare.per_measurement_ms:.2f} ms | {bare.measurements} | {bare.percent:.2f} % |",
                f"| ratio | {cpu_ratio:.2f} | | |",
                "", f"For reference (no target), the sample config's interval, "
                f"{SAMPLE_INTERVAL_S:g} s, measured the same way: the agent "
                f"{sample.per_measurement_ms:.2f} ms per measurement ({sample.measurements}, "
                f"{sample.percent:.3f} % of one core), the bare loops "
                f"{sample_bare.per_measurement_ms:.2f} ms ({sample_bare.measurements}), "
                f"{sample.per_measurement_ms / sample_bare.per_measurement_ms:.2f} ×. Between "
                "readings a device wakes for its beats (every 5 s when steady); the bare loop "
                "sleeps."]
        out += ["", "| start | median |", "|---|---|",
                f"| agent (3 devices), exec → READY=1 | {agent_s * 1000:.0f} ms |",
                f"| bare `python3 -c \"{BARE_IMPORT}\"` | {bare_s * 1000:.0f} ms |",
                f"| ratio | {ratio:.2f} |",
                f"| for reference: `python3 -c \"{AGENT_IMPORT}\"` | {modules_s * 1000:.0f} ms |"]
        out += scale_table(scales, args.seconds)
        if args.doc:
            notes = miss_notes(memories, per_device, cpu, bare, start, drain, scales)
            write_doc(Path(args.doc), out, notes, drain_lines(drain, session))
        return out
    finally:
        counter.close()
        notify.close()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="CPU measurement window")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="wait this long after every device is online before measuring")
    parser.add_argument("--starts", type=int, default=7, help="start-time runs (median)")
    parser.add_argument("--devices", default="3,10,30",
                        type=lambda s: [int(n) for n in s.split(",") if n])
    parser.add_argument("--scale", default="100:25,100:1", metavar="DEVICES:PER_PROCESS,...",
                        type=lambda s: [tuple(int(n) for n in case.split(":"))
                                        for case in s.split(",") if case],
                        help="scale-mode cases at interval 10 s ('' for none; the targets "
                             "are for 100:25)")
    parser.add_argument("--only-scale", action="store_true",
                        help="measure the scale cases only (no start, rows, CPU or drain)")
    parser.add_argument("--markdown", help="write the tables to this file (markdown lines)")
    parser.add_argument("--doc", help="write the whole performance note (docs/performance.md), "
                                      "with the drain runs")
    args = parser.parse_args()
    if args.only_scale and args.doc:
        parser.error("--only-scale measures too little for --doc")
    if os.geteuid() != 0:
        sys.exit("bench_footprint.py reads /proc/<pid>/pagemap: run it as root")
    lines = run(args)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
