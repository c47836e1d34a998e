"""Chaos collector: counts every reading the devices generated against what the tenant got.

Test-only. Two independent sources, neither needs a change to the agent:

- **Received**: every SmartREST line each client published on `s/us` to the fake tenant(s)
  (FakeTenant records per client, in arrival order, with a monotonic receive time). Several
  tenants count as one endpoint (a "restarted broker" is a new FakeTenant).
- **Generated**: the outbox table is AUTOINCREMENT and SQLite numbers every row it takes
  (from the device, from the in-memory overflow when a disk fault ends, from `c8ysim
  backfill` and `send-test`), so after the agent stopped `sqlite_sequence.seq` is the number
  of rows (= SmartREST lines) that ever reached the file. Rows delivered straight from the
  in-memory overflow never reach it; the buffer counts them in its ledger (`bypassed`, see
  `c8ysim.storage.ledger`). generated = seq + bypassed. The rows still in `outbox` at the end
  are known exactly (their payloads are the lines), and so are quarantined ones.

  lost = generated - |distinct lines received  U  lines still in the outbox|

A reading computed by a child killed before its tick's transaction committed was never
generated in this sense (nobody could ever see it); the model is a pure function of time, so
the next tick simply covers that instant. Limits: the ledger is written once per tick, so
rows delivered from memory in the last tick before a kill -9 would show as *extra*; the rig
lets every device tick a few more times after it recovered, before stopping it. A row that
lived only in memory and was lost with a killed child leaves no trace at all. `306` (clear
alarm) lines carry no time, so they are told apart by the measurement that precedes them.

Also reported: duplicates (received more than once: allowed, at-least-once), out-of-order
(a first-seen measurement older than one seen before it), the max delivery delay (first
receipt minus the measurement's own time), and the largest gap between consecutive
measurement times of a device (and from its last one to the stop), and the ticks missing by
continuity (gaps above 1.5 x interval_s): where no child was down this is a second, independent loss check; after a
kill -9 the gap is legitimate (nothing was generated while the child was down), and a loop
that stalled skips ticks by design ("do not burst"), so it is reported, not asserted.

Wall-clock steps (`ClockSteps`): the devices stamp readings with their own wall clock, which
the test steps by whole hours while the agent runs. Every timestamp is mapped back to the real
time it was taken at (timestamp - the offset in force then; the runs are far shorter than the
steps, so the phase is never ambiguous) and all the checks above use that time. A timestamp
that fits no phase (a reading invented for a skipped span, say) is counted as *unplaced*. Also
counted everywhere: energy registers (kWh series) that decrease from one measurement to the
next in delivery order.

Backfilled lines (`c8ysim backfill` beside the running device): they carry old timestamps,
so `count(..., backfill=...)` takes the timestamps each backfill generated (the test knows
them exactly: the rows' `created` is the command's `now`, their times the device's slots in
[now - span, now), `c8ysim.backfill.slots`) and counts such lines apart (`backfill`,
distinct) instead of in the order, gap, delay, register and placement checks, which stay for
the live readings. Live readings sit on the device's slot grid (multiples of interval_s), and
so does a backfill: a line off the grid is a backfill's (an older build's, or a span the
device read at another interval), a backfilled time before the device's first reading has no
live twin, and a timestamp taken by both is told apart by arrival: the device sends by id
and the live row is older (the first line with that type and time is live, the next one
backfill; byte-identical twins, common since a backfill repeats the live values, count as
two when received twice). They still count in `generated`, `distinct` and `lost`, as do
`send-test` lines (no timestamp: counted with the live ones, checked by the test by text).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from c8ysim.storage.ledger import Ledger
from fake_tenant import FakeTenant, parse_smartrest

UPSTREAM_TOPIC = "s/us"
GAP_FACTOR = 1.5  # a gap above this many intervals between two readings is a missed tick


@dataclasses.dataclass
class DeviceCount:
    device: str
    generated: int = 0          # rows the device committed (sqlite_sequence)
    received: int = 0           # measurement-and-other buffered lines received, with repeats
    distinct: int = 0           # distinct buffered lines received
    pending: int = 0            # still in the outbox at the end (not lost, not yet sent)
    quarantined: int = 0
    dropped: int = 0            # dropped by the buffer's size/age bounds
    lost: int = 0
    extra: int = 0              # distinct received lines not accounted for by the count
    duplicates: int = 0
    out_of_order: int = 0
    max_delay_s: float = 0.0
    max_gap_s: float = 0.0
    missed_ticks: int = 0       # ticks missing by continuity (gaps > 1.5 x interval)
    measurements: int = 0
    unplaced: int = 0           # timestamps that fit no phase of the wall clock
    register_decreases: int = 0  # a kWh series lower than in the measurement before it
    backfill: int = 0           # distinct backfilled lines received (not in the checks above)


@dataclasses.dataclass
class Result:
    scenario: str
    faults: str
    devices: list[DeviceCount]
    recovered: bool
    duration_s: float
    note: str = ""
    violations: int = 0

    def total(self, field: str):
        values = [getattr(d, field) for d in self.devices]
        return max(values) if field.startswith("max_") else sum(values)

    def row(self) -> str:
        return (f"| {self.scenario} | {self.faults} | {self.total('generated')} | "
                f"{self.total('lost')} | {self.total('duplicates')} | "
                f"{self.total('out_of_order')} | {self.total('max_delay_s'):.2f} s | "
                f"{self.total('max_gap_s'):.1f} s | {self.total('missed_ticks')} | "
                f"{'yes' if self.recovered else 'NO'} | "
                f"{self.duration_s:.0f} s | {self.note} |")

    def line(self) -> str:
        return (f"{self.scenario:<15} {self.faults:<28} generated={self.total('generated')} "
                f"lost={self.total('lost')} dup={self.total('duplicates')} "
                f"ooo={self.total('out_of_order')} pending={self.total('pending')} "
                f"extra={self.total('extra')} max_delay={self.total('max_delay_s'):.2f}s "
                f"max_gap={self.total('max_gap_s'):.1f}s missed={self.total('missed_ticks')} "
                f"unplaced={self.total('unplaced')} "
                f"register_decreases={self.total('register_decreases')} "
                f"recovered="
                f"{'yes' if self.recovered else 'NO'} ({self.duration_s:.0f} s) {self.note}")


TABLE_HEAD = ("| scenario | faults | readings generated | lost | duplicates | out of order | "
              "max delivery delay | max gap | missed ticks | recovered by itself | run time "
              "| note |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|")


def iso_to_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class ClockSteps:
    """The offsets the agent's wall clock had, from which real time on: maps timestamps back."""

    def __init__(self):
        self.phases: list[tuple[float, float]] = [(time.time(), 0.0)]  # (real start, offset)

    def record(self, offset_s: float) -> None:
        """The agent's wall clock is real time + `offset_s` from now on."""
        self.phases.append((time.time(), offset_s))

    def real_time(self, stamp: float, slack_s: float) -> float | None:
        """The real time a reading stamped `stamp` was taken at; None if no phase fits."""
        if len(self.phases) == 1:
            return stamp  # the clock was never stepped
        ends = [start for start, _ in self.phases[1:]] + [time.time()]
        for (start, offset), end in zip(self.phases, ends):
            if start - slack_s <= stamp - offset <= end + slack_s:
                return stamp - offset
        return None


