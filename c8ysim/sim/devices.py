"""Device models: turn what a device sees at t (`Household.view`) into its Reading, state and alarms.

Owns the Cumulocity view of each device (fragments, series, units, rounding; Reading.type is
the kind's `c8y_type` in `c8ysim.kinds`, which also names these classes) and the `Model`
protocol implementation: `initial_state()` and `step(state, t, dt)`.

State (JSON-serialisable, persisted by the agent):
  {"registers": {"A+": kWh, "A-": kWh}, "alarms": [active alarm types]}, plus
  "clipped_at" (PV: last t the inverter clipped, or null) or "defrost" (heat pump: bool), and
  the heat pump's thermal register "heat" (kWh) beside A+/A-.
step never mutates its input, tolerates missing keys (a fresh or foreign state), dt = 0,
huge dt (sub-stepped fast-forward) and t going backwards (nothing is integrated).

Fragments (README "Measurements" has the table). Rule: all series of one fragment share one
unit, except the sensor library's energy fragments, which carry the kWh registers A+/A- and
the W powers P+/P- side by side. Sign convention: + into the device from the grid side
(P+, A+), - out of it (P-, A-). A single-phase device reports `c8y_VoltageMeasurement.voltage`
and `c8y_CurrentMeasurement.current` of its phase and `c8y_SinglePhaseEnergyMeasurement`; a
three-phase one `voltage:1..3`, `current:1..3` (the library's phase suffix, as in `P+:1`)
and `c8y_ThreePhaseEnergyMeasurement` with its totals and `P+:n`/`P-:n` per phase, which add
up exactly (0.1 W units) to the totals. Current = |P| / (V pf), POWER_FACTOR per kind.
- PV inverter, c8ysim_PvInverter: AC output side. P- (W, delivered) and A- (kWh generated);
  single-phase up to `three_phase_above_kw`, balanced three-phase above;
  c8y_TemperatureMeasurement.T = module (cell) temperature; c8ysim_Irradiance.planeOfArray
  (W/m2). Alarm c8ysim_InverterClipping (WARNING) while the inverter clips; it clears after
  15 minutes without clipping (else every cloud gap would raise a new one).
- Heat pump, c8ysim_HeatPump: electrical input P+ (W) and A+ (kWh), three-phase by default;
  c8ysim_HeatPumpTemperature {outdoor, flow, return} (C); c8ysim_ThermalPower.heat (W) and
  the register c8ysim_ThermalEnergy.heat (kWh), so that thermal over electrical energy is
  the seasonal performance factor; c8ysim_COP.COP = heat / electrical power now (0 while
  no heat is delivered: standby, defrost). A defrost start is an Event c8ysim_Defrost (not an
  alarm, nor a series: defrosting is normal operation, nobody has to acknowledge it).
- Grid meter, c8ysim_GridMeter: c8y_ThreePhaseEnergyMeasurement P+ (W, the importing
  phases), P- (the exporting ones), P+:1..3, P-:1..3 (one of each pair is 0), A+ (import kWh,
  OBIS 1.8.0) and A- (export kWh, 2.8.0) integrating P+ and P-: the meter does not net
  across phases (`phases.meter_flows`).
Every device raises c8ysim_VoltageAlarm (MAJOR) while a voltage it reports is outside
230 V +/-10 %.

Faults (`scenarios`): the PV inverter raises c8ysim_InverterTrip (MAJOR) while its
`inverter_trip` window holds t (its output is 0), the heat pump c8ysim_CompressorFault
(MAJOR) during its `compressor_fault` (standby, no heat, COP 0), the grid meter
c8ysim_GridOutage (CRITICAL) during its `outage`; each is raised at the first step in the
window and cleared at the first step after it (`alarms.transition`). During an outage every
device reports 0 V and 0 A, and none evaluates its voltage alarm: there is no voltage to be
out of band, one root cause makes one alarm (the meter's), and a voltage alarm active when
the grid failed is left as it was, to be evaluated again when the grid is back.
"""

from __future__ import annotations

import math
from typing import Sequence

from c8ysim.kinds import KINDS
from c8ysim.sim import Alarm, DeviceSpec, Event, Reading, Series
from c8ysim.sim.alarms import (CLIPPING_ALARM, COMPRESSOR_ALARM, CRITICAL, DEFROST_EVENT, MAJOR,
                              OUTAGE_ALARM, TRIP_ALARM, VOLTAGE_ALARM, WARNING, read_active,
                              transition)
