"""Placeholder model: the seed's uniform ranges (V, A, P = V x I), seeded per time bucket.

Kept only until the household model replaces it.
"""

from __future__ import annotations

import random

from agent.sim import DeviceSpec, Reading, Series, Site

RANGES = {  # kind: (volts low, volts high, amps low, amps high)
    "pv": (200.0, 250.0, 5.0, 15.0),
    "heatpump": (220.0, 240.0, 8.0, 20.0),
    "grid": (230.0, 240.0, 10.0, 50.0),
}


class RangeModel:
    def __init__(self, site: Site, spec: DeviceSpec):
        self.site, self.spec = site, spec

    def initial_state(self) -> dict:
        return {"energy_kwh": 0.0}

    def step(self, state: dict, t: float, dt: float) -> tuple[dict, Reading]:
        rng = random.Random(f"{self.site.seed}/{self.spec.name}/{int(t)}")
        v_lo, v_hi, a_lo, a_hi = RANGES[self.spec.kind]
        volts, amps = rng.uniform(v_lo, v_hi), rng.uniform(a_lo, a_hi)
        watts = volts * amps
        energy = state["energy_kwh"] + watts * dt / 3_600_000
        series = (
            Series("c8y_VoltageMeasurement", "voltage", round(volts, 2), "V"),
            Series("c8y_CurrentMeasurement", "current", round(amps, 3), "A"),
            Series("c8y_SinglePhaseEnergyMeasurement", "P+", round(watts, 1), "W"),
            Series("c8y_SinglePhaseEnergyMeasurement", "A+", round(energy, 4), "kWh"),
        )
        return {"energy_kwh": energy}, Reading(t, f"c8ysim_{self.spec.kind}", series)
