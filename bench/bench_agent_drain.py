"""Drain through the real agent: a day of backlog leaving the SQLite files of `c8ysim run`.

`bench_drain.py` drives `Session` alone with pacing off; this one runs what a user runs.
It fills the buffers of three devices with `c8ysim backfill --since 24h` (the real CLI, in
parallel), then for each case copies those files into a fresh state directory, starts
`python -m c8ysim run` against a private mosquitto (directly, or through
`delay_proxy.DelayProxy` for a round trip like a real tenant's) and counts the rows left in
the SQLite files every POLL_S (`SELECT depth FROM counts`, the row count the buffer's
triggers keep; read-only): the drain rate
is rows gone per second from the first row gone until the backlog is gone, or over WINDOW_S
when `cumulocity.max_lines_per_s` makes that too long. In the same run a bare paho
publisher (bench_drain.bare_paho: one line per QoS 1 publish, 20 in flight) sends through
the same path, and every figure is also given as a ratio to it.

    .venv/bin/python bench/bench_agent_drain.py [--interval 2] [--window 20]
                                [--cases 0:100,0:1000,0:default,50:1000,50:default]

A case is RTT_MS:MAX_LINES_PER_S, 0 for the rate meaning the most the config takes
(100000), `default` for no max_lines_per_s in the YAML (what a user gets; printed as the
config's default value, the line marked "the default"). Figures only: the machine is
shared. `--markdown FILE` writes the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from bench_drain import bare_paho  # noqa: E402
from conftest import Mosquitto, children_of, free_port  # noqa: E402
from delay_proxy import DelayProxy  # noqa: E402

DEVICES = (("pv-roof", "pv"), ("heatpump", "heatpump"), ("grid-meter", "grid"))
SUFFIX = ".sqlite3"
POLL_S = 0.25
START_TIMEOUT_S = 60.0
DRAINED_ROWS = 10  # per device: what live readings leave in the buffer at any time
UNLIMITED = 100_000  # the most cumulocity.max_lines_per_s takes
BARE_ROWS = {0: 20_000, 50: 5_000}  # one publish per row at 50 ms RTT is slow: fewer rows
DEFAULT = None  # a case's rate: max_lines_per_s left out of the YAML


def default_rate() -> float:
    """cumulocity.max_lines_per_s when the YAML does not set it."""
    from c8ysim.config import CumulocityConfig
    return CumulocityConfig._field_defaults["max_lines_per_s"]


def effective(rate: float | None) -> float:
    """The max_lines_per_s a case runs with."""
    return default_rate() if rate is DEFAULT else rate or UNLIMITED


def shown(rate: float | None) -> str:
    return f"{effective(rate):g}" + (" (default)" if rate is DEFAULT else "")


@dataclass
class Result:
    rtt_ms: float
    max_lines_per_s: float
    rows: int  # rows drained in the measured span
    seconds: float
    rate: float
    finished: bool  # the whole backlog left (else: a WINDOW_S sample)
    exec_to_drained_s: float | None
    cpu_s: float  # the agent's process tree, over the measured span


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """utime+stime of `pid` and its children, in seconds."""
    total = 0
    for current in [pid, *children_of(pid)]:
        try:
            text = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def config_text(state: Path, port: int, status_port: int, interval_s: float,
                rate: float | None) -> str:
    limit = "" if rate is DEFAULT else f", max_lines_per_s: {float(rate)!r}"
    devices = "".join(f"  - {{name: {name}, type: {kind}, interval_s: {interval_s:g}, "
                      f"external_id: c8ysim-bench-{name}}}\n" for name, kind in DEVICES)
    return ("site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin, seed: 1}\n"
            f"cumulocity: {{host: 127.0.0.1, port: {port}, tenant: t1, user: u, "
            f"password: secret, reconnect_max_s: 2{limit}}}\n"
            f"storage: {{path: '{state}', max_records: 10000000}}\n"
            f"status: {{listen: '127.0.0.1:{status_port}'}}\nlog_level: warning\n"
            "devices:\n" + devices)


def write_config(directory: Path, port: int, interval_s: float, rate: float | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "c8ysim.yaml"
    path.write_text(config_text(directory / "state", port, free_port(), interval_s, rate))
    path.chmod(0o600)
    return path


def backfill(workdir: Path, interval_s: float) -> tuple[Path, int]:
    """Fill the three buffers with a day each (in parallel); (state dir, rows)."""
    config = write_config(workdir / "template", 1, interval_s, 100)
    procs = [subprocess.Popen([sys.executable, "-m", "c8ysim", "backfill", "--config",
                               str(config), "--device", name, "--since", "24h"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name, _ in DEVICES]
    for proc in procs:
        out = proc.communicate(timeout=600)[0]
        if proc.returncode:
            raise RuntimeError(f"backfill failed: {out.decode(errors='replace')}")
    state = workdir / "template" / "state"
    return state, depth(state)


def depth(state: Path) -> int:
    total = 0
    for name, _ in DEVICES:
        path = state / f"{name}{SUFFIX}"
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            total += db.execute("SELECT depth FROM counts").fetchone()[0]  # kept by triggers
        finally:
            db.close()
    return total


def drain(workdir: Path, template: Path, broker_port: int, rtt_ms: float,
          rate: float | None, interval_s: float, window_s: float) -> Result:
    run_dir = workdir / f"run-{rtt_ms:g}-{effective(rate):g}-{time.monotonic_ns()}"
    proxy = DelayProxy(broker_port, rtt_ms / 1000.0) if rtt_ms else None
    config = write_config(run_dir, proxy.port if proxy else broker_port, interval_s,
                          rate if rate is DEFAULT else rate or UNLIMITED)
    shutil.copytree(template, run_dir / "state")
    state = run_dir / "state"
    start_rows = depth(state)
    log = open(run_dir / "agent.log", "wb")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "c8ysim", "run", "--config", str(config)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        return _watch(proc, state, start_rows, started, rtt_ms, rate, window_s, run_dir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
        if proxy:
            proxy.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _watch(proc, state: Path, start_rows: int, started: float, rtt_ms, rate, window_s,
           run_dir: Path) -> Result:
    first_at = first_rows = None
    deadline = started + START_TIMEOUT_S
    while True:
        time.sleep(POLL_S)
        now, rows = time.perf_counter(), depth(state)
        if proc.poll() is not None:
            raise RuntimeError("the agent exited: "
                               + (run_dir / "agent.log").read_text()[-2000:])
        if first_at is None:
            if rows < start_rows:
                first_at, first_rows, first_cpu = now, rows, tree_cpu_s(proc.pid)
                deadline = now + window_s
            elif now > deadline:
                raise RuntimeError("no row left within "
                                   f"{START_TIMEOUT_S:g} s: "
                                   + (run_dir / "agent.log").read_text()[-2000:])
            continue
        finished = rows <= DRAINED_ROWS * len(DEVICES)
        if finished or now >= deadline:
            seconds = now - first_at
            drained = first_rows - rows
            return Result(rtt_ms, effective(rate), drained, seconds,
                          drained / seconds if seconds else 0.0, finished,
                          now - started if finished else None,
                          tree_cpu_s(proc.pid) - first_cpu)


def run(args) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="c8ysim-agent-drain-"))
    broker = Mosquitto(workdir).start()
    try:
        fill_started = time.perf_counter()
        template, rows = backfill(workdir, args.interval)
        print(f"c8ysim drain through the agent: 3 devices, a day each at {args.interval:g} s "
              f"({rows} rows, backfilled in {time.perf_counter() - fill_started:.0f} s), "
              f"load average {os.getloadavg()[0]:.1f}")
        bare = {}
        for rtt_ms in sorted({case[0] for case in args.cases}):
            proxy = DelayProxy(broker.port, rtt_ms / 1000.0) if rtt_ms else None
            try:
                bare[rtt_ms] = bare_paho(proxy.port if proxy else broker.port,
                                         BARE_ROWS.get(rtt_ms, 5_000))
            finally:
                if proxy:
                    proxy.close()
            print(f"  bare paho, RTT +{rtt_ms:g} ms: {bare[rtt_ms]:9,.0f} lines/s")
        table = ["| RTT | max_lines_per_s | drained | rate | × bare paho | a day of backlog "
                 "(3 devices) | agent CPU per line |", "|---|---|---|---|---|---|---|"]
        for rtt_ms, rate in args.cases:
            result = drain(workdir, template, broker.port, rtt_ms, rate, args.interval,
                           args.window)
            ratio = result.rate / bare[rtt_ms]
            day_s = rows / result.rate if result.rate else float("inf")
            label = shown(rate)
            span = (f"all {result.rows} rows in {result.seconds:.1f} s" if result.finished
                    else f"{result.rows} rows in a {result.seconds:.0f} s window")
            mark = "the default; " if rate is DEFAULT else ""
            print(f"  agent, RTT +{rtt_ms:g} ms, max_lines_per_s {effective(rate):g}: "
                  f"{result.rate:9,.0f} lines/s = {ratio:6.3f} x bare paho ({mark}{span}; "
                  f"a day of backlog: "
                  f"{day_s / 60:.1f} min; agent CPU {result.cpu_s:.1f} s = "
                  f"{result.cpu_s / max(1, result.rows) * 1e6:.0f} µs per line)")
            table.append(f"| {rtt_ms:g} ms | {label} | {span} | {result.rate:,.0f} lines/s | "
                         f"{ratio:.3f} | {day_s / 60:.1f} min | "
                         f"{result.cpu_s / max(1, result.rows) * 1e6:.0f} µs |")
        table += ["", f"Bare paho in the same run: " + ", ".join(
            f"{bare[r]:,.0f} lines/s at +{r:g} ms" for r in sorted(bare)) + "."]
        return table
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def parse_cases(text: str) -> list[tuple[float, float]]:
    cases = []
    for item in text.split(","):
        rtt, _, rate = item.partition(":")
        cases.append((float(rtt), DEFAULT if rate.strip() == "default" else float(rate)))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=2.0,
                        help="the devices' interval: a day of backlog is 86400/interval rows each")
    parser.add_argument("--window", type=float, default=20.0,
                        help="longest measured span of a case (rate-limited drains)")
    parser.add_argument("--cases", type=parse_cases,
                        default=parse_cases("0:100,0:1000,0:default,50:1000,50:default"),
                        help="RTT_MS:MAX_LINES_PER_S,... (0: 100000; default: not in the YAML)")
    parser.add_argument("--markdown", help="write the table to this file")
    args = parser.parse_args()
    table = run(args)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
