"""Alarm bookkeeping: the set of active alarm types and its changes at one tick.

Owns the alarm types and the transition rule. The device state keeps a sorted list of
active alarm types. At each tick the model evaluates its conditions into a mapping
type -> Alarm (active now) or None (not active); an alarm is *raised* when it becomes
active and *cleared* when it stops. Types the model did not evaluate are left untouched.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from c8ysim.sim import Alarm

VOLTAGE_ALARM = "c8ysim_VoltageAlarm"
CLIPPING_ALARM = "c8ysim_InverterClipping"
TRIP_ALARM = "c8ysim_InverterTrip"  # a PV inverter's inverter_trip fault
COMPRESSOR_ALARM = "c8ysim_CompressorFault"  # a heat pump's compressor_fault
OUTAGE_ALARM = "c8ysim_GridOutage"  # the grid meter's outage
DEFROST_EVENT = "c8ysim_Defrost"
CRITICAL, MAJOR, WARNING = "CRITICAL", "MAJOR", "WARNING"


def read_active(state: Mapping) -> set[str]:
    active = state.get("alarms") if isinstance(state, Mapping) else None
    return {a for a in active if isinstance(a, str)} if isinstance(active, (list, tuple)) else set()


def transition(before: Iterable[str], now: Mapping[str, Alarm | None]
               ) -> tuple[list[str], tuple[Alarm, ...], tuple[str, ...]]:
    """(active types after, alarms raised, types cleared)."""
    before = set(before)
    raised = tuple(alarm for kind, alarm in now.items() if alarm is not None and kind not in before)
    cleared = tuple(kind for kind, alarm in now.items() if alarm is None and kind in before)
    after = (before - set(cleared)) | {alarm.type for alarm in raised}
    return sorted(after), raised, cleared
