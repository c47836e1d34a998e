"""The site as one system: every device's power and the grid balance at one instant.

Owns the composition. `Household(site).snapshot(t)` computes, from scratch and for that t
only, the shared weather, the sun, each PV system, each heat pump, the house load, the
grid power P_grid = load + sum(heat pumps) - sum(PV) (positive = import), the same balance
on each of the three phases (where each load and device sits: `phases`) and the voltage of
each phase (which falls with the phase's import and rises while it exports). Each device
process builds its own Household and gets bit-identical numbers, so the grid meter needs
no IPC.

For the cheap sub-stepped integration of a device's energy registers, `pv_output`,
`heatpump_output` and `grid_phases_w` compute only what that one device needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from c8ysim.sim import Site
from c8ysim.sim.clock import LocalTime, local_time, zone
from c8ysim.sim.heatpump import HeatPump, HpOutput
from c8ysim.sim.load import APPLIANCES, HouseholdLoad
from c8ysim.sim.phases import LoadSplit, Placement, Triple, placement
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
    phase_load_w: Triple  # the house load on L1, L2, L3 (adds up to load_w)
    grid_phase_w: Triple  # the grid power on L1, L2, L3, + import (adds up to grid_w)
    phase_voltage_v: Triple  # L1, L2, L3 to neutral
    excursion: bool

    @property
    def voltage_v(self) -> float:
        """The mean of the three phase voltages."""
        v1, v2, v3 = self.phase_voltage_v
        return (v1 + v2 + v3) / 3.0


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
        self.load_split = LoadSplit(site, [a.name for a in APPLIANCES])
        self.pv = {s.name: PvArray(s) for s in site.devices if s.kind == "pv"}
        self.heatpumps = {s.name: HeatPump(site, s, self.weather)
                          for s in site.devices if s.kind == "heatpump"}
        self.placement: dict[str, Placement] = {s.name: placement(s) for s in site.devices}
        self._hp_places = [self.placement[name] for name in self.heatpumps]
        self._pv_places = [self.placement[name] for name in self.pv]
        self._last: Snapshot | None = None

    def snapshot(self, t: float) -> Snapshot:
        if self._last is not None and self._last.t == t:
            return self._last
        weather, sun, local = self._inputs(t)
        pv = {name: array.output(sun, weather) for name, array in self.pv.items()}
        hps = {name: hp.output(t, weather, local) for name, hp in self.heatpumps.items()}
        base, appliances = self.load.components_w(t, local)
        load = base + sum(appliances)
        grid = grid_balance_w(load, [h.power_w for h in hps.values()], [p.ac_w for p in pv.values()])
        phase_load = self.load_split.split(t, base, appliances)
        phase_grid = self._phase_balance(phase_load, [h.power_w for h in hps.values()],
                                         [p.ac_w for p in pv.values()])
        excursion = self.voltage.excursion_v(t) is not None
        volts = self.voltage.phases_v(t, phase_grid)
        self._last = Snapshot(t, weather, sun, local, pv, hps, load, grid, phase_load, phase_grid,
                              volts, excursion)
        return self._last

    def pv_output(self, name: str, t: float) -> PvOutput:
        site = self.site
        return self.pv[name].output(sun_position(t, site.latitude, site.longitude), self.weather.at(t))

    def heatpump_output(self, name: str, t: float) -> HpOutput:
        return self.heatpumps[name].output(t, self.weather.at(t), local_time(t, self.tz))

    def grid_w(self, t: float) -> float:
        weather, sun, local = self._inputs(t)
        pv = [array.output(sun, weather).ac_w for array in self.pv.values()]
        hps = [hp.output(t, weather, local).power_w for hp in self.heatpumps.values()]
        return grid_balance_w(self.load.power_w(t, local), hps, pv)

    def grid_phases_w(self, t: float) -> Triple:
        """The grid power on L1, L2, L3 at t (+ import), as the snapshot has it."""
        weather, sun, local = self._inputs(t)
        pv = [array.output(sun, weather).ac_w for array in self.pv.values()]
        hps = [hp.output(t, weather, local).power_w for hp in self.heatpumps.values()]
        base, appliances = self.load.components_w(t, local)
        return self._phase_balance(self.load_split.split(t, base, appliances), hps, pv)

    def _phase_balance(self, phase_load: Triple, hp_w: list[float], pv_w: list[float]) -> Triple:
        """load + heat pumps - PV on each phase; `hp_w`, `pv_w` in self.heatpumps/self.pv order."""
        l1, l2, l3 = phase_load
        for sign, powers, places in ((1.0, hp_w, self._hp_places), (-1.0, pv_w, self._pv_places)):
            for watts, place in zip(powers, places):
                if place.three_phase:
                    third = sign * watts / 3.0
                    l1, l2, l3 = l1 + third, l2 + third, l3 + third
                elif place.phase == 0:
                    l1 += sign * watts
                elif place.phase == 1:
                    l2 += sign * watts
                else:
                    l3 += sign * watts
        return (l1, l2, l3)

    def _inputs(self, t: float) -> tuple[Weather, SunPosition, LocalTime]:
        site = self.site
        return self.weather.at(t), sun_position(t, site.latitude, site.longitude), local_time(t, self.tz)