class Collector:
    """Counts what every device sent to any of the registered fake tenants."""

    def __init__(self, clients: dict[str, str], steps: ClockSteps | None = None):
        self.clients = clients             # device name -> MQTT client id
        self.tenants: list[FakeTenant] = []
        self.steps = steps or ClockSteps()  # of the agent's clock; the test's is never stepped
        self.wall_offset = time.time() - time.monotonic()  # the test's monotonic -> its wall

    def add_tenant(self, tenant: FakeTenant) -> None:
        self.tenants.append(tenant)

    def stream(self, client: str) -> list[tuple[float, list[str], str]]:
        """(receive wall time, fields, raw) of every buffered-kind line, in arrival order."""
        records = []
        for tenant in self.tenants:
            records += [r for r in tenant.records(client) if r.kind == "publish"
                        and r.accepted and r.topic == UPSTREAM_TOPIC]
        records.sort(key=lambda r: r.time)
        out = []
        for rec in records:
            for line in parse_smartrest(rec.text):
                if line.template and line.template[0] in "234" and line.template != "500":
                    out.append((rec.time + self.wall_offset, line.fields, line.raw))
        return out

    def count(self, device: str, state_dir: Path, interval_s: float,
              stopped_at: float | None = None, backfill: frozenset[str] = frozenset()
              ) -> DeviceCount:
        """Counts of one device; `stopped_at` (real time the agent was told to stop) adds the
        gap after its last reading, so a device that stopped reading early shows too;
        `backfill`: the timestamps (as sent) of the readings backfilled into its buffer."""
        result = DeviceCount(device)
        seen: dict[tuple, float] = {}
        last_time: str | None = None
        newest = float("-inf")
        times: list[float] = []
        registers: dict[str, float] = {}
        live_stamps: set[tuple] = set()  # (template, type, time) of live lines seen
        first_live = None  # the time of the device's first reading
        for received_at, fields, raw in self.stream(self.clients[device]):
            result.received += 1
            stamp = _stamp(fields)
            if first_live is None and fields[0] == "201":
                first_live = stamp  # the first reading is live: backfills run once online
            if stamp in backfill and (not _on_grid(stamp, interval_s) or stamp < first_live
                                      or (*fields[:2], stamp) in live_stamps):
                key = (raw, "backfill")
                result.duplicates += key in seen
                result.backfill += key not in seen
                seen.setdefault(key, received_at)
                continue
            if stamp is not None:
                live_stamps.add((*fields[:2], stamp))
            if fields[0] == "201":
                last_time = fields[2]
            key = (raw, last_time) if fields[0] == "306" else (raw,)
            if key in seen:
                result.duplicates += 1
                continue
            seen[key] = received_at
            if fields[0] != "201":
                continue
            result.measurements += 1
            result.register_decreases += _register_decreases(fields, registers)
            t = self.steps.real_time(iso_to_epoch(fields[2]), slack_s=interval_s + 1.0)
            if t is None:
                result.unplaced += 1
                continue
            if t < newest:
                result.out_of_order += 1
            newest = max(newest, t)
            times.append(t)
            result.max_delay_s = max(result.max_delay_s, received_at - t)
        buffered = read_buffer(state_dir / f"{device}.sqlite3")
        for line in buffered["outbox"]:  # still buffered: generated, not missed
            if line.startswith("201,") and line.split(",")[2] not in backfill:
                t = self.steps.real_time(iso_to_epoch(line.split(",")[2]), interval_s + 1.0)
                if t is None:
                    result.unplaced += 1
                else:
                    times.append(t)
        times.sort()
        gaps = [b - a for a, b in zip(times, times[1:])]
        if stopped_at is not None and times:
            gaps.append(stopped_at - times[-1])
        result.max_gap_s = max(gaps, default=0.0)
        result.missed_ticks = sum(round(g / interval_s) - 1 for g in gaps
                                  if g > GAP_FACTOR * interval_s)
        result.distinct = len(seen)
        result.generated = buffered["generated"]
        result.quarantined, result.dropped = buffered["quarantined"], buffered["dropped"]
        outbox = buffered["outbox"]
        received_raw = {k[0] for k in seen}
        result.pending = len(outbox)
        unsent = [line for line in outbox if line not in received_raw]
        accounted = result.distinct + len(unsent)
        result.lost = max(0, result.generated - accounted)
        result.extra = max(0, accounted - result.generated)
        return result


