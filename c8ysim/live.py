"""What Cumulocity changed in the running site: faults, forced weather and device settings.

Owns the directory `<state>/live/`: one JSON file per device, `<device>.json`, written only
by that device's child and read by every child (and by `c8ysim backfill`), because the
household is one system: an inverter tripped from Cumulocity is missing generation at the
grid meter too. A file holds

    {"scenarios": [{"what", "name", "device", "start", "duration_s"}, ...],
     "params": {"peak_kw": 8.0, ...}, "interval_s": 5.0 or null}

the scenarios started by `c8y_Command` (once, from the time the command ran; kept
`KEEP_ENDED_S` after they end so a backfill still sees them; at most `MAX_SCENARIOS`) and the
settings set by `c8y_Configuration` that differ from the YAML file's. A file is replaced
whole (a temporary file renamed over it), so a reader sees the old or the new one, never
half of one; a reader notices a change by the names and inode numbers in the directory (one
directory read per check). What a file says is external input: a file that cannot be read or makes no sense is
logged once and left out, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, NamedTuple

from c8ysim.kinds import KINDS
from c8ysim.site import COMMS_LOSS, DAY_S, FAULT, WEATHER, WEATHER_KINDS, DeviceSpec, Scenario, Site

DIRECTORY = "live"
SUFFIX = ".json"
MAX_FILE_BYTES = 256 * 1024
MAX_SCENARIOS = 100  # per device; the oldest ended ones go first
KEEP_ENDED_S = 40 * DAY_S  # a backfill reaches back at most a year, but a month is plenty
MAX_DURATION_S = 7 * DAY_S  # a fault without a duration lasts until cleared, at most this

NOTHING: Mapping = MappingProxyType({})  # an Overlay without parameters or intervals

log = logging.getLogger(__name__)


class Overlay(NamedTuple):
    """Everything the site's live files say."""

    scenarios: tuple[Scenario, ...] = ()
    params: Mapping[str, Mapping[str, float]] = NOTHING  # device -> overrides
    intervals: Mapping[str, float] = NOTHING  # device -> interval_s

    def site(self, site: Site) -> Site:
        """`site` as the live files change it: overridden parameters, their scenarios added."""
        devices = tuple(DeviceSpec(d.kind, d.name, tuple({**dict(d.params),
                                                          **self.params.get(d.name, {})}.items()))
                        for d in site.devices)
        return site._replace(devices=devices, scenarios=site.scenarios + self.scenarios)


