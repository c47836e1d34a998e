"""The `c8y_Command` language: what a Cumulocity user may type in a device's Shell tab.

Never a shell: a handful of words of the simulator's own, one command per operation.

    help                                       what this says
    status                                     the device, its settings and active faults
    reading                                    take and send one reading now
    fault <name> [<duration>]                  break something (until cleared, at most 7d;
                                               comms_loss needs a duration, at most 1d)
    clear <name>                               end a fault (or `clear weather`)
    weather <clear|cloudy|overcast> [<duration>]   force the site's weather

Durations: `30s`, `10m`, `2h`, `1d`. The faults of a device are its kind's (`kinds.Kind.faults`)
and `comms_loss`, which every device has (its uplink goes down; it buffers meanwhile). A
fault or weather started here is written to the live files (`c8ysim.live`), so the whole
household sees it. `run()` answers (True, result) or (False, why), the text of the
operation's 503 or 502; it never raises on what a user typed.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable
from zoneinfo import ZoneInfo

from c8ysim import durations
from c8ysim.kinds import KINDS
from c8ysim.live import MAX_DURATION_S, LiveFiles
from c8ysim.site import COMMS_LOSS, FAULT, WEATHER, WEATHER_KINDS, Scenario

MAX_COMMAND_CHARS = 200
MAX_COMMS_LOSS_S = 86400.0  # offline on purpose for at most a day
MAX_RESULT_CHARS = 1000
HELP = ("commands: help | status | reading | fault <name> [<duration>] | clear <name> | "
        "weather <clear|cloudy|overcast> [<duration>]; durations like 30s, 10m, 2h; "
        "faults of this device: {faults}")


class Context:
    """What the commands act on: the device and the running parts it hands them."""

    def __init__(self, device: str, kind: str, timezone: str, live: LiveFiles,
                 take_reading: Callable[[], str], status: Callable[[], str],
                 clock: Callable[[], float] = time.time):
        self.device, self.kind, self.timezone, self.live = device, kind, timezone, live
        self.take_reading = take_reading  # takes a reading now; returns a summary of it
        self.status = status  # the device's status in one or a few lines
        self.clock = clock


class Commands:
    def __init__(self, context: Context):
        self.context = context
        self.faults = (*KINDS[context.kind].faults, COMMS_LOSS)

    def run(self, text: str) -> tuple[bool, str]:
        words = text.split() if isinstance(text, str) else []
        if len(text) > MAX_COMMAND_CHARS or not words:
            return False, "empty or over-long command; " + self.help()
        verb, args = words[0].lower(), words[1:]
        action = {"help": self._help, "status": self._status, "reading": self._reading,
                  "fault": self._fault, "clear": self._clear, "weather": self._weather}.get(verb)
        if action is None:
            return False, f"unknown command {verb[:40]!r}; " + self.help()
        try:
            ok, result = action(args)
        except OSError as exc:  # the live files cannot be written (disk full, permissions)
            return False, f"cannot store the change: {exc.strerror or exc}"
        return ok, result[:MAX_RESULT_CHARS]

    def help(self) -> str:
        return HELP.format(faults=", ".join(self.faults))

    def _help(self, args: list[str]) -> tuple[bool, str]:
        return True, self.help()

    def _status(self, args: list[str]) -> tuple[bool, str]:
        return (False, "status takes no arguments") if args else (True, self.context.status())

    def _reading(self, args: list[str]) -> tuple[bool, str]:
        return (False, "reading takes no arguments") if args else \
            (True, self.context.take_reading())

    def _fault(self, args: list[str]) -> tuple[bool, str]:
        if not args or len(args) > 2 or args[0] not in self.faults:
            return False, (f"usage: fault <name> [<duration>]; the faults of "
                           f"{self.context.device} are {', '.join(self.faults)}")
        if args[0] == COMMS_LOSS and len(args) < 2:  # offline, it could not hear a clear
            return False, (f"comms_loss needs a duration (at most "
                           f"{durations.describe(MAX_COMMS_LOSS_S)}): the device cannot "
                           "receive a clear while it is offline")
        limit = MAX_COMMS_LOSS_S if args[0] == COMMS_LOSS else MAX_DURATION_S
        return self._start(FAULT, args[0], self.context.device, args[1:], limit)

    def _weather(self, args: list[str]) -> tuple[bool, str]:
        if not args or len(args) > 2 or args[0] not in WEATHER_KINDS:
            return False, f"usage: weather <{'|'.join(WEATHER_KINDS)}> [<duration>]"
        return self._start(WEATHER, args[0], "", args[1:])

    def _start(self, what: str, name: str, device: str, args: list[str],
               limit: float = MAX_DURATION_S) -> tuple[bool, str]:
        try:
            duration = durations.parse(args[0], limit) if args else limit
        except ValueError as exc:
            return False, str(exc)
        now = self.context.clock()
        self.context.live.add_scenario(Scenario(what, name, device, duration, start=now), now)
        until = "until cleared" if not args else f"for {durations.describe(duration)}"
        subject = f"{name} on {device}" if device else f"weather {name}"
        return True, (f"{subject} from {self._time(now)} {until} "
                      f"(ends {self._time(now + duration)} at the latest)")

    def _clear(self, args: list[str]) -> tuple[bool, str]:
        if len(args) != 1 or args[0] not in (*self.faults, WEATHER):
            return False, f"usage: clear <{'|'.join((*self.faults, WEATHER))}>"
        what = WEATHER if args[0] == WEATHER else FAULT
        weather = [w for w in WEATHER_KINDS] if what == WEATHER else [args[0]]
        now = self.context.clock()
        ended = [name for name in weather if self.context.live.end_scenario(what, name, now)]
        if not ended:
            return False, (f"no {args[0]} started from Cumulocity is active on "
                           f"{self.context.device} (one scheduled in the YAML file ends on "
                           "its own)")
        return True, f"cleared {', '.join(ended)} at {self._time(now)}"

    def _time(self, epoch: float) -> str:
        return datetime.fromtimestamp(epoch, timezone.utc).astimezone(
            ZoneInfo(self.context.timezone)).isoformat(timespec="seconds")
