"""Energy registers (kWh): integrate a device's signed meter power over (t - dt, t].

Owns the rule that registers never decrease. A device's meter power is signed
(+ consumed: A+, - delivered: A-). Ticks up to SUBSTEP_S use the power at t times dt (the
reading's own value, no extra work). A longer dt - fast-forward after downtime - is
integrated on at most MAX_SUBSTEPS sub-steps, so a day offline accumulates the day's
real energy, not 24 h of the current power. Each sub-step is sampled at a golden-ratio
(low-discrepancy) position inside it rather than at its midpoint: sub-minute periodic
patterns (an oven thermostat's 2-minute cycle) would otherwise alias; over a day this
stays within ~0.5 % of a 1 s integration. dt <= 0 (wall clock went back), NaN or
infinity integrate nothing.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

SUBSTEP_S = 60.0
MAX_SUBSTEPS = 1440
JOULES_PER_KWH = 3.6e6
REGISTERS = ("A+", "A-")
GOLDEN_FRACTION = (math.sqrt(5.0) - 1.0) / 2.0


def integrate_kwh(power_w: Callable[[float], float], t: float, dt: float,
                  power_at_t_w: float) -> tuple[float, float]:
    """(kWh consumed, kWh delivered) over (t - dt, t]."""
    if not (dt > 0.0 and math.isfinite(dt) and math.isfinite(t)):
        return 0.0, 0.0
    if dt <= SUBSTEP_S:
        samples, width = [power_at_t_w], dt
    else:
        n = min(math.ceil(dt / SUBSTEP_S), MAX_SUBSTEPS)
        width = dt / n
        samples = [power_w(t - dt + (i + (i * GOLDEN_FRACTION) % 1.0) * width) for i in range(n)]
    consumed = sum(p for p in samples if p > 0.0) * width / JOULES_PER_KWH
    delivered = -sum(p for p in samples if p < 0.0) * width / JOULES_PER_KWH
    return consumed, delivered


def read_registers(state: Mapping) -> dict[str, float]:
    """The registers of a persisted state; missing, negative or garbage values read as 0."""
    stored = state.get("registers") if isinstance(state, Mapping) else None
    stored = stored if isinstance(stored, Mapping) else {}
    return {name: _kwh(stored.get(name)) for name in REGISTERS}


def _kwh(value: object) -> float:
    try:
        kwh = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return kwh if math.isfinite(kwh) and kwh > 0.0 else 0.0


def advance(registers: Mapping[str, float], consumed_kwh: float, delivered_kwh: float) -> dict[str, float]:
    return {"A+": registers["A+"] + max(0.0, consumed_kwh),
            "A-": registers["A-"] + max(0.0, delivered_kwh)}
