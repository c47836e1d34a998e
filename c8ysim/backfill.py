"""`c8ysim backfill`: a device's past readings, with their true timestamps, into its buffer.

The models are pure functions of time, so yesterday can be generated at any speed. The rows
go into the device's own buffer (through its store, which numbers them: a running device
keeps every live reading and sends the backfill after what it had queued) and the device
drains them like any backlog, paced by `cumulocity.max_lines_per_s`. Readings are streamed
to the store in transactions, never held all at once.

Energy registers (every kWh series) must never go back in Cumulocity's timeline, so the
backfilled register values are counted backwards from the device's current ones: at time t the register reads
`current - energy(t .. now)`, floored at zero. Alarms are left out (Cumulocity keeps one
active alarm per type; replayed raises would fight the live state); events are kept.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Iterator

from c8ysim import sim
from c8ysim.uplink import smartrest

REGISTER_SERIES = ("A+", "A-", "heat")  # the heat pump's thermal register too
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
             current_state: dict | None) -> Iterator[sim.Reading]:
    """The readings of [start, end) every interval_s, registers counted back from now.

    Two passes over the span, nothing held in memory: the first finds the last reading's
    registers (the models are pure functions of their state and time, so the second pass
    computes the same readings again), the second yields them shifted."""
    last = None
    for last in _span(site, device_name, start, end, interval_s):
        pass
    if last is None:
        return
    model = sim.build_model(site, device_name)
    _, now = model.step(current_state or model.initial_state(), end, 0.0)
    for reading in _span(site, device_name, start, end, interval_s):
        yield _shift_registers(reading, last, now)


def count(start: float, end: float, interval_s: float) -> int:
    return max(0, int((end - start) / interval_s))


def _span(site: sim.Site, device_name: str, start: float, end: float, interval_s: float):
    model = sim.build_model(site, device_name)
    state = model.initial_state()
    for tick in range(count(start, end, interval_s)):
        state, reading = model.step(state, start + tick * interval_s, interval_s if tick else 0.0)
        yield reading


def _shift_registers(reading: sim.Reading, last: sim.Reading, now: sim.Reading) -> sim.Reading:
    series = []
    for item in reading.series:
        if item.series in REGISTER_SERIES and item.unit == "kWh":
            to_end = (last.value(item.fragment, item.series) or 0.0) - item.value
            current = now.value(item.fragment, item.series) or 0.0
            item = item._replace(value=round(max(0.0, current - to_end), 4))
        series.append(item)
    return dataclasses.replace(reading, series=tuple(series), alarms_raised=(),
                               alarms_cleared=())


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
