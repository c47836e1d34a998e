"""Chaos: the real agent (3 devices) against the fake tenant under faults, counting every reading.

Short runs are part of `make test`; `make chaos` sets C8YSIM_CHAOS=long for the full counts
(and C8YSIM_CHAOS_REPORT=docs/reliability.md to publish the table). Every scenario is bounded
in time, on loopback only, and asserts: nothing lost, the agent recovered by itself, clean stop.
Counting: see `chaos_collector`.
"""

from __future__ import annotations

import itertools
import os
import platform
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from c8ysim import backfill as backfill_module
from chaos_collector import ClockSteps, Collector, Result, write_report
from clockshift import WallClock
from conftest import REPO, Agent, free_port, wait_until
from fake_tenant import FakeTenant
from fault_proxy import FaultProxy

LONG = os.environ.get("C8YSIM_CHAOS", "short") == "long"
MODE = "long" if LONG else "short"
DEVICES = (("pv-roof", "pv"), ("heatpump", "heatpump"), ("grid-meter", "grid"))
CLIENTS = {name: f"c8ysim-{name}" for name, _ in DEVICES}
CREDENTIALS = {"t1/u": "secret"}
KEEPALIVE_S = 5  # the smallest the config allows: a blackhole is noticed in ~1.5-2 x this
ONLINE_TIMEOUT_S = 30.0
RECOVER_TIMEOUT_S = 90.0 if LONG else 40.0
SCENARIO_TIMEOUT_S = 900 if LONG else 120
DRAINED_MAX_QUEUED = 3  # a row or two of the current tick may be in flight at any moment
RESTART_WAIT_S = 90.0  # RESTART_CAP_S (60 s) of the supervisor's backoff, and a reconnect
DISK_KIB = 24 * 1024  # the tmpfs that fills up
TICKS_AFTER_RECOVERY = 5  # before the stop: see "Limits" in chaos_collector
MAX_CLOCK_STEP_GAP_S = 1.0  # 5 ticks at 0.2 s; a stall through one phase is 4 s or more
RESULTS: list[Result] = []


def n(short: int, long: int) -> int:
    return long if LONG else short


def write_chaos_config(directory: Path, port: int, status_port: int, interval_s: float,
                       state_dir: Path) -> Path:
    devices = "".join(f"  - {{name: {name}, type: {kind}, interval_s: {interval_s}, "
                      f"external_id: {CLIENTS[name]}}}\n" for name, kind in DEVICES)
    path = directory / "c8ysim.yaml"
    path.write_text(
        "site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin, seed: 1}\n"
        f"cumulocity: {{host: 127.0.0.1, port: {port}, tenant: t1, user: u, "
        f"password: secret, reconnect_max_s: 2, keepalive_s: {KEEPALIVE_S}, "
        f"max_lines_per_s: {100 * len(DEVICES)}}}\n"  # 100 per device, as these runs were tuned
        f"storage: {{path: {state_dir}}}\n"
        f"status: {{listen: '127.0.0.1:{status_port}'}}\n"
        "devices:\n" + devices)
    return path


