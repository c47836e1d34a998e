"""What the status page, /metrics and `c8ysim status` derive from the supervisor's view.

Pure functions over the plain dicts of `Supervisor.status()` and `Supervisor.history()`:
a device's power and energy registers found in whichever energy fragment its readings carry,
its health in one word, the site summary, readiness, and the formatting of numbers, ages and
clock times. No HTML, no HTTP, no third-party imports (the CLI uses this module too).

A reading is {"time": epoch, "<fragment>.<series>": value, ...}. Power is P+ minus P- of the
fragment whose name ends in "EnergyMeasurement" (+ drawn from the grid side, - delivered);
energy registers are its A+ (import) and A- (export), in kWh. A three-phase device's
per-phase series (`P+:1`, `voltage:2`, ...) are shown as such ("power in L1") and never taken
for the totals.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import time
from typing import Iterator

from c8ysim.kinds import KINDS

ENERGY_FRAGMENT_SUFFIX = "EnergyMeasurement"
READY_MAX_QUEUED = 10_000  # /readyz fails while any device has this many rows queued
MISSING = "\u2014"  # shown where a value is unknown (no beat, no reading yet)
UNIT_SYMBOLS = {"C": "\u00b0C", "W/m2": "W/m\u00b2"}  # as units read on a page
SERIES_LABELS = {"voltage": "voltage", "current": "current", "P+": "power in",
                 "P-": "power out", "A+": "energy in", "A-": "energy out", "T": "temperature",
                 "planeOfArray": "irradiance", "outdoor": "outdoor", "flow": "flow",
                 "return": "return"}
KEY_LABELS = {"c8ysim_ThermalPower.heat": "heat output",  # one series name, two fragments
              "c8ysim_ThermalEnergy.heat": "heat delivered"}

Reading = dict


# -- readings -----------------------------------------------------------------------------

def energy_keys(reading: Reading | None) -> dict[str, str]:
    """{"P+": key, "P-": key, "A+": key, "A-": key} present in `reading`'s energy fragment."""
    keys: dict[str, str] = {}
    for key in reading or ():
        fragment, _, series = key.partition(".")
        if fragment.endswith(ENERGY_FRAGMENT_SUFFIX) and series in ("P+", "P-", "A+", "A-"):
            keys.setdefault(series, key)
    return keys


def power_w(reading: Reading | None, keys: dict[str, str] | None = None) -> float | None:
    """Signed power (W): + drawn from the grid side, - delivered; None without P+/P-.

    `keys` (from `energy_keys` of a similar reading) saves the search on long histories.
    """
    if not reading:
        return None
    watts = _signed_power(reading, energy_keys(reading) if keys is None else keys)
    if watts is None and keys is not None:  # the keys came from another kind of reading
        watts = _signed_power(reading, energy_keys(reading))
    return watts


def _signed_power(reading: Reading, keys: dict[str, str]) -> float | None:
    plus, minus = _number(reading.get(keys.get("P+"))), _number(reading.get(keys.get("P-")))
    if plus is None and minus is None:
        return None
    return (plus or 0.0) - (minus or 0.0)


def energy_kwh(reading: Reading | None) -> dict[str, float]:
    """{"import": A+, "export": A-} (kWh) for the registers the reading carries."""
    keys = energy_keys(reading)
    found = {"import": _number((reading or {}).get(keys.get("A+"))),
             "export": _number((reading or {}).get(keys.get("A-")))}
    return {register: value for register, value in found.items() if value is not None}


def series_items(reading: Reading | None, units: dict | None) -> list[tuple[str, str, object]]:
    """(label, unit, value) for every series of a reading, in its own order; `units` is the
    device's {key: unit} (its heartbeat's `units`)."""
    items = []
    for key, value in (reading or {}).items():
        if key == "time":
            continue
        unit = (units or {}).get(key) or ""
        items.append((series_label(key), UNIT_SYMBOLS.get(unit, unit), value))
    return items


def series_label(key: str) -> str:
    """How a page names "<fragment>.<series>": "power in", "voltage L2", "heat output"."""
    if key in KEY_LABELS:
        return KEY_LABELS[key]
    series = key.partition(".")[2] or key
    base, colon, phase = series.partition(":")
    label = SERIES_LABELS.get(base, base)
    return f"{label} L{phase}" if colon else label


def power_buckets(history: list[Reading], now: float, span_s: float,
                  slots: int) -> list[tuple[int, float]]:
    """Mean power (W) per time slot over the `span_s` before `now`, for slots with readings.

    The hot loop of the status page (10 devices x an hour of readings on every refresh), so
    it looks the power keys up once and only falls back to `power_w` for odd readings.
    """
    start = now - span_s
    first = bisect.bisect_left(history, start, key=_time_of)
    keys = energy_keys(history[-1]) if history else {}
    plus, minus = keys.get("P+"), keys.get("P-")
    sums, counts = [0.0] * slots, [0] * slots
    per_s, last = slots / span_s, slots - 1
    for reading in itertools.islice(history, first, None):
        p, m = reading.get(plus), reading.get(minus)
        try:
            watts = (p - m if m is not None else p + 0.0) if p is not None else -m
        except TypeError:  # neither key (another kind of reading), or not numbers
            watts = power_w(reading)
            if watts is None:
                continue
        slot = int((reading["time"] - start) * per_s)
        if slot > last:  # a reading from the future (the wall clock went back)
            slot = last
        sums[slot] += watts
        counts[slot] += 1
    means = [(slot, sums[slot] / n) for slot, n in enumerate(counts) if n]
    return [(slot, watts) for slot, watts in means if math.isfinite(watts)]


