"""`c8ysim backfill`: a device's past readings, with their true timestamps, into its buffer.

The models are pure functions of time, so yesterday can be generated at any speed. The rows
go into the device's own buffer and the running device drains them like any backlog, paced
by `cumulocity.max_lines_per_s`.

Energy registers must never go back in Cumulocity's timeline, so the backfilled register
values are counted backwards from the device's current ones: at time t the register reads
`current - energy(t .. now)`, floored at zero. Alarms are left out (Cumulocity keeps one
active alarm per type; replayed raises would fight the live state); events are kept.
"""

from __future__ import annotations

import dataclasses
import re

from agent import sim
from agent.uplink import smartrest

REGISTER_SERIES = ("A+", "A-")
ROWS_PER_TRANSACTION = 1000
SPAN_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SPAN_S = 366 * 86400


def parse_span(text: str) -> float:
    """'24h', '90m', '7d', '3600s' or plain seconds -> seconds; ValueError if not."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError(f"'{text}' is not a duration like 24h, 90m or 7d")
    seconds = float(match.group(1)) * SPAN_UNITS_S[match.group(2) or "s"]
    if not 0 < seconds <= MAX_SPAN_S:
        raise ValueError(f"the span must be more than 0 and at most {MAX_SPAN_S // 86400} days")
    return seconds


def readings(site: sim.Site, device_name: str, start: float, end: float, interval_s: float,
             current_state: dict | None) -> list[sim.Reading]:
    """The readings of [start, end) every interval_s, registers counted back from now."""
    model = sim.build_model(site, device_name)
    history, state = [], model.initial_state()
    for tick in range(int((end - start) / interval_s)):
        state, reading = model.step(state, start + tick * interval_s, interval_s if tick else 0.0)
        history.append(reading)
    if not history:
        return []
    now_state = current_state or model.initial_state()
    _, now = model.step(now_state, end, 0.0)
    return [_shift_registers(r, history[-1], now) for r in history]


def _shift_registers(reading: sim.Reading, last: sim.Reading, now: sim.Reading) -> sim.Reading:
    series = []
    for item in reading.series:
        if item.series in REGISTER_SERIES and item.unit == "kWh":
            to_end = (last.value(item.fragment, item.series) or 0.0) - item.value
            current = now.value(item.fragment, item.series) or 0.0
            item = dataclasses.replace(item, value=round(max(0.0, current - to_end), 4))
        series.append(item)
    return dataclasses.replace(reading, series=tuple(series), alarms_raised=(),
                               alarms_cleared=())


def rows(history: list[sim.Reading], queued_at: float):
    """(topic, payload, created) rows for the buffer, in time order."""
    for reading in history:
        lines = [smartrest.measurement(reading)]
        lines += [smartrest.event(event, reading.time) for event in reading.events]
        for line in lines:
            yield smartrest.UPSTREAM_TOPIC, line.encode(), queued_at


def store(buffer, history: list[sim.Reading], queued_at: float) -> int:
    """Append the rows in transactions of ROWS_PER_TRANSACTION; returns the row count."""
    batch, count = [], 0
    for row in rows(history, queued_at):
        batch.append(row)
        if len(batch) == ROWS_PER_TRANSACTION:
            buffer.put_many(batch)
            count, batch = count + len(batch), []
    if batch:
        buffer.put_many(batch)
    return count + len(batch)