class Rig:
    """Fake tenant(s) behind a fault proxy, the agent, and the collector; all torn down."""

    def __init__(self, workdir: Path, interval_s: float, state_dir: Path | None = None,
                 env: dict | None = None, steps: ClockSteps | None = None):
        self.workdir, self.interval_s, self.env = workdir, interval_s, env
        self.state_dir = state_dir or workdir / "state"
        self.collector = Collector(CLIENTS, steps)
        self.tenants: list[FakeTenant] = []
        self.tenant = self._new_tenant()
        self.proxy = FaultProxy(self.tenant.port)
        self.agent: Agent | None = None
        self.agents: list[Agent] = []
        self.started = time.monotonic()
        self.exit_codes: list[int] = []
        self.last_seen: dict = {}  # the status the recovery check last saw (for failures)

    def _new_tenant(self) -> FakeTenant:
        tenant = FakeTenant(CREDENTIALS).start()
        self.tenants.append(tenant)
        self.collector.add_tenant(tenant)
        return tenant

    # -- the agent ----------------------------------------------------------------------------

    def start_agent(self) -> Agent:
        status_port = free_port()  # a fresh port: a killed agent's socket may linger
        config = write_chaos_config(self.workdir, self.proxy.port, status_port,
                                    self.interval_s, self.state_dir)
        self.agent = Agent(config, status_port, self.env)
        self.agents.append(self.agent)
        self.agent.start()
        return self.agent

    def devices(self) -> dict:
        try:
            return self.agent.devices()
        except (AssertionError, ValueError):
            return {}

    def online(self) -> bool:
        devices = self.devices()
        return len(devices) == len(DEVICES) and all(d.get("connected") for d in devices.values())

    def wait_online(self, timeout: float = ONLINE_TIMEOUT_S) -> None:
        wait_until(self.online, timeout, interval=0.1, what="every device online")

    def sessions(self) -> dict[str, int]:
        """Completed registrations (500) per device over every tenant."""
        return {name: sum(1 for t in self.tenants for f in t.lines(client) if f[0] == "500")
                for name, client in CLIENTS.items()}

    def wait_new_sessions(self, before: dict[str, int], timeout: float = ONLINE_TIMEOUT_S,
                          names=None) -> None:
        names = names or list(CLIENTS)

        def renewed() -> bool:
            now = self.sessions()  # copies every record: once per poll, not per device
            return all(now[n] > before[n] for n in names)

        wait_until(renewed, timeout, interval=0.2, what="new sessions after the fault")

    def kill_agent(self) -> None:
        """SIGKILL to the whole process group (supervisor and children), as a crash would."""
        children = self.agent.child_pids()
        os.killpg(self.agent.proc.pid, signal.SIGKILL)
        self.agent.proc.wait(10)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10,
                   what="the killed children to be gone")

    # -- faults -------------------------------------------------------------------------------

    def restart_broker(self, down_s: float) -> None:
        """The broker dies (every connection reset, nothing answers), then a fresh one starts."""
        old = self.tenant
        self.proxy.refuse(True)
        self.proxy.cut()
        old.stop()
        time.sleep(down_s)
        self.tenant = self._new_tenant()
        self.proxy.upstream = ("127.0.0.1", self.tenant.port)
        self.proxy.refuse(False)

    # -- the end ------------------------------------------------------------------------------

    def drained(self) -> bool:
        devices = self.last_seen = self.devices()
        return (len(devices) == len(DEVICES)
                and all(d.get("connected") and not d.get("degraded")
                        and (d.get("queued") or 0) <= DRAINED_MAX_QUEUED
                        for d in devices.values()))

    def finish(self, scenario: str, faults: str, note: str = "",
               backfill: dict[str, frozenset[str]] | None = None) -> Result:
        """Wait (bounded) for recovery without help, stop the agent, count (`backfill`: the
        timestamps backfilled per device, see `Collector.count`)."""
        try:
            wait_until(self.drained, RECOVER_TIMEOUT_S, interval=0.2, what="recovery")
            recovered = True
            time.sleep(TICKS_AFTER_RECOVERY * self.interval_s)  # the last rows reach the files
        except AssertionError:
            recovered = False
        stopped_at = time.time()
        try:
            self.exit_codes.append(self.agent.stop(15))
        except subprocess.TimeoutExpired:
            self.exit_codes.append(-1)  # did not stop within 15 s of SIGTERM
        self.close()
        counts = [self.collector.count(name, self.state_dir, self.interval_s, stopped_at,
                                       (backfill or {}).get(name, frozenset()))
                  for name, _ in DEVICES]
        violations = sum(len(t.violations) for t in self.tenants)
        if self.exit_codes[-1] != 0:
            note = (note + f" exit code {self.exit_codes[-1]} on stop").strip()
        result = Result(scenario, faults, counts, recovered,
                        time.monotonic() - self.started, note, violations)
        RESULTS.append(result)
        print("\n" + result.line())
        return result

    def collector_lines(self, client: str) -> list[list[str]]:
        """The fields of every buffered-kind line `client` published, over every tenant."""
        return [fields for _, fields, _ in self.collector.stream(client)]

    def close(self) -> None:
        for agent in self.agents:
            agent.cleanup()
        self.proxy.close()
        for tenant in self.tenants:
            tenant.stop()


