"""A/B: the agent of another commit and this checkout's, side by side, in one CPU window.

The machine is shared: the CPU ratio of the same code moved by ±10 % between runs of
`bench_footprint.py`, more than a change of 5-15 % makes. Run at the same time, both
versions and the bare loops see the same load. `--base REV` is checked out in a temporary
git worktree; the other side is this checkout, uncommitted changes included. Each side runs
`--devices` devices at `--interval` against a private mosquitto of its own, whose subscriber
counts the measurements it delivers; the bare loops (`bench_footprint.BARE_DEVICE`, one per
device) publish to the first. The sides swap their start order every round.

Prints, per round, each side's CPU (every thread of its tree, from schedstat) per delivered
measurement, its ratio to the bare loops, and this checkout's CPU over the base's. The
same code against itself (`--base HEAD`, a clean checkout) gave 0.91-1.02 in seven rounds of
30 s, and once 0.85 in a round of 15 s: use rounds of 30 s or more, and read a difference as
real only when it is larger than that in every round.

    make bench-ab BASE=HEAD~1 AB_ARGS="--rounds 3"
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_footprint import (  # noqa: E402
    BARE_DEVICE, REPO, AgentRun, Cpu, MeasurementCounter, Mosquitto, NotifySocket,
    cpu_window, tree)

SIDES = ("base", "this")


def measure_round(workdir: Path, checkouts: dict, brokers: dict, counters: dict, order,
                  args) -> dict[str, Cpu]:
    """{side: Cpu} and {"bare": Cpu} over one window, every agent online and settled."""
    runs = {}
    bare = []
    try:
        for side in order:
            directory = workdir / f"{side}-{time.monotonic_ns()}"
            directory.mkdir()
            runs[side] = AgentRun(directory, brokers[side].port, args.devices, args.interval,
                                  NotifySocket(directory), checkout=checkouts[side])
            runs[side].start()
        for run in runs.values():
            run.wait_online_quietly()
        bare = [subprocess.Popen([sys.executable, "-c", BARE_DEVICE, str(brokers[SIDES[0]].port),
                                  str(workdir / f"bare-{i}-{time.monotonic_ns()}.sqlite3"),
                                  str(args.interval)])
                for i in range(args.devices)]
        time.sleep(args.settle)
        sides = {side: (lambda run=run: tree(run.proc.pid), counters[side].read)
                 for side, run in runs.items()}
        sides["bare"] = (lambda: [proc.pid for proc in bare],
                         lambda: counters[SIDES[0]].read(bare=True))
        return cpu_window(sides, args.seconds)
    finally:
        for proc in bare:
            proc.kill()
            proc.wait(10)
        for run in runs.values():
            run.stop()
            run.notify.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=40.0, help="CPU window per round")
    parser.add_argument("--settle", type=float, default=8.0,
                        help="wait this long after every device is online")
    parser.add_argument("--interval", type=float, default=1.0, help="interval_s of every device")
    parser.add_argument("--devices", type=int, default=3, help="devices per side")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="c8ysim-ab-"))
    base = workdir / "base-checkout"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(base),
                    args.base], check=True)
    brokers, counters = {}, {}
    try:
        checkouts = {"base": base, "this": REPO}
        commit = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        print(f"c8ysim A/B: base {args.base} ({commit}) against this checkout, "
              f"{args.devices} devices each at {args.interval:g} s, {args.rounds} rounds of "
              f"{args.seconds:g} s")
        for side in SIDES:
            (workdir / f"broker-{side}").mkdir()
            brokers[side] = Mosquitto(workdir / f"broker-{side}").start()
            counters[side] = MeasurementCounter(brokers[side].port)
        changes = []
        for number in range(args.rounds):
            order = SIDES if number % 2 == 0 else SIDES[::-1]
            cpu = measure_round(workdir, checkouts, brokers, counters, order, args)
            bare_ms = cpu["bare"].per_measurement_ms
            change = cpu["this"].per_measurement_ms / cpu["base"].per_measurement_ms
            changes.append(change)
            print(f"  round {number + 1} (started {' then '.join(order)}): "
                  + ", ".join(f"{side} {cpu[side].per_measurement_ms:.2f} ms "
                              f"({cpu[side].measurements} delivered, "
                              f"{cpu[side].per_measurement_ms / bare_ms:.2f} x bare)"
                              for side in SIDES)
                  + f", bare {bare_ms:.2f} ms ({cpu['bare'].measurements}); "
                    f"this / base {change:.3f}")
        print(f"  this / base, median of {len(changes)}: {statistics.median(changes):.3f}")
    finally:
        for counter in counters.values():
            counter.close()
        for broker in brokers.values():
            broker.stop()
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                       check=False)


if __name__ == "__main__":
    main()