def _stamp(fields: list[str]) -> str | None:
    """The time of a measurement (201) or event (400) line, None if it has none."""
    if fields[0] == "201" and len(fields) > 2:
        return fields[2]
    if fields[0] == "400" and len(fields) > 3:
        return fields[3]
    return None


def _on_grid(stamp: str, interval_s: float) -> bool:
    """Whether a timestamp is on the live slot grid (a multiple of interval_s, to the ms)."""
    ms, step = round(iso_to_epoch(stamp) * 1000), round(interval_s * 1000)
    return ms % step == 0


def _register_decreases(fields: list[str], registers: dict[str, float]) -> int:
    """1 if a kWh series of this 201 line is below its value in the previous one, else 0."""
    decreased = 0
    for i in range(3, len(fields) - 3, 4):  # 201,type,time then fragment,series,value,unit
        fragment, series, value, unit = fields[i:i + 4]
        if unit != "kWh":
            continue
        name, kwh = f"{fragment}.{series}", float(value)
        decreased |= kwh < registers.get(name, float("-inf"))
        registers[name] = kwh
    return int(decreased)


def read_buffer(path: Path) -> dict:
    """Rows generated (high-water id + rows delivered from memory), outbox lines,
    quarantine and dropped counts of a device's file and ledger."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        outbox = [bytes(p).decode() for (p,) in
                  db.execute("SELECT payload FROM outbox ORDER BY id")]
        quarantined = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        dropped = db.execute("SELECT value FROM meta WHERE key = 'buffer.dropped'").fetchone()
    finally:
        db.close()
    ledger = path.with_name(path.name.replace(".sqlite3", ".ledger.json"))
    bypassed = Ledger(str(ledger)).bypassed
    return {"generated": (seq[0] if seq else 0) + bypassed, "outbox": outbox,
            "quarantined": quarantined,
            "dropped": int(dropped[0] or 0) if dropped else 0}


def write_report(path: Path, results: list[Result], mode: str, header: str) -> None:
    text = [f"# c8ysim reliability under faults ({mode} chaos run)", "",
            "Regenerated by `make chaos` (long runs) — do not edit by hand.", "",
            header, "",
            "Three devices (pv, heatpump, grid meter) against the fake Cumulocity tenant on "
            "loopback. *Generated* is every row that entered the devices' SQLite buffers (the "
            "AUTOINCREMENT high-water mark: the device's own rows and, in the CLI scenario, "
            "those of `backfill` and `send-test`) plus the rows delivered straight from the "
            "in-memory overflow (each buffer's ledger); *lost* = generated − distinct lines the tenant "
            "received − lines still buffered at the end. Duplicates are allowed "
            "(at-least-once) and counted. *Max gap* is the largest distance between two "
            "consecutive measurement times of one device, *missed ticks* the ticks those gaps "
            "skip (gaps above 1.5 × interval): after a kill -9 or restart they are expected "
            "(nothing is generated while a child is down); elsewhere they mean the device loop "
            "stalled and skipped ticks — readings never generated, not lost ones. *Recovered "
            "by itself*: after the last fault every device reconnected and drained its backlog "
            "with no help from the test, its buffer no longer degraded. *Wall clock*: only the agent's "
            "wall clock is stepped (CLOCK_REALTIME, through the LD_PRELOAD library "
            "`tests/clockshift.c`; its monotonic clock and the host's clock stay real); every "
            "timestamp is mapped back to the real time it was taken at, so gaps, order and "
            "delay are measured on the real time line. In every scenario no energy register "
            "decreased and no timestamp fell outside the clock's phases.", "", TABLE_HEAD]
    text += [r.row() for r in results]
    text += ["", "How loss is detected and its limits: see the docstring of "
             "`tests/chaos_collector.py`.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