from c8ysim.sim.energy import advance, integrate_kwh, read_registers
from c8ysim.sim.household import Household, View
from c8ysim.sim.phases import exact_parts, meter_flows
from c8ysim.sim.scenarios import NO_FAULTS
from c8ysim.sim.voltage import ALARM_HIGH_V, ALARM_LOW_V, NOMINAL_V, outside_band

POWER_FACTOR = {"pv": 1.0, "heatpump": 0.95, "grid": 0.95}
GRID_POWER_FACTOR = POWER_FACTOR["grid"]
CLIPPING_CLEAR_AFTER_S = 15 * 60.0  # one alarm per sunny spell, not one per cloud gap
VOLTAGE, CURRENT = "c8y_VoltageMeasurement", "c8y_CurrentMeasurement"
SINGLE_PHASE, THREE_PHASE = "c8y_SinglePhaseEnergyMeasurement", "c8y_ThreePhaseEnergyMeasurement"
TEMPERATURE = "c8y_TemperatureMeasurement"
IRRADIANCE = "c8ysim_Irradiance"
HP_TEMPERATURES, THERMAL_POWER, THERMAL_ENERGY = (
    "c8ysim_HeatPumpTemperature", "c8ysim_ThermalPower", "c8ysim_ThermalEnergy")
COP_FRAGMENT = "c8ysim_COP"
POWER_DIGITS, ENERGY_DIGITS, CURRENT_DIGITS = 1, 4, 3
PHASE_VOLTAGES = ("voltage:1", "voltage:2", "voltage:3")
PHASE_CURRENTS = ("current:1", "current:2", "current:3")
TRIPPED = Alarm(TRIP_ALARM, MAJOR, "Inverter tripped: no AC output")
COMPRESSOR_FAULT = Alarm(COMPRESSOR_ALARM, MAJOR, "Compressor fault: no heat, standby only")
GRID_OUTAGE = Alarm(OUTAGE_ALARM, CRITICAL, "Grid outage: no voltage on L1, L2, L3")


def _nonneg(value: float, digits: int) -> float:
    return round(max(value, 0.0), digits) + 0.0  # + 0.0 turns -0.0 into 0.0


def power_series(fragment: str, name: str, watts: float) -> Series:
    return Series(fragment, name, _nonneg(watts, POWER_DIGITS), "W")


def energy_series(fragment: str, name: str, kwh: float) -> Series:
    return Series(fragment, name, _nonneg(kwh, ENERGY_DIGITS), "kWh")


def phase_power_series(fragment: str, name: str, phase_w: Sequence[float]) -> list[Series]:
    """`name` (the total) and `name:1..3`, rounded so that the phases add up to the total."""
    total, (p1, p2, p3) = exact_parts(phase_w, POWER_DIGITS)
    return [Series(fragment, name, total, "W"), Series(fragment, name + ":1", p1, "W"),
            Series(fragment, name + ":2", p2, "W"), Series(fragment, name + ":3", p3, "W")]


def electrical_series(volts: Sequence[float], amps: Sequence[float]) -> list[Series]:
    """One phase: `voltage`, `current`; three: `voltage:1..3`, `current:1..3`."""
    if len(volts) == 1:
        return [Series(VOLTAGE, "voltage", round(volts[0], 1), "V"),
                Series(CURRENT, "current", _nonneg(amps[0], CURRENT_DIGITS), "A")]
    return ([Series(VOLTAGE, name, round(v, 1), "V") for name, v in zip(PHASE_VOLTAGES, volts)]
            + [Series(CURRENT, name, _nonneg(a, CURRENT_DIGITS), "A")
               for name, a in zip(PHASE_CURRENTS, amps)])


def current_a(watts: float, volts: float, power_factor: float) -> float:
    """|P| / (V pf); 0 for a voltage that is no voltage."""
    return abs(watts) / (volts * power_factor) if volts > 0.0 else 0.0


def voltage_alarm(volts: Sequence[float]) -> Alarm | None:
    """The alarm while any of `volts` is outside the band (the text names the worst)."""
    outside = [v for v in volts if outside_band(v)]
    if not outside:
        return None
    worst = max(outside, key=lambda v: abs(v - NOMINAL_V))
    return Alarm(VOLTAGE_ALARM, MAJOR,
                 f"Grid voltage {worst:.1f} V outside {ALARM_LOW_V:.0f}-{ALARM_HIGH_V:.0f} V")


