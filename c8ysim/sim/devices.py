"""Device models: turn a site snapshot into one device's Reading, state and alarms.

Owns the Cumulocity view of each device (fragments, series, rounding; Reading.type is the
kind's `c8y_type` in `c8ysim.kinds`, which also names these classes) and the `Model`
protocol implementation: `initial_state()` and `step(state, t, dt)`.

State (JSON-serialisable, persisted by the agent):
  {"registers": {"A+": kWh, "A-": kWh}, "alarms": [active alarm types]}, plus
  "clipped_at" (PV: last t the inverter clipped, or null) or "defrost" (heat pump: bool).
step never mutates its input, tolerates missing keys (a fresh or foreign state), dt = 0,
huge dt (sub-stepped fast-forward) and t going backwards (nothing is integrated).

Measurement mapping (sign convention: + into the device from the grid side, - out of it):
- PV inverter, c8ysim_PvInverter: AC output side. c8y_SinglePhaseEnergyMeasurement
  P- (W, generation delivered by the inverter) and A- (kWh generated); voltage = the
  shared grid voltage, current = P/V; c8ysim_PvInverter irradiance (plane of array, W/m2)
  and cellTemp (C). Alarm c8ysim_InverterClipping (WARNING) while the inverter clips; it
  clears after 15 minutes without clipping (else every cloud gap would raise a new one).
- Heat pump, c8ysim_HeatPump: electrical input P+ (W) and A+ (kWh), current = P/V;
  c8y_TemperatureMeasurement.T = outdoor temperature; c8ysim_HeatPump flowTemp (C),
  COP, heatPower (W) and defrost (0/1). A defrost start is an Event c8ysim_Defrost (not
  an alarm: defrosting is normal operation, nobody has to acknowledge it).
- Grid meter, c8ysim_GridMeter: c8y_ThreePhaseEnergyMeasurement totals P+ (import W),
  P- (export W; one of the two is 0), A+ (import kWh, OBIS 1.8.0), A- (export kWh,
  2.8.0); current = |P| / (V * 0.95), the single-phase-equivalent current.
Every device reports the shared voltage and raises c8ysim_VoltageAlarm (MAJOR) while it
is outside 230 V +/-10 %.
"""

from __future__ import annotations

import math

from c8ysim.kinds import KINDS
from c8ysim.sim import Alarm, DeviceSpec, Event, Reading, Series
from c8ysim.sim.alarms import (CLIPPING_ALARM, DEFROST_EVENT, MAJOR, VOLTAGE_ALARM, WARNING,
                              read_active, transition)
from c8ysim.sim.energy import advance, integrate_kwh, read_registers
from c8ysim.sim.household import Household, Snapshot
from c8ysim.sim.voltage import ALARM_HIGH_V, ALARM_LOW_V, outside_band

GRID_POWER_FACTOR = 0.95
CLIPPING_CLEAR_AFTER_S = 15 * 60.0  # one alarm per sunny spell, not one per cloud gap
VOLTAGE, CURRENT = "c8y_VoltageMeasurement", "c8y_CurrentMeasurement"
SINGLE_PHASE, THREE_PHASE = "c8y_SinglePhaseEnergyMeasurement", "c8y_ThreePhaseEnergyMeasurement"


def _nonneg(value: float, digits: int) -> float:
    return round(max(value, 0.0), digits) + 0.0  # + 0.0 turns -0.0 into 0.0


def electrical_series(volts: float, amps: float) -> list[Series]:
    return [Series(VOLTAGE, "voltage", round(volts, 1), "V"),
            Series(CURRENT, "current", _nonneg(amps, 3), "A")]


def power_series(fragment: str, name: str, watts: float) -> Series:
    return Series(fragment, name, _nonneg(watts, 1), "W")


def energy_series(fragment: str, name: str, kwh: float) -> Series:
    return Series(fragment, name, _nonneg(kwh, 4), "kWh")


def voltage_alarm(volts: float) -> Alarm | None:
    if not outside_band(volts):
        return None
    return Alarm(VOLTAGE_ALARM, MAJOR,
                 f"Grid voltage {volts:.1f} V outside {ALARM_LOW_V:.0f}-{ALARM_HIGH_V:.0f} V")