def window(history: list[Reading], since: float | None, until: float | None) -> list[Reading]:
    """The readings with since <= time <= until of an oldest-first history."""
    low = 0 if since is None else bisect.bisect_left(history, since, key=_time_of)
    high = len(history) if until is None else bisect.bisect_right(history, until, key=_time_of)
    return history[low:high]


def newest_first(histories: dict[str, list[Reading]]) -> Iterator[tuple[str, Reading]]:
    """(device, reading) of several oldest-first histories merged, newest first."""
    streams = ([(name, r) for r in reversed(rows)] for name, rows in histories.items())
    return heapq.merge(*streams, key=lambda item: item[1]["time"], reverse=True)


def _time_of(reading: Reading) -> float:
    return reading["time"]


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# -- devices and the site -----------------------------------------------------------------

def health(device: dict) -> tuple[str, str]:
    """(level, label): level is ok / warn / bad / idle, the label says why in a few words."""
    state = device.get("state")
    if state == "backoff":
        retry = _number(device.get("retry_in_s"))
        return "bad", "restarting" + ("" if retry is None else f" in {retry:.0f} s")
    if state == "fatal":
        return "bad", "FATAL: stopped until reload"
    if state != "running":
        return "idle", str(state or "unknown")
    connection = device.get("connection")
    if connection == "auth_failed":
        return "bad", "auth failed"
    if connection == "registering":
        return "warn", "waiting for registration"
    if device.get("degraded"):
        return "warn", f"degraded: {device['degraded']}"
    if device.get("connected"):
        return "ok", "online"
    if connection == "not_configured":
        return "warn", "offline: no uplink configured"
    if connection == "comms_loss":
        return "warn", "offline: simulated comms_loss"
    return "warn", f"offline ({connection})" if connection else "offline"


def summary(devices: list[dict]) -> dict[str, float | None]:
    """Site power now (W) per device kind, as each kind shows it (`Kind.shown_power`: PV
    generation positive, grid import + / export -), None for a kind without a reading.

    Only running devices count: a dead child's last reading is not "now"."""
    totals: dict[str, float | None] = dict.fromkeys(KINDS)
    for device in devices:
        if device.get("state") != "running":
            continue
        kind, watts = KINDS.get(device.get("type")), power_w(device.get("last_reading"))
        if kind and watts is not None:
            totals[kind.name] = (totals[kind.name] or 0.0) + kind.shown_power(watts)
    return totals


def readiness(view: dict, max_queued: int = READY_MAX_QUEUED) -> list[str]:
    """Why the agent is not ready (empty: ready): a device not running or queue too deep."""
    problems = []
    for device in view.get("devices", ()):
        name, queued = device.get("name"), device.get("queued") or 0
        if device.get("state") != "running":
            problems.append(f"{name}: {device.get('state')}")
        elif queued >= max_queued:
            problems.append(f"{name}: {queued} queued (limit {max_queued})")
    if not view.get("devices"):
        problems.append("no devices")
    return problems


# -- formatting ---------------------------------------------------------------------------

def fmt_power(watts: float | None) -> str:
    if watts is None:
        return MISSING
    if abs(watts) < 0.5:
        return "0 W"  # not "-0 W"
    if abs(watts) >= 999.5:
        return f"{watts / 1000:.2f} kW"
    return f"{watts:.0f} W"


def fmt_value(value, unit: str = "") -> str:
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}".replace(",", "\u202f")
    elif value is None:
        return MISSING
    else:
        text = str(value)
    return f"{text}\u202f{unit}" if unit else text


def fmt_count(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return MISSING if value is None else str(value)
    return f"{value:,}".replace(",", "\u202f")


def fmt_age(seconds: float | None) -> str:
    """A duration in the largest units that matter: 42 s, 5 min, 2 h 10 min, 3 d 4 h."""
    seconds = _number(seconds)
    if seconds is None:
        return MISSING
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours < 2:
        return f"{minutes} min"
    if days < 2:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def fmt_since(epoch: float | None, now: float | None = None) -> str:
    """A wall-clock time as HH:MM:SS (with the date if not today) and how long ago."""
    epoch = _number(epoch)
    if epoch is None:
        return MISSING
    now = time.time() if now is None else now
    local, today = time.localtime(epoch), time.localtime(now)
    clock = time.strftime("%H:%M:%S" if local[:3] == today[:3] else "%Y-%m-%d %H:%M", local)
    return f"{clock} ({fmt_age(now - epoch)} ago)"


def fmt_clock(epoch: float, now: float | None = None) -> str:
    """HH:MM:SS, with the date in front unless it is today."""
    local, today = time.localtime(epoch), time.localtime(time.time() if now is None else now)
    return time.strftime("%H:%M:%S" if local[:3] == today[:3] else "%Y-%m-%d %H:%M:%S", local)



def fmt_faults(device: dict, now: float | None = None) -> str | None:
    """The device's active faults and forced weather, each with its end; None if none."""
    items = []
    for item in device.get("faults") or ():
        if not (isinstance(item, list) and len(item) == 3):
            continue
        name, where, end = item
        whose = f" ({where})" if where and where != device.get("name") else ""
        ends = _number(end)
        until = f" until {fmt_clock(ends, now)}" if ends is not None else ""
        items.append(f"{'weather ' if not where else ''}{name}{whose}{until}")
    return ", ".join(items) or None


def fmt_overrides(device: dict) -> str | None:
    """The settings set from Cumulocity (they win over the YAML file's); None if none."""
    overrides = device.get("overrides")
    if not isinstance(overrides, dict) or not overrides:
        return None
    return ", ".join(f"{key}={value:g}" if isinstance(value, (int, float)) else f"{key}={value}"
                     for key, value in overrides.items())
