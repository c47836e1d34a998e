"""The household as configured: its place, seed, load parameters and devices.

Plain frozen values, built by the config loader and computed by the models (`c8ysim.sim`);
the parameter defaults come from the device-type registry (`c8ysim.kinds`). A leaf module:
it imports nothing from c8ysim but that registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from c8ysim.kinds import HOUSEHOLD_PARAMS, KINDS


@dataclass(frozen=True)
class DeviceSpec:
    """One configured device as the models see it: kind, name and its parameters."""

    kind: str
    name: str
    params: tuple[tuple[str, float], ...] = ()

    def param(self, key: str) -> float:
        return dict(self.params).get(key, KINDS[self.kind].params[key])


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
