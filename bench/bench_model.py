"""The household model's cost per reading (issue 18): `model.step` of each kind, small and large sites.

Each device runs in its own process and steps its own model once per interval, so what a
site costs is the time of one `model.step` per device per interval. This prints, for a
3-device site (pv, heatpump, grid) and a 20-device site (10 PV arrays, 9 heat pumps, one
grid meter; all with different parameters, so that nothing is identical by accident), the
time per step of one device of each kind over a simulated day at 1 s and 10 s steps, and:

- the ratio of each figure to a baseline measured in the same run, interleaved with the
  models: one `WeatherModel.at` call (the shared weather every device needs at every step).
  The machine is shared and noisy: compare ratios between runs, not microseconds;
- the whole site's CPU per simulated second (the sum over its devices, each stepping every
  `interval` seconds) and the ratio large/small per device (10/3 = 3.3 if a device's cost
  grew with the site like the site itself: every device computing every other);
- Python bytecodes per step (`sys.settrace`), a count the machine's noise does not touch;
- the small site with scenarios (a daily forced-weather window, a daily inverter trip, a
  once compressor fault and a grid outage; none, some or all active during the day) beside
  the same site without: what scenarios cost.

Every figure is the minimum over --reps runs, each from cold caches (the lru caches of the
noise and weather modules are cleared: a device process starts cold too). `--src DIR` times
another checkout's c8ysim (e.g. a `git worktree` of an older commit) with this same script.
No assertions.

    .venv/bin/python bench/bench_model.py [--reps 3] [--quick] [--src DIR]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="runs per figure (the minimum is shown)")
    parser.add_argument("--quick", action="store_true", help="a quarter of a day instead of a day")
    parser.add_argument("--src", default=str(REPO), help="the checkout whose c8ysim is timed")
    parser.add_argument("--day", default="2024-01-15", help="the simulated day (UTC), a heating day")
    return parser.parse_args()


ARGS = parse_args()
sys.path[:0] = [ARGS.src]

from c8ysim.sim import DeviceSpec, Site, build_model  # noqa: E402
from c8ysim.sim import noise, weather  # noqa: E402
from c8ysim.sim.weather import WeatherModel  # noqa: E402
try:
    from c8ysim.site import FAULT, WEATHER, Scenario  # noqa: E402
except ImportError:  # an older checkout (--src): no scenarios, no scenario rows
    Scenario = None

SMALL = Site(52.52, 13.405, "Europe/Berlin", 42, devices=(
    DeviceSpec("pv", "pv0"), DeviceSpec("heatpump", "hp0"), DeviceSpec("grid", "meter")))


def large_site() -> Site:
    devices = []
    for i in range(10):  # single-phase on L1..L3 up to 4.6 kW of inverter, three-phase above
        devices.append(DeviceSpec("pv", f"pv{i}", (
            ("peak_kw", 3.0 + i), ("azimuth_deg", 90.0 + 20.0 * i), ("tilt_deg", 15.0 + 3.0 * i),
            ("inverter_kw", 2.5 + 0.8 * i), ("phase", float(1 + i % 3)))))
    for i in range(9):  # every third one single-phase
        devices.append(DeviceSpec("heatpump", f"hp{i}", (
            ("rated_kw", 2.0 + 0.7 * i), ("building_kwh_per_year", 6000.0 + 2000.0 * i),
            ("phases", 1.0 if i % 3 == 0 else 3.0), ("phase", float(1 + i % 3)))))
    devices.append(DeviceSpec("grid", "meter"))
    return Site(52.52, 13.405, "Europe/Berlin", 42, household=(("kwh_per_year", 5200.0),),
                devices=tuple(devices))


LARGE = large_site()
FIRST = {"pv": "pv0", "heatpump": "hp0", "grid": "meter"}


def with_scenarios(site: Site, day0: float) -> Site:
    """`site` with a forced overcast 10:00-14:00 local, a daily inverter trip 12:00-12:30, a
    compressor fault 06:00-08:00 UTC of the day and a 20-minute grid outage at 16:00 UTC."""
    return Site(site.latitude, site.longitude, site.timezone, site.seed, site.household,
                site.devices, (
                    Scenario(WEATHER, "overcast", "", 4 * 3600.0, daily_at_s=10 * 3600.0),
                    Scenario(FAULT, "inverter_trip", "pv0", 1800.0, daily_at_s=12 * 3600.0),
                    Scenario(FAULT, "compressor_fault", "hp0", 7200.0, start=day0 + 6 * 3600.0),
                    Scenario(FAULT, "outage", "meter", 1200.0, start=day0 + 16 * 3600.0)))


def clear_caches() -> None:
    for module in (noise, weather):
        for value in vars(module).values():
            if hasattr(value, "cache_clear"):
                value.cache_clear()


def time_steps(site: Site, name: str, day0: float, seconds: float, step_s: float) -> float:
    """µs per model.step over `seconds` from day0 at `step_s` steps, from a fresh model."""
    clear_caches()
    model = build_model(site, name)
    state, steps = model.initial_state(), int(seconds / step_s)
    gc.collect()
    started = time.perf_counter()
    for i in range(1, steps + 1):
        state, _ = model.step(state, day0 + i * step_s, step_s)
    return (time.perf_counter() - started) / steps * 1e6


def bytecodes_per_step(site: Site, name: str, day0: float, steps: int = 200) -> float:
    """Python bytecodes executed per model.step at 10 s steps from 06:00 (sys.settrace): a
    deterministic measure of the work, untouched by the machine's noise (C code such as
    math and zoneinfo counts as one call)."""
    model = build_model(site, name)
    state, counted = model.initial_state(), [0]
    for i in range(10):  # first-use work (scopes, memos) is not a step's
        state, _ = model.step(state, day0 + 21600.0 + i * 10.0, 10.0)

    def tracer(frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            counted[0] += 1
        return tracer

    sys.settrace(tracer)
    try:
        for i in range(10, 10 + steps):
            state, _ = model.step(state, day0 + 21600.0 + i * 10.0, 10.0)
    finally:
        sys.settrace(None)
    return counted[0] / steps


def time_weather(site: Site, day0: float, seconds: float) -> float:
    """µs per WeatherModel.at over `seconds` at 10 s (the baseline)."""
    clear_caches()
    model = WeatherModel(site)
    calls = int(seconds / 10.0)
    gc.collect()
    started = time.perf_counter()
    for i in range(calls):
        model.at(day0 + i * 10.0)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    day0 = datetime.fromisoformat(ARGS.day).replace(tzinfo=timezone.utc).timestamp()
    seconds = 86400.0 / 4 if ARGS.quick else 86400.0
    cases = [(label, site, kind, step_s)
             for label, site in (("3-device", SMALL), ("20-device", LARGE))
             for step_s in (1.0, 10.0) for kind in FIRST]
    if Scenario is not None:
        scenario_site = with_scenarios(SMALL, day0)
        cases += [("3-dev+scen", scenario_site, kind, step_s) for step_s in (1.0, 10.0) for kind in FIRST]
    best = {case[:1] + case[2:]: float("inf") for case in cases}
    baselines = []
    for _ in range(ARGS.reps):
        for label, site, kind, step_s in cases:
            baselines.append(time_weather(SMALL, day0, seconds))
            key = (label, kind, step_s)
            best[key] = min(best[key], time_steps(site, FIRST[kind], day0, seconds, step_s))
    base = statistics.median(baselines)
    print(f"c8ysim from {ARGS.src}; {ARGS.day}, {seconds / 3600:.0f} h simulated, min of {ARGS.reps} runs")
    print(f"baseline WeatherModel.at: {base:.2f} µs (median of {len(baselines)}, "
          f"spread {min(baselines):.2f}-{max(baselines):.2f})")
    print(f"{'site':<11} {'kind':<9} {'step':>5} {'µs/step':>9} {'x baseline':>11}")
    for label, kind, step_s in best:
        us = best[(label, kind, step_s)]
        print(f"{label:<11} {kind:<9} {step_s:>4.0f}s {us:>9.1f} {us / base:>11.2f}")
    print("per device, 20-device site / 3-device site (3.3 = a device costs as much as its site grows):")
    for step_s in (1.0, 10.0):
        ratios = "  ".join(f"{kind} {best[('20-device', kind, step_s)] / best[('3-device', kind, step_s)]:.2f}"
                           for kind in FIRST)
        print(f"  {step_s:.0f} s steps: {ratios}")
    print("whole site, CPU per simulated second at 10 s intervals (every device one step per 10 s):")
    for label, site in (("3-device", SMALL), ("20-device", LARGE)):
        total = sum(best[(label, spec.kind, 10.0)] for spec in site.devices) / 10.0
        print(f"  {label:<10} {total:8.1f} µs/s = {total / base:6.2f} x baseline per second")
    print("Python bytecodes per step (deterministic; 10 s steps from 06:00):")
    sites = {"3-device": SMALL, "20-device": LARGE}
    if Scenario is not None:
        sites["3-dev+scen"] = scenario_site
    for label, site in sites.items():
        counts = "  ".join(f"{kind} {bytecodes_per_step(site, name, day0):6.0f}" for kind, name in FIRST.items())
        print(f"  {label:<10} {counts}")
    if Scenario is None:
        return
    print("scenarios (the 3-device site with four scenarios / without):")
    for step_s in (1.0, 10.0):
        ratios = "  ".join(f"{kind} {best[('3-dev+scen', kind, step_s)] / best[('3-device', kind, step_s)]:.2f}"
                           for kind in FIRST)
        print(f"  {step_s:.0f} s steps: {ratios}")


if __name__ == "__main__":
    main()
