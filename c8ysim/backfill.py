"""`c8ysim backfill`: a device's past readings, with their true timestamps, into its buffer.

The models are pure functions of time, so yesterday can be generated at any speed. The rows
go into the device's own buffer (through its store, which numbers them: a running device
keeps every live reading and sends the backfill after what it had queued) and the device
drains them like any backlog, in timestamp order, as fast as Cumulocity takes them (the
drain rate follows the PUBACK latency, below `cumulocity.max_lines_per_s`).
Readings are streamed to the store in transactions, never held all at once.

Timestamps are the device's own interval grid: the multiples of `interval_s` since the epoch
in [start, end), exactly the slots a running device reads at. The model is stepped from the
slot before the first (so a defrost already under way is not reported as a start), so the
same seed gives the same readings at the same timestamps whatever second the command ran,
and every device backfilled over the same span shares timestamps: the grid balance holds
at each of them.

Energy registers must never go back in Cumulocity's timeline, so the backfilled registers
(every kWh series: A+, A-, the heat pump's thermal register) are counted back from the
device's stored state, the registers R it reported at its last slot t_s: at a slot t <= t_s
a register reads R - energy(t .. t_s), floored at zero, the energy summed over the same grid
steps the device took; after t_s (a stopped device) it reads R: the device, when it starts,
fast-forwards from R, so no later reading can be lower. Without a stored state the registers
are 0 throughout (the device will start from 0). Alarms are left out (Cumulocity keeps one
active alarm per type; replayed raises would fight the live state); events are kept.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

from c8ysim import durations, sim
from c8ysim.uplink import smartrest

ROWS_PER_TRANSACTION = 1000
MAX_SPAN_S = 366 * 86400
MAX_BRIDGE_SLOTS = 100_000  # a stored state further ahead than this (a clock that went back
#                             a long way) is not stepped to: the span's end is the anchor
REGISTER_DIGITS = 4


def parse_span(text: str) -> float:
    """'24h', '90m', '7d', '3600s' or plain seconds -> seconds; ValueError if not."""
    return durations.parse(text, MAX_SPAN_S)


def slot_time(k: int, interval_s: float) -> float:
    """The k-th slot of the interval grid, as the device computes its own timestamps."""
    return round(k * interval_s, 3)


def slots(start: float, end: float, interval_s: float) -> range:
    """The slot numbers k with start <= slot_time(k) < end."""
    first = math.ceil(start / interval_s)
    while slot_time(first - 1, interval_s) >= start:
        first -= 1
    while slot_time(first, interval_s) < start:
        first += 1
    stop = math.ceil(end / interval_s)
    while slot_time(stop - 1, interval_s) >= end:
        stop -= 1
    while slot_time(stop, interval_s) < end:
        stop += 1
    return range(first, max(first, stop))


def count(start: float, end: float, interval_s: float) -> int:
    """How many readings `readings` yields for the span."""
    return len(slots(start, end, interval_s))


def readings(site: sim.Site, device_name: str, start: float, end: float, interval_s: float,
             current_state: dict | None) -> Iterator[sim.Reading]:
    """The readings at the interval grid's slots in [start, end), registers counted back
    from `current_state` (the device's stored model state, or None).

    Two passes over the span, nothing held in memory: the first steps the model up to the
    state's slot to find the raw registers there (the models are pure functions of their
    state and time, so the second pass computes the same readings again), the second
    yields the readings with their registers counted back."""
    span = slots(start, end, interval_s)
    if not span:
        return
    model = sim.build_model(site, device_name)
    state = current_state if isinstance(current_state, dict) else None
    current, anchor = _anchor(model, state, span, interval_s)
    at_anchor = None
    if anchor >= span[0] and any(current.values()):  # step to the state's slot
        for k, raw, _ in _stepped(model, range(span[0], max(span[-1], anchor) + 1), interval_s):
            if k == anchor:
                at_anchor = raw
    for k, raw, reading in _stepped(model, span, interval_s):
        yield _with_registers(reading, current, raw if k <= anchor else None, at_anchor)


def _anchor(model, state: dict | None, span: range, interval_s: float) -> tuple[dict, int]:
    """(the registers the device reported, the slot it reported them at)."""
    if state is None:
        return dict.fromkeys(model.REGISTERS, 0.0), span[-1]
    t = state.get("t")
    registers = model.step(state, slot_time(span[-1], interval_s), 0.0)[0]["registers"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        return registers, span[-1]  # a state of an older build: count back from the end
    anchor = round(t / interval_s)
    return registers, anchor if anchor <= span[-1] + MAX_BRIDGE_SLOTS else span[-1]


def _stepped(model, ks: range, interval_s: float):
    """(k, raw registers, reading) for each slot of `ks`, the model stepped from the slot
    before the first one (its reading dropped) with registers from 0."""
    previous = slot_time(ks[0] - 1, interval_s)
    state, _ = model.step(model.initial_state(), previous, 0.0)
    for k in ks:
        t = slot_time(k, interval_s)
        state, reading = model.step(state, t, t - previous)
        previous = t
        yield k, state["registers"], reading


def _with_registers(reading: sim.Reading, current: dict, raw: dict | None,
                    at_anchor: dict | None) -> sim.Reading:
    """The reading without its alarms, each register series counted back from `current`
    (held at `current` after the anchor: raw None)."""
    series = []
    for item in reading.series:
        if item.unit == "kWh" and item.series in current:
            kwh = current[item.series]
            if raw is not None and at_anchor is not None:
                kwh -= at_anchor[item.series] - raw[item.series]
            item = item._replace(value=round(max(0.0, kwh), REGISTER_DIGITS) + 0.0)
        series.append(item)
    return sim.Reading(reading.time, reading.type, tuple(series), events=reading.events)


def rows(history: Iterable[sim.Reading], queued_at: float):
    """(topic, payload, created) rows for the buffer, in time order."""
    for reading in history:
        for line in smartrest.reading_lines(reading):
            yield smartrest.UPSTREAM_TOPIC, line.encode(), queued_at


def store(buffer, history: Iterable[sim.Reading], queued_at: float) -> int:
    """Append the rows in transactions of ROWS_PER_TRANSACTION; returns the row count.
    Raises StoreError (from a buffer without overflow) when the store cannot take them."""
    batch, total = [], 0
    for row in rows(history, queued_at):
        batch.append(row)
        if len(batch) == ROWS_PER_TRANSACTION:
            buffer.put_many(batch)
            total, batch = total + len(batch), []
    if batch:
        buffer.put_many(batch)
    return total + len(batch)