class LiveFiles:
    """The live files of one site, seen from one device (`device`: the one it may write)."""

    def __init__(self, state_dir: str | os.PathLike, device: str | None = None):
        self.directory = Path(state_dir) / DIRECTORY
        self.device = device
        self._seen: tuple | None = None  # names and inodes; None: no directory
        self._looked = False
        self._complained: set[tuple[str, str]] = set()

    def changed(self) -> bool:
        """Whether a file changed since the last `changed()` that said so (True the first
        time). Every write renames a new file (a new inode) into place, so the names and
        inode numbers in the directory (read without a `stat` per file) change with it; the
        directory's own time alone would miss two writes within one kernel clock tick."""
        try:
            with os.scandir(self.directory) as entries:
                signature = tuple(sorted((e.name, e.inode()) for e in entries))
        except OSError:
            signature = None
        if self._looked and signature == self._seen:
            return False  # a directory still missing is no change either (the usual case)
        self._looked, self._seen = True, signature
        return True

    def read(self) -> Overlay:
        """What every device's file says (a file that is not what we write is skipped)."""
        scenarios: list[Scenario] = []
        params: dict[str, dict[str, float]] = {}
        intervals: dict[str, float] = {}
        for path in self._files():
            data = self._load(path)
            if data is None:
                continue
            name = path.name[:-len(SUFFIX)]
            scenarios += [s for s in map(_scenario, _list(data.get("scenarios"))) if s]
            own = _params(data.get("params"))
            if own:
                params[name] = own
            if _number(data.get("interval_s")):
                intervals[name] = float(data["interval_s"])
        return Overlay(tuple(scenarios), params, intervals)

    # -- this device's own file -----------------------------------------------------------

    def own(self) -> dict:
        """This device's file as stored (empty parts if there is none, or it is unreadable)."""
        data = self._load(self._path()) or {}
        return {"scenarios": [item for item in _list(data.get("scenarios")) if _scenario(item)],
                "params": _params(data.get("params")),
                "interval_s": data.get("interval_s") if _number(data.get("interval_s")) else None}

    def add_scenario(self, scenario: Scenario, now: float) -> None:
        """Start `scenario` (a one-off window); a window of the same fault or weather this
        device started before and that is still open ends now (the new one replaces it)."""
        data = self.own()
        items = [_ended(item, now) if _same(item, scenario) else item for item in data["scenarios"]]
        items.append(_encode(scenario))
        data["scenarios"] = _pruned(items, now)
        self._write(data)

    def end_scenario(self, what: str, name: str, now: float) -> bool:
        """End this device's open windows of `name` now; False if none was open."""
        data = self.own()
        ended = False
        for index, item in enumerate(data["scenarios"]):
            if item["what"] == what and item["name"] == name and _open(item, now):
                data["scenarios"][index] = _ended(item, now)
                ended = True
        if ended:
            data["scenarios"] = _pruned(data["scenarios"], now)
            self._write(data)
        return ended

    def set_settings(self, params: dict[str, float], interval_s: float | None) -> None:
        data = self.own()
        data["params"], data["interval_s"] = params, interval_s
        self._write(data)

    # -- files ----------------------------------------------------------------------------

    def _path(self) -> Path:
        if self.device is None:
            raise ValueError("a reader of the live files cannot write them")
        return self.directory / f"{self.device}{SUFFIX}"

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir()
                          if p.name.endswith(SUFFIX) and not p.name.startswith("."))
        except OSError:
            return []

    def _load(self, path: Path) -> dict | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._complain(path, f"cannot open it: {exc.strerror}")
        try:
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    return self._complain(path, "not a regular file")
                raw = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            return self._complain(path, f"cannot read it: {exc.strerror}")
        if len(raw) > MAX_FILE_BYTES:
            return self._complain(path, f"larger than {MAX_FILE_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return self._complain(path, "not JSON")
        if not isinstance(data, dict):
            return self._complain(path, "not a JSON object")
        return data

    def _complain(self, path: Path, why: str) -> None:
        if (str(path), why) not in self._complained:
            self._complained.add((str(path), why))
            log.error("ignoring the live settings in %s: %s", path, why)
        return None

    def _write(self, data: dict) -> None:
        """Replace this device's file (OSError: it could not be written; nothing changed)."""
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        path = self._path()
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(data, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _params(value) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {k: float(v) for k, v in value.items()
            if isinstance(k, str) and _number(v) and v > 0
            and any(k in kind.params for kind in KINDS.values())}


def _scenario(item) -> Scenario | None:
    """A stored one-off window, or None if the item is not one we write."""
    if not isinstance(item, dict):
        return None
    what, name, device = item.get("what"), item.get("name"), item.get("device", "")
    start, duration = item.get("start"), item.get("duration_s")
    if not (_number(start) and _number(duration) and 0 <= duration <= MAX_DURATION_S
            and isinstance(device, str) and isinstance(name, str)):
        return None
    if what == WEATHER and name in WEATHER_KINDS and device == "":
        return Scenario(WEATHER, name, "", float(duration), start=float(start))
    known = {fault for kind in KINDS.values() for fault in kind.faults} | {COMMS_LOSS}
    if what == FAULT and name in known and device:
        return Scenario(FAULT, name, device, float(duration), start=float(start))
    return None


def _encode(scenario: Scenario) -> dict:
    return {"what": scenario.what, "name": scenario.name, "device": scenario.device,
            "start": scenario.start, "duration_s": scenario.duration_s}


def _same(item: dict, scenario: Scenario) -> bool:
    return (item["what"], item["name"], item["device"]) == \
        (scenario.what, scenario.name, scenario.device)


def _open(item: dict, now: float) -> bool:
    return item["start"] <= now < item["start"] + item["duration_s"]


def _ended(item: dict, now: float) -> dict:
    """`item` ending at `now` if it is open then (a window not yet started is dropped: 0 s)."""
    if not _open(item, now) and item["start"] <= now:
        return item
    return {**item, "duration_s": max(0.0, now - item["start"])}


def _pruned(items: list[dict], now: float) -> list[dict]:
    """Without empty windows and those ended long ago; at most MAX_SCENARIOS, newest kept."""
    kept = [item for item in items if item["duration_s"] > 0
            and item["start"] + item["duration_s"] > now - KEEP_ENDED_S]
    return kept[-MAX_SCENARIOS:]