@pytest.fixture
def rig_factory(tmp_path):
    rigs: list[Rig] = []

    def make(interval_s: float = 0.2, state_dir: Path | None = None, **options) -> Rig:
        rig = Rig(tmp_path, interval_s, state_dir, **options)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def check(result: Result, rig: Rig) -> None:
    details = "\n".join(f"  {d}" for d in result.devices)
    assert result.total("generated") > 0, details
    assert result.total("lost") == 0, f"readings lost:\n{details}\n{_log_tail(rig)}"
    assert result.total("extra") == 0, (f"received lines the buffers never held:\n{details}\n"
                                        f"status when recovered: {rig.last_seen}\n"
                                        f"{_log_tail(rig, 80)}")
    assert result.total("out_of_order") == 0, details
    assert result.total("unplaced") == 0, f"timestamps from no phase of the clock:\n{details}"
    assert result.total("register_decreases") == 0, f"an energy register went down:\n{details}"
    assert result.recovered, f"did not recover by itself:\n{rig.devices()}\n{_log_tail(rig)}"
    assert rig.exit_codes[-1] == 0, _log_tail(rig)


def _log_tail(rig: Rig, lines: int = 40) -> str:
    try:
        return "\n".join(rig.agent.log_text().splitlines()[-lines:])
    except OSError:
        return ""


timeout = pytest.mark.timeout(SCENARIO_TIMEOUT_S)

# -- scenarios --------------------------------------------------------------------------------


@timeout
def test_broker_killed_and_restarted(rig_factory):
    rig = rig_factory()
    rig.start_agent()
    rig.wait_online()
    times = n(2, 10)
    for _ in range(times):
        time.sleep(random.uniform(1.0, 3.0))
        before = rig.sessions()
        rig.restart_broker(down_s=random.uniform(0.5, 3.0))
        rig.wait_new_sessions(before)
    check(rig.finish("broker restart", f"{times}x broker killed, fresh one"), rig)


@timeout
def test_connections_cut_with_rst(rig_factory):
    rig = rig_factory()
    rig.start_agent()
    rig.wait_online()
    times = n(8, 50)
    for _ in range(times):
        time.sleep(random.uniform(0.2, 1.2))
        before = rig.sessions()
        rig.proxy.cut()
        rig.wait_new_sessions(before)
    check(rig.finish("RST cut", f"{times}x every connection reset"), rig)


@timeout
def test_connections_blackholed(rig_factory):
    rig = rig_factory()
    rig.start_agent()
    rig.wait_online()
    times = n(2, 10)
    for _ in range(times):
        time.sleep(random.uniform(0.5, 2.0))
        rig.proxy.blackhole(True)  # the agent must notice by itself (keepalive)
        wait_until(lambda: not any(d.get("connected") for d in rig.devices().values()),
                   6 * KEEPALIVE_S, interval=0.2, what="the agent to notice the blackhole")
        rig.proxy.blackhole(False)
        rig.wait_online()
    check(rig.finish("blackhole", f"{times}x silent network until noticed"), rig)


@timeout
def test_children_killed(rig_factory):
    rig = rig_factory()
    rig.start_agent()
    rig.wait_online()
    times = n(5, 20)
    # Round robin. In the long run each child has run > QUICK_RUN_S (10 s) when it is killed:
    # 5 deaths within 120 s each sooner than that make a device FATAL by design (crash-loop
    # protection), which would end the test of loss. Its restart backoff still doubles with
    # each death (up to 60 s) because no child runs STABLE_RUN_S (60 s).
    min_run_s = 11.0 if LONG else 0.0
    seen: dict[int, float] = {}

    def ready(name: str) -> int | None:
        pid = _running_pid(rig, name)
        if pid is None:
            return None
        first = seen.setdefault(pid, time.monotonic())
        return pid if time.monotonic() - first >= min_run_s else None

    names = [name for name, _ in DEVICES]
    for i in range(times):
        name = names[i % len(names)]
        victim = wait_until(lambda: ready(name), RESTART_WAIT_S + min_run_s, interval=0.2,
                            what=f"{name} to run again")
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.5)
    check(rig.finish("child kill -9", f"{times}x one child SIGKILL"), rig)


