"""The site as one system: every device's power and the grid balance at one instant.

Owns the composition. `Household(site).snapshot(t)` computes, from scratch and for that t
only, the shared weather, the sun, each PV system, each heat pump, the house load, the
grid power P_grid = load + sum(heat pumps) - sum(PV) (positive = import) and the shared
voltage (which rises while the site exports). Each device process builds its own
Household and gets bit-identical numbers, so the grid meter needs no IPC.

`meter_power_w(name, t)` is the signed power one device's own energy meter sees
(+ consumed from the grid side, - delivered): PV -P_ac, heat pump +P, grid meter P_grid.
It computes only what that device needs, for cheap sub-stepped integration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from c8ysim.sim import Site
from c8ysim.sim.clock import LocalTime, local_time, zone
from c8ysim.sim.heatpump import HeatPump, HpOutput
from c8ysim.sim.load import HouseholdLoad
from c8ysim.sim.pv import PvArray, PvOutput
from c8ysim.sim.sun import SunPosition, sun_position
from c8ysim.sim.voltage import GridVoltage
from c8ysim.sim.weather import Weather, WeatherModel


@dataclass(frozen=True)
class Snapshot:
    """Everything about the site at time t, unrounded."""

    t: float
    weather: Weather
    sun: SunPosition
    local: LocalTime
    pv: Mapping[str, PvOutput]
    heatpumps: Mapping[str, HpOutput]
    load_w: float
    grid_w: float
    voltage_v: float
    excursion: bool


def grid_balance_w(load_w: float, heatpump_w: list[float], pv_w: list[float]) -> float:
    """P_grid = load + sum(heat pumps) - sum(PV), in site.devices order (bit-reproducible)."""
    return load_w + sum(heatpump_w) - sum(pv_w)


class Household:
    def __init__(self, site: Site):
        self.site = site
        self.tz = zone(site.timezone)
        self.weather = WeatherModel(site)
        self.voltage = GridVoltage(site)
        self.load = HouseholdLoad(site)
        self.pv = {s.name: PvArray(s) for s in site.devices if s.kind == "pv"}
        self.heatpumps = {s.name: HeatPump(site, s, self.weather)
                          for s in site.devices if s.kind == "heatpump"}
        self._last: Snapshot | None = None

    def snapshot(self, t: float) -> Snapshot:
        if self._last is not None and self._last.t == t:
            return self._last
        weather, sun, local = self._inputs(t)
        pv = {name: array.output(sun, weather) for name, array in self.pv.items()}
        hps = {name: hp.output(t, weather, local) for name, hp in self.heatpumps.items()}
        load = self.load.power_w(t, local)
        grid = grid_balance_w(load, [h.power_w for h in hps.values()], [p.ac_w for p in pv.values()])
        excursion = self.voltage.excursion_v(t) is not None
        volts = self.voltage.at(t, -grid)
        self._last = Snapshot(t, weather, sun, local, pv, hps, load, grid, volts, excursion)
        return self._last

    def meter_power_w(self, name: str, t: float) -> float:
        if name in self.pv:
            return -self.pv[name].output(sun_position(t, self.site.latitude, self.site.longitude),
                                         self.weather.at(t)).ac_w
        if name in self.heatpumps:
            return self.heatpumps[name].output(t, self.weather.at(t), local_time(t, self.tz)).power_w
        return self.grid_w(t)

    def grid_w(self, t: float) -> float:
        weather, sun, local = self._inputs(t)
        pv = [array.output(sun, weather).ac_w for array in self.pv.values()]
        hps = [hp.output(t, weather, local).power_w for hp in self.heatpumps.values()]
        return grid_balance_w(self.load.power_w(t, local), hps, pv)

    def _inputs(self, t: float) -> tuple[Weather, SunPosition, LocalTime]:
        site = self.site
        return self.weather.at(t), sun_position(t, site.latitude, site.longitude), local_time(t, self.tz)
