"""What can change a running device besides its YAML: the schedule and Cumulocity.

Owns, for one device child, the site as it is now (the YAML's site with its scenarios, plus
what the live files say: `c8ysim.live`), the actions its supported operations run
(`c8y_Command`, `c8y_Configuration`, `c8y_MeasurementRequestOperation`), and the questions
the device loop asks each turn: did the site change (build the model again), is this
device's uplink down on purpose (`comms_loss`), which faults are active (the heartbeat's
`faults`), what settings are overridden. Fault starts and ends are logged at notice.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from c8ysim import device_settings, logs
from c8ysim.commands import Commands, Context
from c8ysim.config import Config, DeviceConfig
from c8ysim.kinds import KINDS
from c8ysim.live import LiveFiles, Overlay
from c8ysim.sim.clock import local_time, zone
from c8ysim.site import COMMS_LOSS, FAULT, Site

COMMAND, CONFIGURATION, MEASUREMENT = (
    "c8y_Command", "c8y_Configuration", "c8y_MeasurementRequestOperation")

CHECK_EVERY_S = 0.25  # a change another device made reaches this one within this

log = logging.getLogger(__name__)


class Control:
    def __init__(self, config: Config, device: DeviceConfig, take_reading: Callable[[], str],
                 status: Callable[[], str], clock: Callable[[], float] = time.time):
        self.config, self.device, self.clock = config, device, clock
        self.take_reading = take_reading
        self.live = LiveFiles(config.storage.path, device.name)
        self.tz = zone(config.site.timezone)
        self.overlay = Overlay()
        self.next_check = 0.0  # monotonic time the live files are looked at next
        self.site: Site = config.site
        self.active: dict[tuple[str, str], float] = {}  # (name, device) -> end, as last logged
        # whose faults every device feels (a grid outage): the household-wide devices
        self.felt = {d.name for d in config.devices if KINDS[d.type].site_wide} | {"", device.name}
        self.commands = Commands(Context(device.name, device.type, config.site.timezone,
                                         self.live, take_reading, status, clock))
        self.refresh()

    # -- what the device loop asks ------------------------------------------------------

    def refresh(self) -> bool:
        """Read the live files if they changed (looked at every CHECK_EVERY_S at most);
        True when the site or settings did."""
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + CHECK_EVERY_S
        if not self.live.changed():
            return False
        overlay = self.live.read()
        site = overlay.site(self.config.site)
        changed = site != self.site or overlay.intervals != self.overlay.intervals
        self.overlay, self.site = overlay, site
        return changed

    @property
    def interval_s(self) -> float:
        return self.overlay.intervals.get(self.device.name, self.device.interval_s)

    @property
    def overrides(self) -> dict[str, float]:
        """This device's settings set from Cumulocity that differ from the YAML file's now
        (interval_s among them; a file edited to the same value ends the override)."""
        in_file = {**KINDS[self.device.type].params, **dict(self.device.params)}
        own = {k: v for k, v in self.overlay.params.get(self.device.name, {}).items()
               if in_file.get(k) != v}
        interval = self.overlay.intervals.get(self.device.name)
        if interval is not None and interval != self.device.interval_s:
            own["interval_s"] = interval
        return own

    def faults(self, now: float) -> list[list]:
        """[[name, device, end], ...]: the faults of this device, those of the site's other
        devices that it feels (a grid outage), and forced weather; logs starts and ends."""
        offset = local_time(now, self.tz).utc_offset_s
        active = {(s.name, s.device): end for s, end in self.site.active(now, offset)
                  if s.device in self.felt}
        self._log_changes(active)
        return [[name, device, round(end, 3)] for (name, device), end in sorted(active.items())]

    def outage_until(self, now: float) -> float | None:
        """The end of this device's comms_loss window open at `now`, or None. Asked every
        turn of the device loop: without such a scenario it costs no time-zone lookup."""
        own = [s for s in self.site.scenarios
               if s.what == FAULT and s.name == COMMS_LOSS and s.device == self.device.name]
        if not own:
            return None
        offset = local_time(now, self.tz).utc_offset_s
        ends = [window[1] for s in own if (window := s.window(now, offset)) is not None]
        return max(ends) if ends else None

    def configuration(self) -> str:
        own = self.overlay.params.get(self.device.name, {})
        return device_settings.render(self.device, self.config.path, own,
                                      self.overlay.intervals.get(self.device.name))

    # -- the operations' actions ----------------------------------------------------------

    def actions(self) -> dict[str, Callable[[str], tuple[bool, str]]]:
        return {COMMAND: self.commands.run, CONFIGURATION: self._configure,
                MEASUREMENT: self._measure}

    def _configure(self, text: str) -> tuple[bool, str]:
        try:
            return device_settings.apply(text, self.device, self.live)
        except OSError as exc:
            return False, f"cannot store the settings: {exc.strerror or exc}"

    def _measure(self, text: str) -> tuple[bool, str]:
        self.take_reading()
        return True, ""

    def _log_changes(self, active: dict[tuple[str, str], float]) -> None:
        for (name, device), end in active.items():
            if (name, device) not in self.active:
                log.log(logs.NOTICE, "%s%s started, until %s", name,
                        f" on {device}" if device else " (site weather)", _clock(end))
        for (name, device) in self.active.keys() - active.keys():
            log.log(logs.NOTICE, "%s%s ended", name, f" on {device}" if device else "")
        self.active = active


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