def _running_pid(rig: Rig, name: str) -> int | None:
    device = rig.devices().get(name) or {}
    return device.get("pid") if device.get("connected") else None


@timeout
def test_whole_agent_killed_and_restarted(rig_factory):
    rig = rig_factory()
    rig.start_agent()
    rig.wait_online()
    times = n(2, 5)
    for _ in range(times):
        time.sleep(random.uniform(1.0, 3.0))
        rig.kill_agent()
        rig.start_agent()
        rig.wait_online()
    check(rig.finish("agent kill -9", f"{times}x process group SIGKILL + restart"), rig)


@timeout
def test_long_outage_compressed(rig_factory):
    # 1 h at a 3 s interval is 1 200 readings per device: 120 s at 0.1 s (the smallest
    # interval the config allows) is the same backlog.
    rig = rig_factory(interval_s=0.1)
    rig.start_agent()
    rig.wait_online()
    offline_s = n(12, 120)
    rig.proxy.refuse(True)
    rig.proxy.cut()
    time.sleep(offline_s)
    backlog = sum((d.get("queued") or 0) for d in rig.devices().values())
    rig.proxy.refuse(False)
    began = time.monotonic()
    wait_until(rig.drained, RECOVER_TIMEOUT_S, interval=0.2, what="the backlog to drain")
    drain_s = time.monotonic() - began
    result = rig.finish("outage", f"{offline_s} s offline at 0.1 s interval",
                        note=f"backlog {backlog} rows drained in {drain_s:.1f} s")
    check(result, rig)


