"""The household as configured: its place, seed, load parameters, devices and scenarios.

Plain frozen values, built by the config loader and computed by the models (`c8ysim.sim`);
the parameter defaults come from the device-type registry (`c8ysim.kinds`). A leaf module:
it imports nothing from c8ysim but that registry.

A `Scenario` is a window of time in which the site is not as its weather and devices would
have it: a fault on one device (a name its kind lists in `Kind.faults`, or `COMMS_LOSS`,
which every device has: its uplink is down) or the weather forced for the whole site. It
comes from the YAML's `scenarios:` (daily at a local time, or once, some time after the
agent loaded it) or from a `c8y_Command` (once, from now). The models read the windows
through `Site.scenarios`; which window holds t is a pure function of t.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from c8ysim.kinds import HOUSEHOLD_PARAMS, KINDS


class DeviceSpec(NamedTuple):
    """One configured device as the models see it: kind, name and its parameters."""

    kind: str
    name: str
    params: tuple[tuple[str, float], ...] = ()

    def param(self, key: str) -> float:
        return dict(self.params).get(key, KINDS[self.kind].params[key])


FAULT, WEATHER = "fault", "weather"
COMMS_LOSS = "comms_loss"  # every device's fault: its uplink is down, it buffers
WEATHER_KINDS = ("clear", "cloudy", "overcast")  # what `weather` may force
DAY_S = 86400.0


class Scenario(NamedTuple):
    """One fault or forced weather, once (`start`, epoch s) or daily (`daily_at_s`, seconds
    after local midnight). `after_s` is a YAML entry's delay before the supervisor anchors it
    (sets `start`); an entry with neither `start` nor `daily_at_s` has no window yet."""

    what: str  # FAULT or WEATHER
    name: str  # the fault, or one of WEATHER_KINDS
    device: str = ""  # the faulty device ("" for the weather: it is the site's)
    duration_s: float = 0.0
    start: float | None = None
    daily_at_s: float | None = None
    after_s: float | None = None

    def window(self, t: float, utc_offset_s: float = 0.0) -> tuple[float, float] | None:
        """(start, end) of this scenario's window that holds t (start <= t < end), or None.
        `utc_offset_s`: the site's offset from UTC at t (for a daily scenario)."""
        for begin in self._starts_near(t, utc_offset_s):
            if begin <= t < begin + self.duration_s:
                return begin, begin + self.duration_s
        return None

    def last_end(self, t: float, utc_offset_s: float = 0.0) -> float | None:
        """The end of the latest window that ended at or before t (within a day for a daily
        scenario), or None."""
        ends = [begin + self.duration_s for begin in self._starts_near(t, utc_offset_s)
                if begin + self.duration_s <= t]
        return max(ends) if ends else None

    def _starts_near(self, t: float, utc_offset_s: float) -> tuple[float, ...]:
        if self.start is not None:
            return (self.start,)
        if self.daily_at_s is None:
            return ()
        midnight = math.floor((t + utc_offset_s) / DAY_S) * DAY_S - utc_offset_s
        return (midnight - DAY_S + self.daily_at_s, midnight + self.daily_at_s)

    def faults(self, device: str) -> bool:
        return self.what == FAULT and self.device == device


class Site(NamedTuple):
    """The household every device belongs to: place, seed, load and all its devices."""

    latitude: float
    longitude: float
    timezone: str
    seed: int
    household: tuple[tuple[str, float], ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    scenarios: tuple[Scenario, ...] = ()

    def household_param(self, key: str) -> float:
        return dict(self.household).get(key, HOUSEHOLD_PARAMS[key])

    def device(self, name: str) -> DeviceSpec:
        for spec in self.devices:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def active(self, t: float, utc_offset_s: float = 0.0) -> list[tuple[Scenario, float]]:
        """The scenarios whose window holds t, each with the end of that window."""
        found = []
        for scenario in self.scenarios:
            window = scenario.window(t, utc_offset_s)
            if window is not None:
                found.append((scenario, window[1]))
        return found


def anchor(scenarios: tuple[Scenario, ...], now: float,
           before: tuple[Scenario, ...] = ()) -> tuple[Scenario, ...]:
    """`scenarios` with each `after_s` entry's `start` set: the start the same entry has in
    `before` (the running configuration: a reload that keeps it does not move it), else
    now + after_s."""
    kept = [s for s in before if s.after_s is not None and s.start is not None]
    result = []
    for scenario in scenarios:
        if scenario.after_s is None:
            result.append(scenario)
            continue
        same = next((s for s in kept if s._replace(start=None) == scenario), None)
        if same is not None:
            kept.remove(same)
            result.append(same)
        else:
            result.append(scenario._replace(start=now + scenario.after_s))
    return tuple(result)
