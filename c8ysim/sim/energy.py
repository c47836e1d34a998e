"""Energy registers (kWh): integrate a device's power flows over (t - dt, t].

Owns the rule that registers never decrease. A device meters one or more non-negative
power flows, one per register (W): its import (A+) and export (A-), and the heat pump also
the heat it delivers; `integrate_kwh` turns them into kWh per register. Ticks up to
SUBSTEP_S use the flows at t times dt (the reading's own values, no extra work). A longer
dt - fast-forward after downtime - is integrated on at most MAX_SUBSTEPS sub-steps, so a
day offline accumulates the day's real energy, not 24 h of the current power. Each
sub-step is sampled at a golden-ratio (low-discrepancy) position inside it rather than at
its midpoint: sub-minute periodic patterns (an oven thermostat's 2-minute cycle) would
otherwise alias; over a day this stays within ~0.5 % of a 1 s integration. dt <= 0 (wall
clock went back), NaN or infinity integrate nothing.

Both the device and `c8ysim backfill` step on the device's interval grid, so the energy
between two grid times is the same sum of the same steps in either: a backfill can count a
register back from the device's state exactly.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

SUBSTEP_S = 60.0
MAX_SUBSTEPS = 1440
JOULES_PER_KWH = 3.6e6
REGISTERS = ("A+", "A-")
GOLDEN_FRACTION = (math.sqrt(5.0) - 1.0) / 2.0


def integrate_kwh(flows_w: Callable[[float], Sequence[float]], t: float, dt: float,
                  flows_at_t_w: Sequence[float]) -> tuple[float, ...]:
    """kWh of each flow over (t - dt, t]; `flows_w(t)` gives the flows (W) at any t,
    `flows_at_t_w` those at t itself. Negative or non-finite samples count as 0."""
    channels = range(len(flows_at_t_w))
    if not (dt > 0.0 and math.isfinite(dt) and math.isfinite(t)):
        return tuple(0.0 for _ in channels)
    if dt <= SUBSTEP_S:
        samples, width = [flows_at_t_w], dt
    else:
        n = min(math.ceil(dt / SUBSTEP_S), MAX_SUBSTEPS)
        width = dt / n
        samples = [flows_w(t - dt + (i + (i * GOLDEN_FRACTION) % 1.0) * width) for i in range(n)]
    return tuple(sum(_positive(sample[c]) for sample in samples) * width / JOULES_PER_KWH
                 for c in channels)


def _positive(watts: float) -> float:
    return watts if watts > 0.0 and math.isfinite(watts) else 0.0


def read_registers(state: Mapping, names: Sequence[str] = REGISTERS) -> dict[str, float]:
    """The registers of a persisted state; missing, negative or garbage values read as 0."""
    stored = state.get("registers") if isinstance(state, Mapping) else None
    stored = stored if isinstance(stored, Mapping) else {}
    return {name: _kwh(stored.get(name)) for name in names}


def _kwh(value: object) -> float:
    try:
        kwh = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return kwh if math.isfinite(kwh) and kwh > 0.0 else 0.0


def advance(registers: Mapping[str, float], increments_kwh: Sequence[float]) -> dict[str, float]:
    """`registers` (in their order) each advanced by its increment (never by less than 0)."""
    return {name: kwh + max(0.0, step) for (name, kwh), step in zip(registers.items(), increments_kwh)}