def fault_alarm(conditions: dict[str, Alarm | None], alarm: Alarm, active: bool,
                before: set[str]) -> dict[str, Alarm | None]:
    """`conditions` with a fault's alarm: raised while `active`, cleared once it is not (also
    one left from a scenario the site no longer has); not evaluated while neither."""
    if active:
        conditions[alarm.type] = alarm
    elif alarm.type in before:
        conditions[alarm.type] = None
    return conditions


class DeviceModel:
    """Common step logic; subclasses say what the device measures."""

    REGISTERS: tuple[str, ...] = ("A+", "A-")  # state registers, in the order of `flows_w`

    def __init__(self, household: Household, spec: DeviceSpec):
        self.household, self.spec = household, spec
        self.kind = KINDS[spec.kind]
        self.reading_type = self.kind.c8y_type
        self.placement = household.placement[spec.name]
        self.power_factor = POWER_FACTOR.get(spec.kind, 1.0)

    def initial_state(self) -> dict:
        return {"registers": dict.fromkeys(self.REGISTERS, 0.0), "alarms": []}

    def flows_w(self, view: View) -> tuple[float, ...]:
        """The power flows (W, >= 0) the registers integrate, in REGISTERS order."""
        raise NotImplementedError

    def flows_at(self, t: float) -> tuple[float, ...]:
        """`flows_w` at any t, computing only what this device needs (for sub-steps)."""
        raise NotImplementedError

    def step(self, state: dict, t: float, dt: float) -> tuple[dict, Reading]:
        view = self.household.view(self.spec.name, t)
        increments = integrate_kwh(self.flows_at, t, dt, self.flows_w(view))
        registers = advance(read_registers(state, self.REGISTERS), increments)
        before, extra = read_active(state), self.extra_state(view, state)
        active, raised, cleared = transition(before, self.alarm_conditions(view, before, extra))
        new_state = {"registers": registers, "alarms": active, **extra}
        reading = Reading(t, self.reading_type, tuple(self.series(view, registers)),
                          raised, cleared, self.events(view, state))
        return new_state, reading

    def electrical(self, view: View, watts: float) -> list[Series]:
        """Voltage and current of a device drawing or delivering `watts` evenly on its phases."""
        volts = view.volts
        share = watts / len(volts)
        return electrical_series(volts, [current_a(share, v, self.power_factor) for v in volts])

    def energy(self, name: str, watts: float, registers: dict[str, float]) -> list[Series]:
        """The energy fragment: the power `name` (P+ or P-) with its phases when three-phase,
        and the register A+ or A- that integrates it."""
        register = "A" + name[1:]
        if self.placement.three_phase:
            third = max(watts, 0.0) / 3.0
            powers = phase_power_series(THREE_PHASE, name, (third, third, third))
            return [*powers, energy_series(THREE_PHASE, register, registers[register])]
        return [power_series(SINGLE_PHASE, name, watts),
                energy_series(SINGLE_PHASE, register, registers[register])]

    def extra_state(self, view: View, state: dict) -> dict:
        """Device-specific keys of the next state."""
        return {}

    def alarm_conditions(self, view: View, before: set[str], extra: dict) -> dict[str, Alarm | None]:
        """The voltage alarm, except during a grid outage: then there is no voltage to be out
        of band (the meter's c8ysim_GridOutage says why), and the alarm is left as it was."""
        if view.faults is not NO_FAULTS and view.faults.outage:
            return {}
        return {VOLTAGE_ALARM: voltage_alarm(view.volts)}

    def events(self, view: View, state: dict) -> tuple[Event, ...]:
        return ()

    def series(self, view: View, registers: dict[str, float]) -> list[Series]:
        raise NotImplementedError


