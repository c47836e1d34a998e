"""Scenarios as the models read them: which windows hold t, or ended shortly before it.

Owns the lookup of `Site.scenarios` (`c8ysim.site.Scenario`: a fault or forced weather,
once or daily) for the models; what a window *does* is the business of the model it
concerns (household: trips and outages, heatpump: compressor faults and the catch-up
after them, weather: forced day types). A pure function of (site, t) like the rest:

- `honoured(site)`: the scenarios the models act on. A weather window names one of
  `WEATHER_KINDS`; a fault names a device of the site and a fault its kind lists
  (`Kind.faults`). `comms_loss` is the uplink's (its device buffers), not the model's, and
  is left out, as is anything without a window (no start nor daily time, a duration that
  is not a positive finite number).
- `Windows`: the windows of some scenarios that hold t or ended at most `memory_s` before
  t (a heat pump catching up after a fault, the air temperature relaxing after forced
  clouds). A daily window is found with the site's UTC offset at t (`clock.local_time`),
  as `Scenario.window` defines it: across a DST change a daily window lengthens or
  shortens by the change. One-off windows are kept sorted and filtered per hour, so a
  site with a hundred old windows costs a handful of comparisons per step.
- `Faults`: the faults holding at one instant, as the household and the device models
  need them (`NO_FAULTS` for a site without any: one identity check per step).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from c8ysim.kinds import KINDS
from c8ysim.sim.clock import local_time, zone
from c8ysim.site import COMMS_LOSS, FAULT, WEATHER, WEATHER_KINDS, Scenario, Site

INVERTER_TRIP, COMPRESSOR_FAULT, OUTAGE = "inverter_trip", "compressor_fault", "outage"
SLOT_S = 3600.0  # one-off windows are filtered once per hour of t


class Faults(NamedTuple):
    """The faults holding at one instant."""

    outage: bool = False  # the grid is down: the whole house is without power
    tripped: frozenset[str] = frozenset()  # PV inverters whose inverter tripped
    broken: frozenset[str] = frozenset()  # heat pumps with a compressor fault


NO_FAULTS = Faults()


def honoured(site: Site) -> tuple[Scenario, ...]:
    """The scenarios of `site` the models act on, in site order."""
    kinds = {spec.name: spec.kind for spec in site.devices}
    found = []
    for scenario in site.scenarios:
        if not _has_window(scenario):
            continue
        if scenario.what == WEATHER and scenario.name in WEATHER_KINDS:
            found.append(scenario)
        elif (scenario.what == FAULT and scenario.name != COMMS_LOSS and scenario.device in kinds
              and scenario.name in KINDS[kinds[scenario.device]].faults):
            found.append(scenario)
    return tuple(found)


def _has_window(scenario: Scenario) -> bool:
    duration = scenario.duration_s
    if not (isinstance(duration, (int, float)) and 0.0 < duration < math.inf):
        return False
    anchor = scenario.start if scenario.start is not None else scenario.daily_at_s
    return isinstance(anchor, (int, float)) and math.isfinite(anchor)


class Window(NamedTuple):
    scenario: Scenario
    start: float
    end: float

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


class Windows:
    """The windows of `scenarios` near any t (see the module docstring)."""

    def __init__(self, scenarios: Sequence[Scenario], memory_s: float, timezone: str):
        self.memory_s = memory_s
        self._once = sorted((s for s in scenarios if s.start is not None), key=lambda s: s.start)
        self._daily = tuple(s for s in scenarios if s.start is None)
        self._tz = zone(timezone) if self._daily else None
        self._slot: tuple[int | None, tuple[Scenario, ...]] = (None, ())

    def near(self, t: float) -> list[Window]:
        """The windows holding t or ended in (t - memory_s, t], by start (then site order)."""
        found = [Window(s, s.start, s.start + s.duration_s) for s in self._slot_of(t)
                 if s.start <= t < s.start + s.duration_s + self.memory_s]
        if self._daily:
            offset = local_time(t, self._tz).utc_offset_s
            for s in self._daily:
                window = s.window(t, offset)
                if window is not None:
                    found.append(Window(s, *window))
                    continue
                end = s.last_end(t, offset) if self.memory_s > 0.0 else None
                if end is not None and t - end < self.memory_s:
                    found.append(Window(s, end - s.duration_s, end))
            found.sort(key=lambda w: w.start)
        return found

    def _slot_of(self, t: float) -> tuple[Scenario, ...]:
        """The one-off scenarios whose window (plus memory) meets t's hour."""
        slot = math.floor(t / SLOT_S) if math.isfinite(t) else None
        if slot is None or self._slot[0] != slot:
            low, high = (slot * SLOT_S, (slot + 1) * SLOT_S) if slot is not None else (t, t)
            near = tuple(s for s in self._once if s.start < high
                         and s.start + s.duration_s + self.memory_s > low)
            if slot is None:
                return near
            self._slot = (slot, near)
        return self._slot[1]


class SiteFaults:
    """The faults of one site at any t (`at`)."""

    def __init__(self, site: Site):
        faults = [s for s in honoured(site) if s.what == FAULT]
        self._windows = Windows(faults, 0.0, site.timezone) if faults else None

    def at(self, t: float) -> Faults:
        if self._windows is None:
            return NO_FAULTS
        holding = self._windows.near(t)
        if not holding:
            return NO_FAULTS
        outage, tripped, broken = False, set(), set()
        for window in holding:
            name, device = window.scenario.name, window.scenario.device
            if name == OUTAGE:
                outage = True
            elif name == INVERTER_TRIP:
                tripped.add(device)
            elif name == COMPRESSOR_FAULT:
                broken.add(device)
        return Faults(outage, frozenset(tripped), frozenset(broken))
