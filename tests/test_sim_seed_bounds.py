"""The original system's uniform ranges, kept as sanity bounds on the household model
(seed: PV 200-250 V / 5-15 A, heat pump 220-240 V / 8-20 A, grid 230-240 V / 10-50 A), on
every phase a device reports.

The model is not uniform, so only the outer limits apply: no device draws more current than
the seed's maximum for its kind, and voltages stay near the seed's band (the grid voltage is
one shared random walk inside EN 50160's 230 V +/- 10 %)."""

from __future__ import annotations

import random

from c8ysim import config, sim
from conftest import REPO

MAX_CURRENT_A = {"heatpump": 20.0, "grid": 50.0}
VOLTAGE_BAND_V = (207.0, 253.0)  # EN 50160; leaving it raises c8ysim_VoltageAlarm
HARD_VOLTAGE_V = (195.0, 265.0)  # not even an excursion goes past this


def test_seed_ranges_bound_a_sampled_year():
    cfg = config.load(str(REPO / "etc" / "c8ysim.yaml"))
    rng = random.Random(3)
    start = 1_735_689_600.0  # 2025-01-01
    times = sorted(start + rng.uniform(0, 365 * 86400) for _ in range(3000))
    for device in cfg.devices:
        model = sim.build_model(cfg.site, device.name)
        state, outside = model.initial_state(), 0
        limit = MAX_CURRENT_A.get(device.type) or device_limit_a(cfg, device)
        for t in times:
            state, reading = model.step(state, t, 0.0)
            volts = reading.fragment("c8y_VoltageMeasurement").values()  # one or three phases
            amps = reading.fragment("c8y_CurrentMeasurement").values()
            outside += not all(VOLTAGE_BAND_V[0] <= v <= VOLTAGE_BAND_V[1] for v in volts)
            assert all(HARD_VOLTAGE_V[0] <= v <= HARD_VOLTAGE_V[1] for v in volts), (device.name, t)
            assert amps and all(0.0 <= a <= limit for a in amps), (device.name, t, amps)
        assert outside <= len(times) // 100, (device.name, outside)  # rare excursions only


def device_limit_a(cfg, device) -> float:
    """PV: the inverter's rating at the lowest voltage of the band."""
    spec = cfg.site.device(device.name)
    return spec.param("inverter_kw") * 1000 / VOLTAGE_BAND_V[0]