@timeout
def test_disk_full_for_a_while(rig_factory, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the disk-full scenario mounts a tmpfs: run the tests as root")
    from storage_support import fill_up, tmpfs
    # Large enough for three WAL files (each grows to ~4 MiB before a checkpoint).
    with tmpfs(tmp_path / "small", DISK_KIB) as small:
        rig = rig_factory(state_dir=small / "state")
        rig.start_agent()
        rig.wait_online()
        full_s = n(8, 30)
        filler = fill_up(small)
        time.sleep(full_s / 2)
        rig.proxy.refuse(True)  # offline while full: the backlog lives in memory
        rig.proxy.cut()
        time.sleep(full_s / 2)
        filler.unlink()
        rig.proxy.refuse(False)
        result = rig.finish("disk full", f"{full_s} s no space, half of it offline")
        check(result, rig)


@timeout
def test_wall_clock_steps(rig_factory, tmp_path):
    """The agent's wall clock (only its own) steps +1 h, -1 h, -1 h, +1 h while it runs."""
    clock = WallClock(tmp_path / "clockshift")
    steps = ClockSteps()
    rig = rig_factory(env=clock.env, steps=steps)
    try:
        rig.start_agent()
        rig.wait_online()
        cycles, phase_s = n(1, 5), n(4, 15)
        for _ in range(cycles):
            for step_s in (3600.0, -3600.0, -3600.0, 3600.0):
                time.sleep(phase_s)
                clock.step(step_s)
                steps.record(clock.offset_s)
        time.sleep(phase_s)
        result = rig.finish("wall clock", f"{4 * cycles}x stepped by ±1 h (+, -, -, +)")
    finally:
        clock.close()
    check(result, rig)
    # Neither stalled (a loop waiting for the old next slot would sleep an hour) nor burst
    # (one filling the skipped hour gives unplaced timestamps): on the real time line no
    # reading is further than a few ticks (scheduling on a busy machine) from the next.
    assert result.total("max_gap_s") <= MAX_CLOCK_STEP_GAP_S, result.devices
    logged = rig.agent.log_text()
    assert logged.count("the wall clock stepped forward by 3600") == 2 * cycles, logged[-3000:]
    assert logged.count("the wall clock stepped back by 3600") == 2 * cycles, logged[-3000:]


class OwnCli:
    """The agent's own CLI run beside the live devices from worker threads, every run kept."""

    SPAN, SINCE = 120.0, "2m"

    def __init__(self, rig: Rig):
        self.rig, self.config = rig, rig.workdir / "c8ysim.yaml"
        self.lock = threading.Lock()
        self.runs: dict[str, int] = {}
        self.failures: list[str] = []
        self.sent: dict[str, list[str]] = {name: [] for name, _ in DEVICES}  # "cli N" texts
        self.backfills: list[tuple[str, float, int, int]] = []  # device, now, readings, lines
        self.counter = 0

    def run(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "c8ysim", *args, "--config",
                               str(self.config)], cwd=REPO, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        with self.lock:
            self.runs[args[0]] = self.runs.get(args[0], 0) + 1
            if done.returncode != 0:
                self.failures.append(f"{' '.join(args)}: exit {done.returncode}\n"
                                     f"{done.stdout[-500:]}{done.stderr[-2000:]}")
        return done.stdout if done.returncode == 0 else ""

    def send_test(self, device: str) -> None:
        with self.lock:
            self.counter += 1
            text = f"cli {self.counter}"
        if self.run("send-test", "--device", device, "--topic", "s/us",
                    "--message", f'400,c8ysim_Test,"{text}"'):
            self.sent[device].append(text)

    def backfill(self, device: str) -> None:
        path = self.rig.state_dir / f"{device}.sqlite3"
        before = _high_water(path)
        out = self.run("backfill", "--device", device, "--since", self.SINCE)
        if not out:
            return
        match = re.search(r"queued (\d+) readings \((\d+) lines\)", out)
        assert match, out
        readings, lines = int(match.group(1)), int(match.group(2))
        assert lines <= backfill_module.ROWS_PER_TRANSACTION, "one transaction, one `now`"
        # Its rows share `created` (the command's `now`): found at once, before they drain
        # (>= 6 s at cumulocity.max_lines_per_s 100).
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            found = db.execute("SELECT created, count(*) FROM outbox WHERE id > ? GROUP BY "
                               "created HAVING count(*) >= 10", (before,)).fetchall()
        finally:
            db.close()
        assert len(found) == 1, f"the backfill's rows in {path.name}: {found}"
        with self.lock:
            self.backfills.append((device, found[0][0], readings, lines))

    def stamps(self, device: str) -> frozenset[str]:
        """The times of every reading backfilled into `device` (as c8ysim.backfill makes them)."""
        from c8ysim.uplink.smartrest import iso_time
        interval = self.rig.interval_s
        return frozenset(iso_time(backfill_module.slot_time(k, interval))
                         for name, now, readings, _ in self.backfills if name == device
                         for k in backfill_module.slots(now - self.SPAN, now, interval))


def _high_water(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    finally:
        db.close()
    return row[0] if row else 0


@timeout
def test_own_cli_beside_live_devices(rig_factory, tmp_path):
    """send-test, backfill, buffer stats, diag and status from worker threads while the
    devices run and the broker goes down and up; every line of every class counted."""
    rig = rig_factory()
    rig.start_agent()
    rig.wait_online()
    cli, names = OwnCli(rig), [name for name, _ in DEVICES]
    stop = threading.Event()
    diags = iter(range(1, 10_000))

    def loop(action) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            action(i)

    backfill_runs = n(3, 9)  # round robin over the devices, one at a time per worker
    workers = [
        lambda i: cli.send_test(names[i % len(names)]),
        lambda i: cli.send_test(names[(i + 1) % len(names)]),
        lambda i: (cli.backfill(names[i % len(names)]) if i < backfill_runs
                   else stop.wait(0.5)),
        lambda i: cli.run("buffer", "stats", "--json"),
        lambda i: cli.run("diag", "-o", str(tmp_path / f"diag-{next(diags)}.tar.gz")),
        lambda i: cli.run("status", "--json"),
    ]
    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    outages = n(3, 12)
    try:
        for _ in range(outages):
            time.sleep(random.uniform(2.0, 4.0))
            before = rig.sessions()
            rig.restart_broker(down_s=random.uniform(0.5, 3.0))
            rig.wait_new_sessions(before)
        wait_until(lambda: len(cli.backfills) + len(cli.failures) >= backfill_runs
                   or not threads[2].is_alive(), 60, interval=0.2, what="the backfills")
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(70)
    assert not any(t.is_alive() for t in threads), "a CLI command hung"
    stamps = {name: cli.stamps(name) for name in names}
    result = rig.finish("own CLI", f"{outages}x broker killed; CLI ×{sum(cli.runs.values())}",
                        backfill=stamps)
    received = {name: {f[2] for f in rig.collector_lines(CLIENTS[name])
                       if f[:2] == ["400", "c8ysim_Test"]} for name in names}
    by_device = {d.device: d for d in result.devices}
    backfilled = sum(lines for _, _, _, lines in cli.backfills)
    sent = sum(len(texts) for texts in cli.sent.values())
    sent_received = sum(len(received[d] & set(t)) for d, t in cli.sent.items())
    live = result.total("generated") - backfilled - sent
    live_received = result.total("distinct") - result.total("backfill") - sent_received
    result.note = (f"lines received/generated: live {live_received}/{live}, backfill "
                   f"{result.total('backfill')}/{backfilled} ({len(cli.backfills)} runs), "
                   f"send-test {sent_received}/{sent}; CLI runs "
                   f"{', '.join(f'{k} {v}' for k, v in sorted(cli.runs.items()))}, "
                   f"{len(cli.failures)} failed")
    print(result.line())
    assert not cli.failures, "CLI commands failed:\n" + "\n".join(cli.failures)
    assert len(cli.backfills) == backfill_runs and cli.runs.get("diag", 0) >= 2, cli.runs
    check(result, rig)
    for name in names:
        expected = sum(lines for d, _, _, lines in cli.backfills if d == name)
        assert by_device[name].backfill == expected, (name, by_device[name], cli.backfills)
        missing = set(cli.sent[name]) - received[name]
        assert not missing, f"send-test lines of {name} never arrived: {sorted(missing)}"


def _collector_over(directory: Path, generated: list[str], acked_below_id: int,
                    sent: list[str], steps: ClockSteps | None = None) -> Collector:
    """A collector over a hand-made buffer file of `grid-meter` (rows below `acked_below_id`
    acked) and a tenant that received `sent` in that order."""
    import sqlite3
    from types import SimpleNamespace

    db = sqlite3.connect(directory / "grid-meter.sqlite3")
    db.executescript("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT, "
                     "payload BLOB, created REAL); CREATE TABLE quarantine (id INTEGER);"
                     "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.executemany("INSERT INTO outbox (topic, payload, created) VALUES ('s/us', ?, 0)",
                   [(line.encode(),) for line in generated])
    db.execute("DELETE FROM outbox WHERE id < ?", (acked_below_id,))
    db.commit()
    db.close()
    records = [SimpleNamespace(kind="publish", accepted=True, topic="s/us", time=float(i),
                               text=text) for i, text in enumerate(sent)]
    collector = Collector({"grid-meter": "c8ysim-grid-meter"}, steps)
    collector.add_tenant(SimpleNamespace(records=lambda client: records))
    return collector


def test_collector_counts_loss_duplicates_disorder_and_pending(tmp_path):
    """The counting itself, on a hand-made buffer file and tenant record (no agent)."""
    def line(second: int) -> str:
        return f"201,c8ysim_GridMeter,2026-11-29T10:00:{second:02d}.000+00:00,c8y_P,P,1.5,W"

    generated = [line(s) for s in range(10)]
    # acked up to row 9; row 10 (second 9) is pending.
    # received: 0-4, then a resend of 3-4 (duplicates), 6 before 5 (disorder); 7 and 8 lost
    sent = [generated[i] for i in (0, 1, 2, 3, 4, 3, 4, 6, 5)]
    collector = _collector_over(tmp_path, generated, acked_below_id=10, sent=sent)
    count = collector.count("grid-meter", tmp_path, interval_s=1.0)
    assert (count.generated, count.distinct, count.pending) == (10, 7, 1)
    assert (count.lost, count.duplicates, count.out_of_order, count.extra) == (2, 2, 1, 0)
    assert count.missed_ticks == 2 and count.max_gap_s == 3.0  # 6 -> 9 (pending): 7, 8 missing


def test_collector_places_stepped_timestamps_and_sees_registers_go_down(tmp_path):
    """Timestamps map back through the clock's phases; a kWh series going down is counted."""
    from chaos_collector import iso_to_epoch

    steps = ClockSteps()
    start = time.time() - 100.0  # as record() would have noted them over the last 100 s
    steps.phases = [(start, 0.0), (start + 10.0, 3600.0), (start + 20.0, -3600.0)]

    def line(real_s: float, offset_s: float, kwh: float) -> str:
        stamp = datetime.fromtimestamp(start + real_s + offset_s, timezone.utc).isoformat()
        return f"201,c8ysim_GridMeter,{stamp},c8y_E,import,{kwh},kWh"

    sent = [line(5, 0, 1.0), line(15, 3600, 2.0), line(25, -3600, 1.5),  # 1.5 < 2.0: down
            line(12, -3600, 3.0)]  # real 12 s is in the +1 h phase: no phase fits it
    assert steps.real_time(iso_to_epoch(sent[1].split(",")[2]), 1.0) == pytest.approx(start + 15)
    collector = _collector_over(tmp_path, sent, acked_below_id=len(sent) + 1, sent=sent,
                                steps=steps)
    count = collector.count("grid-meter", tmp_path, interval_s=1.0)
    assert (count.lost, count.out_of_order, count.unplaced) == (0, 0, 1)
    assert count.register_decreases == 1


def test_collector_counts_backfilled_lines_apart(tmp_path):
    """Backfilled lines (old times) count apart from the live ones, which keep every check;
    a backfill on the live slot grid is told apart by arrival, byte-identical twins too."""
    def line(second: float, kwh: float) -> str:
        return f"201,c8ysim_GridMeter,2026-11-29T10:00:{second:06.3f}+00:00,c8y_E,A+,{kwh},kWh"

    live = [line(s, 10.0 + s) for s in range(5)]
    backfilled = [line(0.5, 1.0), line(1.5, 2.0),  # off the 1 s grid
                  line(2, 3.0), line(3, 13.0)]     # on it: other values, a twin of live[3]
    stamps = frozenset(b.split(",")[2] for b in backfilled)
    generated = live + backfilled + ['400,c8ysim_Test,"cli 1"']
    collector = _collector_over(tmp_path, generated, acked_below_id=len(generated) + 1,
                                sent=generated)
    count = collector.count("grid-meter", tmp_path, interval_s=1.0, backfill=stamps)
    assert (count.generated, count.backfill, count.measurements) == (10, 4, 5)
    assert (count.lost, count.extra, count.duplicates) == (0, 0, 0)
    assert (count.out_of_order, count.register_decreases, count.max_gap_s) == (0, 0, 1.0)
    # one backfilled line never arrived: lost, and one short of what the backfill queued
    sent = [g for g in generated if g != backfilled[1]]
    (tmp_path / "lossy").mkdir()
    collector = _collector_over(tmp_path / "lossy", generated, len(generated) + 1, sent)
    count = collector.count("grid-meter", tmp_path / "lossy", interval_s=1.0, backfill=stamps)
    assert (count.lost, count.backfill, count.out_of_order) == (1, 3, 0)
    # without the stamps the same stream is out of order, registers go down
    count = collector.count("grid-meter", tmp_path / "lossy", interval_s=1.0)
    assert count.out_of_order > 0 and count.register_decreases > 0


# -- the published table ----------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def chaos_report():
    yield
    target = os.environ.get("C8YSIM_CHAOS_REPORT")
    if not RESULTS:
        return
    print("\n" + "\n".join(r.line() for r in RESULTS))
    if target:
        write_report(REPO / target, RESULTS, MODE, _machine())


def _commit() -> str:
    """The checked-out commit, read from .git without running git."""
    git = REPO / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line[:12]
    except OSError:
        pass
    return "unknown"


def _machine() -> str:
    commit = _commit()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return (f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n"
            f"- commit: {commit or 'unknown'}\n"
            f"- machine: {cpu}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")
