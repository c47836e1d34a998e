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
  shortens by the change. The scenarios that can matter are sorted out once per quarter
  hour, so a site with a hundred old windows costs next to nothing per step.
- `Faults`: the faults holding at one instant, as the household and the device models
  need them (`NO_FAULTS` for a site without any: one identity check per step).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from c8ysim.kinds import KINDS
from c8ysim.sim.clock import local_time, zone
from c8ysim.site import COMMS_LOSS, DAY_S, FAULT, WEATHER, WEATHER_KINDS, Scenario, Site

INVERTER_TRIP, COMPRESSOR_FAULT, OUTAGE = "inverter_trip", "compressor_fault", "outage"
SLOT_S = 900.0  # the scenarios that may matter are sorted out once per quarter hour of t
MARGIN_S = 1.0  # that test errs on the side of checking a scenario at t


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
    """The windows of `scenarios` near any t (see the module docstring).

    Per SLOT_S of t it keeps the scenarios that can have a window (plus memory) meeting the
    slot, and the site's UTC offset if it is the same at both ends of the slot (zones change
    their offset months apart); a step then checks only those, usually none. The test is
    conservative (a second's margin), so the windows found are exactly `Scenario.window`'s
    and `Scenario.last_end`'s, with the offset at t."""

    def __init__(self, scenarios: Sequence[Scenario], memory_s: float, timezone: str):
        self.memory_s = memory_s
        self._once = sorted((s for s in scenarios if s.start is not None), key=lambda s: s.start)
        self._daily = tuple(s for s in scenarios if s.start is None)
        self._tz = zone(timezone)
        # (slot, one-off scenarios, daily ones, the slot's UTC offset or None)
        self._slot: tuple = (None, (), (), None)
        self._last: tuple[float | None, tuple[Window, ...]] = (None, ())

    def near(self, t: float) -> tuple[Window, ...]:
        """The windows holding t or ended in (t - memory_s, t], by start (then site order).
        Remembered for the t at hand (a device asks several times per step)."""
        if self._last[0] == t:
            return self._last[1]
        slot = math.floor(t / SLOT_S) if math.isfinite(t) else None
        if slot is None or self._slot[0] != slot:
            self._slot = self._scan(slot, t)
        _, once, daily, offset = self._slot
        found = [Window(s, s.start, s.start + s.duration_s) for s in once
                 if s.start <= t < s.start + s.duration_s + self.memory_s]
        if daily:
            if offset is None:
                offset = local_time(t, self._tz).utc_offset_s
            for s in daily:
                window = s.window(t, offset)
                if window is not None:
                    found.append(Window(s, *window))
                    continue
                end = s.last_end(t, offset) if self.memory_s > 0.0 else None
                if end is not None and t - end < self.memory_s:
                    found.append(Window(s, end - s.duration_s, end))
            found.sort(key=lambda w: w.start)
        self._last = (t, tuple(found))
        return self._last[1]

    def _scan(self, slot: int | None, t: float) -> tuple:
        """(slot, the one-off and daily scenarios that may meet it, its UTC offset or None)."""
        if slot is None:  # t is not finite: check everything at t itself
            return (None, tuple(self._once), self._daily, None)
        low, high = slot * SLOT_S, (slot + 1) * SLOT_S
        once = tuple(s for s in self._once if s.start < high and s.start + s.duration_s + self.memory_s > low)
        if not self._daily:
            return (slot, once, (), None)
        # `local_time` rounds t to microseconds, so a t just below `high` may read as `high`
        first = local_time(low, self._tz).utc_offset_s
        offset = first if local_time(high, self._tz).utc_offset_s == first else None
        if offset is None:  # the offset changes inside the slot: every daily one, at t's offset
            return (slot, once, self._daily, None)
        lo, hi = low + offset - MARGIN_S, high + offset + MARGIN_S  # local seconds
        daily = []
        for s in self._daily:  # its windows begin at daily_at_s + k days, local seconds
            reach = s.duration_s + self.memory_s + 2.0 * MARGIN_S
            k = math.floor((hi - s.daily_at_s) / DAY_S)
            while s.daily_at_s + k * DAY_S + reach > lo:
                if s.daily_at_s + k * DAY_S < hi:
                    daily.append(s)
                    break
                k -= 1
        return (slot, once, tuple(daily), offset)


class SiteFaults:
    """The faults of one site at any t (`at`)."""

    def __init__(self, site: Site):
        faults = [s for s in honoured(site) if s.what == FAULT]
        self._windows = Windows(faults, 0.0, site.timezone) if faults else None

    @property
    def none(self) -> bool:
        """Whether the site has no fault scenario at all (then `at` is always NO_FAULTS)."""
        return self._windows is None

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
