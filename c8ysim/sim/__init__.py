"""Pure device models: what each simulated device measures at a given time.

The public surface of the simulation, used by the device child and the config loader:
the value types (`Site`, `DeviceSpec`, `Series`, `Alarm`, `Event`, `Reading`), the
parameter catalogue (`PARAMS`, `HOUSEHOLD_PARAMS`) and `build_model()`.

Rules for everything under `c8ysim/sim/`: no clock reads, no I/O, no global `random`, no
imports from the rest of the agent. A model is a pure function of time:
`step(state, t, dt) -> (state, reading)`; its noise is seeded from
(site seed, device, time bucket) so any process can recompute any device at any time.

Modules: noise (counter-based randomness), clock (local and solar time), sun (NOAA),
weather (temperature, clouds, wind), voltage (shared grid voltage), pv, heatpump,
h0 + load (household consumption), household (one instant of the whole site and the
grid balance), energy (registers), alarms, devices (Readings and the Model classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

KINDS = ("pv", "heatpump", "grid")

# Tunable parameters per device kind, with defaults. The YAML may set any of these under
# the device's own `<kind>:` mapping; config validation rejects other names.
PARAMS: Mapping[str, Mapping[str, float]] = {
    "pv": {"peak_kw": 5.0, "tilt_deg": 30.0, "azimuth_deg": 180.0, "inverter_kw": 4.6},
    "heatpump": {"rated_kw": 3.0, "building_kwh_per_year": 12000.0},
    "grid": {},
}
HOUSEHOLD_PARAMS: Mapping[str, float] = {"kwh_per_year": 4000.0}


@dataclass(frozen=True)
class DeviceSpec:
    """One configured device as the models see it: kind, name and its parameters."""

    kind: str
    name: str
    params: tuple[tuple[str, float], ...] = ()

    def param(self, key: str) -> float:
        return dict(self.params).get(key, PARAMS[self.kind][key])


@dataclass(frozen=True)
class Site:
    """The household every device belongs to: place, seed, load and all its devices."""

    latitude: float
    longitude: float
    timezone: str
    seed: int
    household: tuple[tuple[str, float], ...] = ()
    devices: tuple[DeviceSpec, ...] = ()

    def household_param(self, key: str) -> float:
        return dict(self.household).get(key, HOUSEHOLD_PARAMS[key])

    def device(self, name: str) -> DeviceSpec:
        for spec in self.devices:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True)
class Series:
    """One measured value in Cumulocity terms: fragment, series, value, unit."""

    fragment: str
    series: str
    value: float
    unit: str


@dataclass(frozen=True)
class Alarm:
    """An alarm condition; `severity` is CRITICAL, MAJOR, MINOR or WARNING."""

    type: str
    severity: str
    text: str


@dataclass(frozen=True)
class Event:
    type: str
    text: str


@dataclass(frozen=True)
class Reading:
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


class Model(Protocol):
    def initial_state(self) -> dict:
        """A fresh, JSON-serialisable state (energy registers at zero, no alarms)."""

    def step(self, state: dict, t: float, dt: float) -> tuple[dict, Reading]:
        """Advance from `t - dt` to `t`; returns the new state and the reading at `t`."""


def build_model(site: Site, device_name: str) -> Model:
    """The model of the named device of `site` (KeyError: no such device; ValueError: kind)."""
    from c8ysim.sim import devices

    return devices.build(site, device_name)


__all__ = [
    "KINDS", "PARAMS", "HOUSEHOLD_PARAMS", "DeviceSpec", "Site", "Series", "Alarm", "Event",
    "Reading", "Model", "build_model",
]
