"""Pure device models: what each simulated device measures at a given time.

The public surface of the simulation, used by the device child and `c8ysim backfill`:
the value types (`Site` and `DeviceSpec` from `c8ysim.site`; `Series`, `Alarm`, `Event`,
`Reading`) and `build_model()`, which builds the model the device-type registry
(`c8ysim.kinds`) names.

Rules for everything under `c8ysim/sim/`: no clock reads, no I/O, no global `random`, no
imports from the rest of the agent but the two leaf modules of plain data (`c8ysim.kinds`,
`c8ysim.site`). A model is a pure function of time:
`step(state, t, dt) -> (state, reading)`; its noise is seeded from
(site seed, device, time bucket) so any process can recompute any device at any time.

Modules: noise (counter-based randomness), clock (local and solar time), sun (NOAA),
scenarios (which fault and forced-weather windows of `Site.scenarios` hold t),
weather (temperature, clouds, wind; forced weather), voltage (the grid voltage of each
phase), pv, heatpump (with its faults and the catch-up after them), h0 + load (household
consumption), phases (where each load and device sits on the three phases, and the meter's
view of them), household (one instant of the whole site and the grid balance, in total and
per phase, with the faults; what one device depends on), energy (registers), alarms,
devices (Readings and the Model classes: fragments, series, units, fault alarms).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple, Protocol

from c8ysim.kinds import KINDS
from c8ysim.site import DeviceSpec, Site


class Series(NamedTuple):
    """One measured value in Cumulocity terms: fragment, series, value, unit."""

    fragment: str
    series: str
    value: float
    unit: str


class Alarm(NamedTuple):
    """An alarm condition; `severity` is CRITICAL, MAJOR, MINOR or WARNING."""

    type: str
    severity: str
    text: str


class Event(NamedTuple):
    """An event: its Cumulocity type and text."""

    type: str
    text: str


class Reading(NamedTuple):
    """What one device measured at `time` (epoch seconds, UTC), plus alarm transitions."""

    time: float
    type: str
    series: tuple[Series, ...]
    alarms_raised: tuple[Alarm, ...] = ()
    alarms_cleared: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()

    def value(self, fragment: str, series: str) -> float | None:
        for item in self.series:
            if item.fragment == fragment and item.series == series:
                return item.value
        return None

    def fragment(self, fragment: str) -> dict[str, float]:
        """{series: value} of one fragment (empty if the reading has none of it)."""
        return {item.series: item.value for item in self.series if item.fragment == fragment}

    def energy_fragment(self) -> str | None:
        """The name of the reading's sensor-library energy fragment (single- or three-phase)."""
        for item in self.series:
            if item.fragment.endswith("PhaseEnergyMeasurement"):
                return item.fragment
        return None


class Model(Protocol):
    def initial_state(self) -> dict:
        """A fresh, JSON-serialisable state (energy registers at zero, no alarms)."""

    def step(self, state: dict, t: float, dt: float) -> tuple[dict, Reading]:
        """Advance from `t - dt` to `t`; returns the new state and the reading at `t`."""


def build_model(site: Site, device_name: str) -> Model:
    """The model of the named device of `site`, the class its kind names in the registry
    (KeyError: no such device; ValueError: a kind the registry does not know)."""
    from c8ysim.sim.household import Household

    spec = site.device(device_name)
    kind = KINDS.get(spec.kind)
    if kind is None:
        raise ValueError(f"unknown device kind {spec.kind!r} for device {device_name!r}")
    module, _, name = kind.model.partition(":")
    return getattr(importlib.import_module(module), name)(Household(site), spec)


__all__ = [
    "DeviceSpec", "Site", "Series", "Alarm", "Event", "Reading", "Model", "build_model",
]