class DeviceModel:
    """Common step logic; subclasses say what the device measures."""

    def __init__(self, household: Household, spec: DeviceSpec):
        self.household, self.spec = household, spec
        self.reading_type = KINDS[spec.kind].c8y_type

    def initial_state(self) -> dict:
        return {"registers": {"A+": 0.0, "A-": 0.0}, "alarms": []}

    def meter_power_w(self, snap: Snapshot) -> float:
        raise NotImplementedError

    def step(self, state: dict, t: float, dt: float) -> tuple[dict, Reading]:
        snap = self.household.snapshot(t)
        consumed, delivered = integrate_kwh(self._power_at, t, dt, self.meter_power_w(snap))
        registers = advance(read_registers(state), consumed, delivered)
        before, extra = read_active(state), self.extra_state(snap, state)
        active, raised, cleared = transition(before, self.alarm_conditions(snap, before, extra))
        new_state = {"registers": registers, "alarms": active, **extra}
        reading = Reading(t, self.reading_type, tuple(self.series(snap, registers)),
                          raised, cleared, self.events(snap, state))
        return new_state, reading

    def _power_at(self, t: float) -> float:
        return self.household.meter_power_w(self.spec.name, t)

    def extra_state(self, snap: Snapshot, state: dict) -> dict:
        """Device-specific keys of the next state."""
        return {}

    def alarm_conditions(self, snap: Snapshot, before: set[str], extra: dict) -> dict[str, Alarm | None]:
        return {VOLTAGE_ALARM: voltage_alarm(snap.voltage_v)}

    def events(self, snap: Snapshot, state: dict) -> tuple[Event, ...]:
        return ()

    def series(self, snap: Snapshot, registers: dict[str, float]) -> list[Series]:
        raise NotImplementedError


class PvModel(DeviceModel):
    def meter_power_w(self, snap: Snapshot) -> float:
        return -snap.pv[self.spec.name].ac_w

    def extra_state(self, snap: Snapshot, state: dict) -> dict:
        """{"clipped_at": the last t the inverter clipped, or None}."""
        if snap.pv[self.spec.name].clipped:
            return {"clipped_at": snap.t}
        last = state.get("clipped_at") if isinstance(state, dict) else None
        is_time = isinstance(last, (int, float)) and not isinstance(last, bool) and math.isfinite(last)
        return {"clipped_at": float(last) if is_time else None}

    def alarm_conditions(self, snap: Snapshot, before: set[str], extra: dict) -> dict[str, Alarm | None]:
        rating, last = self.household.pv[self.spec.name].inverter_w, extra["clipped_at"]
        recent = last is not None and abs(snap.t - last) < CLIPPING_CLEAR_AFTER_S
        clipping = last == snap.t or (CLIPPING_ALARM in before and recent)
        text = f"Inverter clipping at {rating / 1000:.1f} kW"
        alarm = Alarm(CLIPPING_ALARM, WARNING, text) if clipping else None
        return {**super().alarm_conditions(snap, before, extra), CLIPPING_ALARM: alarm}

    def series(self, snap: Snapshot, registers: dict[str, float]) -> list[Series]:
        pv = snap.pv[self.spec.name]
        return [*electrical_series(snap.voltage_v, pv.ac_w / snap.voltage_v),
                power_series(SINGLE_PHASE, "P-", pv.ac_w),
                energy_series(SINGLE_PHASE, "A-", registers["A-"]),
                Series("c8ysim_PvInverter", "irradiance", round(pv.poa_w_m2, 0) + 0.0, "W/m2"),
                Series("c8ysim_PvInverter", "cellTemp", round(pv.cell_temp_c, 1), "C")]


class HeatPumpModel(DeviceModel):
    def initial_state(self) -> dict:
        return {**super().initial_state(), "defrost": False}

    def meter_power_w(self, snap: Snapshot) -> float:
        return snap.heatpumps[self.spec.name].power_w

    def extra_state(self, snap: Snapshot, state: dict) -> dict:
        return {"defrost": snap.heatpumps[self.spec.name].defrost}

    def events(self, snap: Snapshot, state: dict) -> tuple[Event, ...]:
        was = isinstance(state, dict) and state.get("defrost") is True
        if not snap.heatpumps[self.spec.name].defrost or was:
            return ()
        return (Event(DEFROST_EVENT, f"Defrost started at {snap.weather.temp_c:.1f} C outdoor temperature"),)

    def series(self, snap: Snapshot, registers: dict[str, float]) -> list[Series]:
        hp = snap.heatpumps[self.spec.name]
        return [*electrical_series(snap.voltage_v, hp.power_w / snap.voltage_v),
                power_series(SINGLE_PHASE, "P+", hp.power_w),
                energy_series(SINGLE_PHASE, "A+", registers["A+"]),
                Series("c8y_TemperatureMeasurement", "T", round(snap.weather.temp_c, 1), "C"),
                Series("c8ysim_HeatPump", "flowTemp", round(hp.flow_temp_c, 1), "C"),
                Series("c8ysim_HeatPump", "COP", round(hp.cop, 2), ""),
                power_series("c8ysim_HeatPump", "heatPower", hp.heat_w),
                Series("c8ysim_HeatPump", "defrost", 1.0 if hp.defrost else 0.0, "")]


class GridMeterModel(DeviceModel):
    def meter_power_w(self, snap: Snapshot) -> float:
        return snap.grid_w

    def series(self, snap: Snapshot, registers: dict[str, float]) -> list[Series]:
        amps = abs(snap.grid_w) / (snap.voltage_v * GRID_POWER_FACTOR)
        return [*electrical_series(snap.voltage_v, amps),
                power_series(THREE_PHASE, "P+", snap.grid_w),
                power_series(THREE_PHASE, "P-", -snap.grid_w),
                energy_series(THREE_PHASE, "A+", registers["A+"]),
                energy_series(THREE_PHASE, "A-", registers["A-"])]

