"""The house connection's three phases: where each load and device sits, and what the meter sees.

Owns the phase model. A European house connection has three phases (L1, L2, L3, 230 V each
to neutral); single-phase loads and devices sit on one of them, three-phase ones spread
their power evenly over all three:

- House load: the base load (lights, fridge, standby, sockets) is spread over L1/L2/L3 in the
  shares BASE_SHARES, each share wandering by about +/-BASE_SHARE_SD (value noise with
  15-minute knots) and renormalised, so the three phases always add up to the whole load;
  each appliance sits on one phase (APPLIANCE_PHASES: kettle L1, oven L2, washer L3).
- PV inverter: single-phase on its `phase` (1-3) up to `three_phase_above_kw` of inverter
  rating (default 4.6 kW: VDE-AR-N 4105 allows at most 4.6 kVA on one phase), balanced
  three-phase above it.
- Heat pump: `phases: 3` (default: a balanced three-phase compressor) or 1 (on `phase`).
- Grid meter: each phase's net power P_n = load_n + heat pumps_n - PV_n (+ import). The meter
  does not net across phases: P+ is the sum of the importing phases, P- the sum of the
  exporting ones (`meter_flows`), so P+ - P- is the net grid power and a sunny noon can
  import on L2 while it exports on L1; the A+/A- registers integrate P+ and P-.

`exact_parts` rounds phase values so that they add up exactly to their rounded total.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from c8ysim.sim import DeviceSpec, Site
from c8ysim.sim.noise import clamp, stream_key, value_noise

PHASES = 3
BASE_SHARES = (0.40, 0.35, 0.25)  # L1 carries the kitchen and most sockets
BASE_SHARE_SD, BASE_SHARE_PERIOD_S = 0.25, 900.0
BASE_SHARE_MIN_FACTOR = 0.3  # a phase's share never falls below 30 % of its mean
APPLIANCE_PHASES = {"kettle": 0, "oven": 1, "washer": 2}
PV_SINGLE_PHASE_LIMIT_KW = 4.6  # the kind's default of three_phase_above_kw

Triple = tuple[float, float, float]


class Placement(NamedTuple):
    """How a device is connected: on all three phases (balanced) or on one (index 0-2)."""

    three_phase: bool
    phase: int = 0

    def spread(self, watts: float) -> Triple:
        """`watts` as the three phases carry it."""
        if self.three_phase:
            third = watts / 3.0
            return (third, third, third)
        return tuple(watts if n == self.phase else 0.0 for n in range(PHASES))  # type: ignore[return-value]

    @property
    def phases(self) -> tuple[int, ...]:
        return tuple(range(PHASES)) if self.three_phase else (self.phase,)


def _phase_index(value: float) -> int:
    """A configured phase number 1-3 (anything else rounds into that range) as 0-2."""
    return int(round(clamp(value, 1.0, 3.0))) - 1 if math.isfinite(value) else 0


def placement(spec: DeviceSpec) -> Placement:
    """Where the device sits; the grid meter measures all three phases."""
    if spec.kind == "pv":
        inverter_kw = spec.param("inverter_kw")
        three = inverter_kw > spec.param("three_phase_above_kw")
        return Placement(three, _phase_index(spec.param("phase")))
    if spec.kind == "heatpump":
        return Placement(spec.param("phases") >= 2.0, _phase_index(spec.param("phase")))
    return Placement(True)


class LoadSplit:
    """The house load over the three phases."""

    def __init__(self, site: Site, appliances: Sequence[str]):
        self._keys = tuple(stream_key(site.seed, f"phases/base-share/L{n + 1}") for n in range(PHASES))
        self._appliance_phases = tuple(APPLIANCE_PHASES.get(name, 0) for name in appliances)

    def split(self, t: float, base_w: float, appliance_w: Sequence[float]) -> Triple:
        weights = [share * max(BASE_SHARE_MIN_FACTOR,
                               1.0 + BASE_SHARE_SD * value_noise(key, t, BASE_SHARE_PERIOD_S))
                   for share, key in zip(BASE_SHARES, self._keys)]
        total = weights[0] + weights[1] + weights[2]
        phases = [base_w * w / total for w in weights]
        for phase, watts in zip(self._appliance_phases, appliance_w):
            phases[phase] += watts
        return (phases[0], phases[1], phases[2])


def meter_flows(phase_w: Sequence[float]) -> tuple[float, float]:
    """(P+, P-) of a meter that does not net across phases: the importing phases' sum, the
    exporting phases' sum (both >= 0)."""
    imported = exported = 0.0
    for watts in phase_w:
        if watts > 0.0:
            imported += watts
        elif watts < 0.0:
            exported -= watts
    return imported, exported


def exact_parts(parts: Sequence[float], digits: int) -> tuple[float, tuple[float, ...]]:
    """(total, parts) of non-negative values rounded to `digits` decimals so that the rounded
    parts add up exactly (in units of 10**-digits) to the correctly rounded total: the
    largest-remainder method. Negative or non-finite parts count as 0."""
    scale = 10.0 ** digits
    units = [p * scale if p > 0.0 and p != math.inf else 0.0 for p in parts]
    total = round(sum(units))
    floors = [math.floor(u) for u in units]
    extra = total - sum(floors)
    if extra > 0:  # hand the missing units to the largest remainders
        order = sorted(range(len(units)), key=lambda i: floors[i] - units[i])
        for i in order[:extra]:
            floors[i] += 1
    return total / scale, tuple([f / scale for f in floors])