class PvModel(DeviceModel):
    def flows_w(self, view: View) -> tuple[float, ...]:
        return (0.0, view.pv.ac_w)

    def flows_at(self, t: float) -> tuple[float, ...]:
        return (0.0, self.household.pv_output(self.spec.name, t).ac_w)

    def extra_state(self, view: View, state: dict) -> dict:
        """{"clipped_at": the last t the inverter clipped, or None}."""
        if view.pv.clipped:
            return {"clipped_at": view.t}
        last = state.get("clipped_at") if isinstance(state, dict) else None
        is_time = isinstance(last, (int, float)) and not isinstance(last, bool) and math.isfinite(last)
        return {"clipped_at": float(last) if is_time else None}

    def alarm_conditions(self, view: View, before: set[str], extra: dict) -> dict[str, Alarm | None]:
        rating, last = self.household.pv[self.spec.name].inverter_w, extra["clipped_at"]
        recent = last is not None and abs(view.t - last) < CLIPPING_CLEAR_AFTER_S
        clipping = last == view.t or (CLIPPING_ALARM in before and recent)
        text = f"Inverter clipping at {rating / 1000:.1f} kW"
        alarm = Alarm(CLIPPING_ALARM, WARNING, text) if clipping else None
        conditions = {**super().alarm_conditions(view, before, extra), CLIPPING_ALARM: alarm}
        if view.faults is NO_FAULTS and TRIP_ALARM not in before:
            return conditions
        return fault_alarm(conditions, TRIPPED, self.spec.name in view.faults.tripped, before)

    def series(self, view: View, registers: dict[str, float]) -> list[Series]:
        pv = view.pv
        return [*self.energy("P-", pv.ac_w, registers),
                *self.electrical(view, pv.ac_w),
                Series(TEMPERATURE, "T", round(pv.cell_temp_c, 1), "C"),
                Series(IRRADIANCE, "planeOfArray", round(pv.poa_w_m2, 0) + 0.0, "W/m2")]


class HeatPumpModel(DeviceModel):
    REGISTERS = ("A+", "A-", "heat")

    def initial_state(self) -> dict:
        return {**super().initial_state(), "defrost": False}

    def flows_w(self, view: View) -> tuple[float, ...]:
        hp = view.heatpump
        return (hp.power_w, 0.0, hp.heat_w)

    def flows_at(self, t: float) -> tuple[float, ...]:
        hp = self.household.heatpump_output(self.spec.name, t)
        return (hp.power_w, 0.0, hp.heat_w)

    def extra_state(self, view: View, state: dict) -> dict:
        return {"defrost": view.heatpump.defrost}

    def alarm_conditions(self, view: View, before: set[str], extra: dict) -> dict[str, Alarm | None]:
        conditions = super().alarm_conditions(view, before, extra)
        if view.faults is NO_FAULTS and COMPRESSOR_ALARM not in before:
            return conditions
        return fault_alarm(conditions, COMPRESSOR_FAULT, self.spec.name in view.faults.broken, before)

    def events(self, view: View, state: dict) -> tuple[Event, ...]:
        was = isinstance(state, dict) and state.get("defrost") is True
        if not view.heatpump.defrost or was:
            return ()
        return (Event(DEFROST_EVENT, f"Defrost started at {view.weather.temp_c:.1f} C outdoor temperature"),)

    def series(self, view: View, registers: dict[str, float]) -> list[Series]:
        hp = view.heatpump
        cop_now = hp.heat_w / hp.power_w if hp.power_w > 0.0 else 0.0
        return [*self.energy("P+", hp.power_w, registers),
                *self.electrical(view, hp.power_w),
                Series(HP_TEMPERATURES, "outdoor", round(view.weather.temp_c, 1), "C"),
                Series(HP_TEMPERATURES, "flow", round(hp.flow_temp_c, 1), "C"),
                Series(HP_TEMPERATURES, "return", round(hp.return_temp_c, 1), "C"),
                power_series(THERMAL_POWER, "heat", hp.heat_w),
                energy_series(THERMAL_ENERGY, "heat", registers["heat"]),
                Series(COP_FRAGMENT, "COP", _nonneg(cop_now, 2), "")]


class GridMeterModel(DeviceModel):
    def flows_w(self, view: View) -> tuple[float, ...]:
        return meter_flows(view.grid_phase_w)

    def alarm_conditions(self, view: View, before: set[str], extra: dict) -> dict[str, Alarm | None]:
        conditions = super().alarm_conditions(view, before, extra)
        if view.faults is NO_FAULTS and OUTAGE_ALARM not in before:
            return conditions
        return fault_alarm(conditions, GRID_OUTAGE, view.faults.outage, before)

    def flows_at(self, t: float) -> tuple[float, ...]:
        return meter_flows(self.household.grid_phases_w(t))

    def series(self, view: View, registers: dict[str, float]) -> list[Series]:
        phases = view.grid_phase_w
        volts = view.volts
        amps = [current_a(w, v, self.power_factor) for w, v in zip(phases, volts)]
        return [*phase_power_series(THREE_PHASE, "P+", [max(w, 0.0) for w in phases]),
                *phase_power_series(THREE_PHASE, "P-", [max(-w, 0.0) for w in phases]),
                energy_series(THREE_PHASE, "A+", registers["A+"]),
                energy_series(THREE_PHASE, "A-", registers["A-"]),
                *electrical_series(volts, amps)]
