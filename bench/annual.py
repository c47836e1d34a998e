"""Annual energy figures the household model gives: the sample site and Madrid.

Runs the pure models (`c8ysim.sim.household.Household`, no agent processes) over one
calendar year at fixed steps (default 15 min; each step's instantaneous powers times the
step) and prints, per site: PV yield (kWh and kWh/kWp), heat-pump electrical input and
heat delivered (and their ratio, the seasonal performance factor), household load, grid
import and export as the meter counts them (phase by phase: it does not net across
phases, so a single-phase inverter's export on L1 is export even while L2 imports), the
same netted across the phases for comparison, self-consumption share ((PV - export) / PV)
and self-sufficiency ((load + HP - import) / (load + HP)). Within a step import and
export are netted; a finer --step-min nets less and shows slightly more of both. Madrid
is the sample site's devices and seed moved to 40.42 N, 3.70 W.

    .venv/bin/python bench/annual.py [--config etc/c8ysim.yaml] [--year 2025] [--step-min 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from c8ysim import config as agent_config  # noqa: E402
from c8ysim.sim import Site  # noqa: E402
from c8ysim.sim.household import Household  # noqa: E402
from c8ysim.sim.phases import meter_flows  # noqa: E402


def annual(site: Site, year: int, step_s: float) -> dict[str, float]:
    house = Household(site)
    start = datetime(year, 1, 1, tzinfo=timezone.utc).timestamp()
    end = datetime(year + 1, 1, 1, tzinfo=timezone.utc).timestamp()
    wh = step_s / 3600.0 / 1000.0  # W -> kWh for one step
    pv = hp = heat = load = imp = exp = net_imp = net_exp = 0.0
    t = start + step_s / 2.0  # mid-step samples
    while t < end:
        s = house.snapshot(t)
        pv += sum(p.ac_w for p in s.pv.values()) * wh
        hp += sum(h.power_w for h in s.heatpumps.values()) * wh
        heat += sum(h.heat_w for h in s.heatpumps.values()) * wh
        load += s.load_w * wh
        plus, minus = meter_flows(s.grid_phase_w)
        imp += plus * wh
        exp += minus * wh
        net_imp += max(0.0, s.grid_w) * wh
        net_exp += max(0.0, -s.grid_w) * wh
        t += step_s
    kwp = sum(d.param("peak_kw") for d in site.devices if d.kind == "pv")
    return {
        "PV yield kWh": pv,
        "PV yield kWh/kWp": pv / kwp if kwp else 0.0,
        "heat pump electrical kWh": hp,
        "heat pump heat delivered kWh": heat,
        "heat pump seasonal performance factor": heat / hp if hp else 0.0,
        "household load kWh": load,
        "grid import kWh (meter, A+)": imp,
        "grid export kWh (meter, A-)": exp,
        "grid import kWh, phases netted": net_imp,
        "grid export kWh, phases netted": net_exp,
        "self-consumption %": 100.0 * (pv - exp) / pv if pv else 0.0,
        "self-sufficiency %": 100.0 * (load + hp - imp) / (load + hp) if load + hp else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "etc" / "c8ysim.yaml"))
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--step-min", type=float, default=15.0)
    args = parser.parse_args(argv)

    sample = agent_config.load(args.config).site
    sites = {
        f"sample ({sample.latitude:.2f}, {sample.longitude:.2f})": sample,
        "Madrid (40.42, -3.70)": sample._replace(
            latitude=40.42, longitude=-3.70, timezone="Europe/Madrid"),
    }
    began = time.monotonic()
    results = {name: annual(site, args.year, args.step_min * 60.0) for name, site in sites.items()}
    names = list(results)
    width = max(len(k) for k in results[names[0]])
    print(f"year {args.year}, {args.step_min:g}-minute steps, seed {sample.seed}, "
          f"devices {', '.join(f'{d.name} ({d.kind})' for d in sample.devices)}")
    print(f"{'':{width}}  " + "  ".join(f"{n:>24}" for n in names))
    for key in results[names[0]]:
        print(f"{key:{width}}  " + "  ".join(f"{results[n][key]:>24.1f}" for n in names))
    print(f"({time.monotonic() - began:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
