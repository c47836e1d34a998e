"""Render one simulated summer day and one winter day of the site's devices to PNG.

For a person to look at, over the local day: the powers (PV AC output, heat-pump electrical
input and heat output, household load, grid meter signed: + import, - export), the grid
meter's three phases (+ import, - export: single-phase loads and inverter, three-phase heat
pump), the three phase voltages, and the temperatures (outdoor, heat-pump flow and return,
PV module). Uses the pure models (`Household`, no agent processes) at 2-minute steps.
Default days: the first clear day from 21 June and the coldest clear day in January of
--year (clear = the weather model's day type), so the pictures show a full PV bell with
export at noon and a cold winter morning with a busy heat pump.

The config's daily scenarios (`scenarios:` entries with `at:`) are part of the site the
models compute, and their windows are shaded on every panel, labelled with the fault (or
weather) and its device: `make plot-scenarios` draws etc/scenarios-example.yaml. Entries
with `after:` have no time of day (they count from the agent's start) and are listed, not
drawn. Needs matplotlib (a dev-only dependency).

    .venv/bin/python bench/plot_day.py [--config etc/c8ysim.yaml] [--out-dir build/plots]
                                       [--year 2025] [--summer 2025-06-21] [--winter 2025-01-15]
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from c8ysim import config as agent_config  # noqa: E402
from c8ysim.sim import Site  # noqa: E402
from c8ysim.sim.clock import local_time, solar_days, zone  # noqa: E402
from c8ysim.sim.household import Household  # noqa: E402

STEP_S = 120.0
SCENARIO_COLORS = ("tab:red", "tab:purple", "tab:olive", "tab:cyan", "tab:pink", "tab:brown")


def local_midnight(day: date, tz_name: str) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone(tz_name)).timestamp()


def day_type(house: Household, site: Site, day: date) -> str:
    noon = local_midnight(day, site.timezone) + 12 * 3600.0
    return house.weather.day_type(math.floor(solar_days(noon, site.longitude)))


def default_summer(house: Household, site: Site, year: int) -> date:
    day = date(year, 6, 21)
    for _ in range(60):
        if day_type(house, site, day) == "clear":
            return day
        day += timedelta(days=1)
    return date(year, 6, 21)


def default_winter(house: Household, site: Site, year: int) -> date:
    days = [date(year, 1, d) for d in range(1, 32)]
    clear = [d for d in days if day_type(house, site, d) == "clear"] or days
    morning = lambda d: house.weather.at(local_midnight(d, site.timezone) + 7 * 3600.0).temp_c  # noqa: E731
    return min(clear, key=morning)


def scenario_windows(site: Site, start: float, end: float) -> list[tuple[float, float, str]]:
    """(begin, end, label) of each scenario window that overlaps [start, end), clipped to it,
    found with the agent's own rule (`Scenario.window` at the site's UTC offset), so a
    window that began the day before or on a DST day is where the agent has it."""
    tz = zone(site.timezone)
    found: dict[tuple[float, float, str], None] = {}
    step = max(1.0, min([60.0, *(s.duration_s for s in site.scenarios)]))  # none missed
    t = start
    while t < end:
        offset = local_time(t, tz).utc_offset_s
        for scenario, _ in site.active(t, offset):
            begin, until = scenario.window(t, offset)
            label = scenario_label(scenario)
            found[(max(begin, start), min(until, end), label)] = None
        t += step
    return list(found)


def scenario_label(scenario) -> str:
    if scenario.what == "weather":
        return f"weather {scenario.name}"
    return f"{scenario.name} on {scenario.device}"


def hhmm(epoch: float, tz_name: str) -> str:
    """Local wall-clock time, to the minute unless the seconds are not 0."""
    stamp = datetime.fromtimestamp(epoch, zone(tz_name))
    return stamp.strftime("%H:%M:%S" if stamp.second or stamp.microsecond else "%H:%M")


def shade_scenarios(strip, panels, windows: list[tuple[float, float, str]], start: float,
                    tz_name: str) -> None:
    """Each window as a labelled bar on the strip (one row per fault or weather) and shaded
    in its colour on every panel."""
    rows = list(dict.fromkeys(label for _, _, label in windows))
    labelled_to: dict[int, float] = {}  # row -> where its last label ends (roughly), h
    for begin, until, label in windows:
        row = rows.index(label)
        color = SCENARIO_COLORS[row % len(SCENARIO_COLORS)]
        x0, x1 = (begin - start) / 3600.0, (until - start) / 3600.0
        strip.broken_barh([(x0, x1 - x0)], (row - 0.35, 0.7), color=color, alpha=0.6)
        if x1 >= labelled_to.get(row, -1.0):  # a second window close by goes unlabelled
            text = f"{label} {hhmm(begin, tz_name)}-{hhmm(until, tz_name)}"
            strip.text(x1 + 0.1, row, text, va="center", ha="left", fontsize=8, clip_on=True)
            labelled_to[row] = x1 + 0.1 + 0.12 * len(text)
        for ax in panels:
            ax.axvspan(x0, x1, color=color, alpha=0.15, lw=0)
    strip.set_ylim(len(rows) - 0.5, -0.5)
    strip.set_yticks([])
    strip.set_ylabel("scenarios", fontsize=8)
    strip.grid(axis="x", alpha=0.3)


def plot_day(house: Household, site: Site, day: date, title: str, path: Path) -> dict[str, float]:
    start = local_midnight(day, site.timezone)
    end = local_midnight(day + timedelta(days=1), site.timezone)  # 23 or 25 h on DST days
    hours, pv, hp, heat, load, grid, temp = [], [], [], [], [], [], []
    phases, volts, flow, back, cell = [], [], [], [], []
    t = start
    while t < end:
        s = house.snapshot(t)
        hours.append((t - start) / 3600.0)
        pv.append(sum(p.ac_w for p in s.pv.values()) / 1000.0)
        hp.append(sum(h.power_w for h in s.heatpumps.values()) / 1000.0)
        heat.append(sum(h.heat_w for h in s.heatpumps.values()) / 1000.0)
        load.append(s.load_w / 1000.0)
        grid.append(s.grid_w / 1000.0)
        temp.append(s.weather.temp_c)
        phases.append([w / 1000.0 for w in s.grid_phase_w])
        volts.append(s.phase_voltage_v)
        first_hp = next(iter(s.heatpumps.values()), None)
        flow.append(first_hp.flow_temp_c if first_hp else math.nan)
        back.append(first_hp.return_temp_c if first_hp else math.nan)
        cell.append(next(iter(s.pv.values())).cell_temp_c if s.pv else math.nan)
        t += STEP_S
    kind = day_type(house, site, day)
    windows = scenario_windows(site, start, end)
    rows = len({label for _, _, label in windows})
    ratios = [3, 2, 1.3, 1.5]
    fig, axes = plt.subplots(
        len(ratios) + bool(rows), 1, figsize=(11, 11 + 0.25 * rows), sharex=True,
        gridspec_kw={"height_ratios": ([0.25 * rows + 0.2] if rows else []) + ratios})
    strip = axes[0] if rows else None
    top, middle, volt_ax, bottom = axes[-4:]
    top.plot(hours, pv, color="orange", label="PV AC output")
    top.plot(hours, hp, color="tab:red", label="heat pump (electrical)")
    top.plot(hours, heat, color="tab:red", lw=0.7, ls="--", label="heat pump (heat output)")
    top.plot(hours, load, color="tab:gray", lw=0.8, label="household load")
    top.plot(hours, grid, color="tab:blue", lw=1.2, label="grid meter (+ import, - export)")
    top.fill_between(hours, grid, 0.0, where=[g < 0 for g in grid], color="tab:blue", alpha=0.15,
                     label="export")
    top.axhline(0.0, color="black", lw=0.6)
    top.set_ylabel("power (kW)")
    (strip or top).set_title(f"{title}: {day.isoformat()} ({kind} day), "
                             f"{site.latitude:.2f}, {site.longitude:.2f}, seed {site.seed}")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    for n, color in enumerate(("tab:brown", "tab:gray", "black")):
        middle.plot(hours, [p[n] for p in phases], color=color, lw=0.8, label=f"grid L{n + 1}")
    middle.axhline(0.0, color="black", lw=0.6)
    middle.set_ylabel("grid per phase (kW)")
    middle.legend(loc="upper left", fontsize=8, ncol=3)
    middle.grid(alpha=0.3)
    for n, color in enumerate(("tab:brown", "tab:gray", "black")):
        volt_ax.plot(hours, [v[n] for v in volts], color=color, lw=0.7, label=f"L{n + 1}-N")
    volt_ax.set_ylabel("voltage (V)")
    volt_ax.legend(loc="upper left", fontsize=8, ncol=3)
    volt_ax.grid(alpha=0.3)
    bottom.plot(hours, temp, color="tab:green", label="outdoor")
    bottom.plot(hours, flow, color="tab:red", lw=0.8, label="heat pump flow")
    bottom.plot(hours, back, color="tab:purple", lw=0.8, label="heat pump return")
    bottom.plot(hours, cell, color="orange", lw=0.8, label="PV module")
    bottom.set_ylabel("temperature (C)")
    bottom.legend(loc="center left", fontsize=8, ncol=4)
    hours_long = round((end - start) / 3600.0)
    bottom.set_xlabel(f"local time ({site.timezone}), h" if hours_long == 24 else
                      f"hours since local midnight ({site.timezone}: a {hours_long}-hour day)")
    bottom.set_xlim(0, hours[-1] + STEP_S / 3600.0)
    bottom.set_xticks(range(0, 25, 3))
    bottom.grid(alpha=0.3)
    if strip is not None:
        shade_scenarios(strip, (top, middle, volt_ax, bottom), windows, start, site.timezone)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    kwh = STEP_S / 3600.0
    return {"PV kWh": sum(pv) * kwh, "HP kWh": sum(hp) * kwh, "heat kWh": sum(heat) * kwh,
            "load kWh": sum(load) * kwh, "grid min kW": min(grid), "grid max kW": max(grid),
            "V min": min(min(v) for v in volts), "V max": max(max(v) for v in volts),
            "T min": min(temp), "T max": max(temp)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "etc" / "c8ysim.yaml"))
    parser.add_argument("--out-dir", default=str(REPO / "build" / "plots"))
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--summer", type=date.fromisoformat, help="YYYY-MM-DD")
    parser.add_argument("--winter", type=date.fromisoformat, help="YYYY-MM-DD")
    args = parser.parse_args(argv)
    site = agent_config.load(args.config).site
    for scenario in site.scenarios:
        if scenario.daily_at_s is None:
            print(f"not drawn (after: counts from the agent's start): {scenario_label(scenario)}")
    house = Household(site)
    days = {"summer": args.summer or default_summer(house, site, args.year),
            "winter": args.winter or default_winter(house, site, args.year)}
    for name, day in days.items():
        path = Path(args.out_dir) / f"day-{name}.png"
        stats = plot_day(house, site, day, name.capitalize(), path)
        print(f"{path}  {day}  " + "  ".join(f"{k} {v:.1f}" for k, v in stats.items()))
        start = local_midnight(day, site.timezone)
        end = local_midnight(day + timedelta(days=1), site.timezone)
        for begin, until, label in scenario_windows(site, start, end):
            print(f"    {label} {hhmm(begin, site.timezone)}-{hhmm(until, site.timezone)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
