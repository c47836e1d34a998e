"""The site as one system: every device's power and the grid balance at one instant.

Owns the composition. `Household(site).snapshot(t)` computes, from scratch and for that t
only, the shared weather, the sun, each PV system, each heat pump, the house load, the
grid power P_grid = load + sum(heat pumps) - sum(PV) (positive = import), the same balance
on each of the three phases (where each load and device sits: `phases`) and the voltage of
each phase (which falls with the phase's import and rises while it exports). Each device
process builds its own Household and gets bit-identical numbers, so the grid meter needs
no IPC.

A device model reads `view(name, t)`, which computes only what that device's readings
depend on (`scope`): its own output, and for the voltage of its phases the house load and
the power (power alone, not the full output) of every device on those phases. The grid
meter reports all three phases, so it depends on the whole site; a single-phase inverter
on L1 does not depend on a single-phase heat pump on L2 (the voltages and each phase's
balance are per phase, so the view's figures are the snapshot's bit for bit). The site's
sky (GHI split into beam and diffuse) is computed once per instant for all its arrays.

For the cheap sub-stepped integration of a device's energy registers, `pv_output`,
`heatpump_output` and `grid_phases_w` compute only what that one device needs.

Faults (`scenarios`; the household is one system, so every device and the grid meter see
every fault, in the snapshot, the views and the sub-steps alike): a tripped inverter
delivers 0 W (its string open: DC 0; the sun still shines on the modules), so the grid
imports what it did not deliver; a heat pump's compressor fault and its catch-up are the
heat pump's (`heatpump`); a grid outage takes the house load to 0, disconnects every
inverter (anti-islanding) and every heat pump, and the three phases have 0 V and 0 W. The
balance holds exactly with the faulted devices' real powers, in total and per phase.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

from c8ysim.sim import Site
from c8ysim.sim.clock import LocalTime, local_time, zone
from c8ysim.sim.heatpump import HeatPump, HpOutput
from c8ysim.sim.load import APPLIANCES, HouseholdLoad
from c8ysim.sim.phases import LoadSplit, Placement, Triple, placement
from c8ysim.sim.pv import PvArray, PvOutput, Sky, haurwitz_ghi, sky
from c8ysim.sim.scenarios import NO_FAULTS, Faults, SiteFaults
from c8ysim.sim.sun import SunPosition, sun_position
from c8ysim.sim.voltage import GridVoltage
from c8ysim.sim.weather import Weather, WeatherModel


class Snapshot(NamedTuple):
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
    faults: Faults = NO_FAULTS  # the faults holding at t

    @property
    def voltage_v(self) -> float:
        """The mean of the three phase voltages."""
        v1, v2, v3 = self.phase_voltage_v
        return (v1 + v2 + v3) / 3.0


ZERO: Triple = (0.0, 0.0, 0.0)


def grid_balance_w(load_w: float, heatpump_w: list[float], pv_w: list[float]) -> float:
    """P_grid = load + sum(heat pumps) - sum(PV), in site.devices order (bit-reproducible)."""
    return load_w + sum(heatpump_w) - sum(pv_w)


class View(NamedTuple):
    """What one device reports at t: its own output, the voltages of its phases (in its
    placement's order) and, for the grid meter, the grid power of each phase."""

    t: float
    weather: Weather
    pv: PvOutput | None  # a PV inverter's own output
    heatpump: HpOutput | None  # a heat pump's own output
    volts: tuple[float, ...]
    grid_phase_w: Triple | None  # the grid meter's three phases (+ import)
    faults: Faults  # the faults holding at t


class Scope(NamedTuple):
    """What a device's readings depend on: the phases it reports (its own, or all three for
    the grid meter) and the devices whose power flows on any of them, in site order."""

    name: str
    phases: tuple[int, ...]
    arrays: tuple[tuple[str, PvArray], ...]
    pumps: tuple[tuple[str, HeatPump], ...]
    pv_places: tuple[Placement, ...]
    hp_places: tuple[Placement, ...]


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
        self.faults = SiteFaults(site)
        self._no_faults = self.faults.none
        self._scopes: dict[str, Scope] = {}
        self._last: Snapshot | None = None

    def snapshot(self, t: float) -> Snapshot:
        """The whole site at t, every device's full output (tools, tests; the device models
        use `view`)."""
        if self._last is not None and self._last.t == t:
            return self._last
        weather, sun, local = self._inputs(t)
        faults = self.faults.at(t)
        light = sky(haurwitz_ghi(sun.cos_zenith) * weather.clear_index, sun)
        pv = {name: self._pv_output(name, array, light, weather, faults) for name, array in self.pv.items()}
        hps = {name: hp.output(t, weather, local) for name, hp in self.heatpumps.items()}
        hp_w, pv_w = [h.power_w for h in hps.values()], [p.ac_w for p in pv.values()]
        if faults.outage:
            load, phase_load = 0.0, ZERO
            phase_grid = volts = ZERO
        else:
            base, appliances = self.load.components_w(t, local)
            load = base + sum(appliances)
            phase_load = self.load_split.split(t, base, appliances)
            phase_grid = self._phase_balance(phase_load, hp_w, pv_w)
            volts = self.voltage.phases_v(t, phase_grid)
        grid = grid_balance_w(load, hp_w, pv_w)
        excursion = not faults.outage and self.voltage.excursion_v(t) is not None
        self._last = Snapshot(t, weather, sun, local, pv, hps, load, grid, phase_load, phase_grid,
                              volts, excursion, faults)
        return self._last

    def scope(self, name: str) -> Scope:
        """What device `name` depends on (KeyError: no such device)."""
        found = self._scopes.get(name)
        if found is None:
            phases = self.placement[name].phases
            touches = lambda other: any(n in phases for n in self.placement[other].phases)  # noqa: E731
            arrays = tuple((n, a) for n, a in self.pv.items() if touches(n))
            pumps = tuple((n, h) for n, h in self.heatpumps.items() if touches(n))
            found = self._scopes[name] = Scope(
                name, phases, arrays, pumps, tuple(self.placement[n] for n, _ in arrays),
                tuple(self.placement[n] for n, _ in pumps))
        return found

    def view(self, name: str, t: float) -> View:
        """What device `name` reports at t, computing only what it depends on (`scope`): the
        weather, its own output and, for the voltages of its phases, the house load and the
        power of every device on those phases. A voltage is the same bit for bit as the
        snapshot's: a phase's sum only ever adds the devices on that phase, in site order."""
        scope = self.scope(name)
        weather, local = self.weather.at(t), local_time(t, self.tz)
        faults = NO_FAULTS if self._no_faults else self.faults.at(t)
        own_pv = own_hp = None
        hp_w = []
        for other, pump in scope.pumps:
            if other == name:
                own_hp = pump.output(t, weather, local)
                hp_w.append(own_hp.power_w)
            else:
                hp_w.append(pump.power_w(t, weather, local))
        pv_w = []
        if scope.arrays:
            sun = sun_position(t, self.site.latitude, self.site.longitude)
            light = sky(haurwitz_ghi(sun.cos_zenith) * weather.clear_index, sun)
            for other, array in scope.arrays:
                if other == name:
                    own_pv = array.output_in(light, weather)
                    if faults is not NO_FAULTS:
                        own_pv = self._pv_output(name, array, light, weather, faults)
                    pv_w.append(own_pv.ac_w)
                elif faults is NO_FAULTS:
                    pv_w.append(array.ac_w_in(light, weather))
                else:
                    pv_w.append(self._pv_w(other, array, light, weather, faults))
        phases = scope.phases
        if faults.outage:
            return View(t, weather, own_pv, own_hp, (0.0,) * len(phases),
                        ZERO if len(phases) == 3 else None, faults)
        base, appliances = self.load.components_w(t, local)
        phase_grid = self._phase_balance(self.load_split.split(t, base, appliances), hp_w, pv_w,
                                         scope.hp_places, scope.pv_places)
        if len(phases) == 3:
            return View(t, weather, own_pv, own_hp, self.voltage.phases_v(t, phase_grid), phase_grid, faults)
        watts = tuple(phase_grid[n] for n in phases)
        return View(t, weather, own_pv, own_hp, self.voltage.some_phases_v(t, phases, watts), None, faults)

    def pv_output(self, name: str, t: float) -> PvOutput:
        site = self.site
        weather, sun = self.weather.at(t), sun_position(t, site.latitude, site.longitude)
        light = sky(haurwitz_ghi(sun.cos_zenith) * weather.clear_index, sun)
        return self._pv_output(name, self.pv[name], light, weather, self.faults.at(t))

    def heatpump_output(self, name: str, t: float) -> HpOutput:
        return self.heatpumps[name].output(t, self.weather.at(t), local_time(t, self.tz))

    def grid_w(self, t: float) -> float:
        """P_grid at t, as the snapshot has it."""
        local, faults, hps, pv = self._powers(t)
        return grid_balance_w(0.0 if faults.outage else self.load.power_w(t, local), hps, pv)

    def grid_phases_w(self, t: float) -> Triple:
        """The grid power on L1, L2, L3 at t (+ import), as the snapshot has it."""
        local, faults, hps, pv = self._powers(t)
        if faults.outage:
            return ZERO
        base, appliances = self.load.components_w(t, local)
        return self._phase_balance(self.load_split.split(t, base, appliances), hps, pv)

    def _powers(self, t: float) -> tuple[LocalTime, Faults, list[float], list[float]]:
        """(local time, faults, each heat pump's power, each array's) at t, powers alone."""
        weather, sun, local = self._inputs(t)
        faults = self.faults.at(t)
        light = sky(haurwitz_ghi(sun.cos_zenith) * weather.clear_index, sun)
        pv = [self._pv_w(name, array, light, weather, faults) for name, array in self.pv.items()]
        return local, faults, [hp.power_w(t, weather, local) for hp in self.heatpumps.values()], pv

    @staticmethod
    def _pv_output(name: str, array: PvArray, light: Sky | None, weather: Weather,
                   faults: Faults) -> PvOutput:
        """An array's output; a tripped inverter (or one disconnected by an outage: anti-
        islanding) delivers nothing, its string open: the sun still shines on the modules."""
        out = array.output_in(light, weather)
        if faults is not NO_FAULTS and (faults.outage or name in faults.tripped):
            return PvOutput(0.0, 0.0, 0.0, out.poa_w_m2, out.cell_temp_c)
        return out

    @staticmethod
    def _pv_w(name: str, array: PvArray, light: Sky | None, weather: Weather, faults: Faults) -> float:
        if faults is not NO_FAULTS and (faults.outage or name in faults.tripped):
            return 0.0
        return array.ac_w_in(light, weather)

    def _phase_balance(self, phase_load: Triple, hp_w: Sequence[float], pv_w: Sequence[float],
                       hp_places: Sequence[Placement] | None = None,
                       pv_places: Sequence[Placement] | None = None) -> Triple:
        """load + heat pumps - PV on each phase; `hp_w`, `pv_w` in self.heatpumps/self.pv order
        (or in the order of `hp_places`, `pv_places`)."""
        l1, l2, l3 = phase_load
        for sign, powers, places in ((1.0, hp_w, self._hp_places if hp_places is None else hp_places),
                                     (-1.0, pv_w, self._pv_places if pv_places is None else pv_places)):
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
