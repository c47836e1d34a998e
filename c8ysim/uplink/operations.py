"""Device operations arriving on `s/ds`: only `c8y_Restart` (510), handled one at a time.

The restart's progress lives in the device's durable store, so it survives the restart it
causes (and any crash on the way):

    510 -> marker "accepted" -> 501 -> (PUBACK) marker "executing" -> the child exits
    new child, online -> 503 -> (PUBACK) marker cleared

A child that comes up with the marker still "accepted" cannot know whether the platform saw
its 501, so it reports 502 with a reason; any restart still PENDING is re-sent after the
following 500. Either way no operation is left stuck in EXECUTING. Static `510` lines carry
no operation ID, so while a restart is in progress a repeated 510 is ignored.

Restarts are rate-limited (`RESTART_MIN_INTERVAL_S`, measured from the last accepted one,
kept durably so that it survives the restart): a 510 that comes too soon is refused with
501 then 502 and a reason, under the same marker, so it too ends FAILED and never stuck.

Everything logged about a payload is external text: escaped and truncated, and one payload
yields at most a few lines (the first line of each kind, then a count of the rest).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from c8ysim import logs
from c8ysim.storage import Buffer
from c8ysim.uplink import smartrest

RESTART_FRAGMENT = "c8y_Restart"
RESTART_TEMPLATE = 510
RESTART_MARKER_KEY = "operation.c8y_Restart"
ACCEPTED, EXECUTING = "accepted", "executing"
RESTART_ACCEPTED_AT_KEY = "operation.c8y_Restart.accepted_at"  # wall clock, epoch s
RESTART_MIN_INTERVAL_S = 60.0
INTERRUPTED_REASON = "Agent restarted before the restart could start"
TOO_SOON_REASON = ("Restart refused: the device restarted {ago:.0f} s ago "
                   "(at most one restart per {limit:.0f} s)")

log = logging.getLogger(__name__)

# publish(SmartREST line, called once the broker acknowledged it)
Publish = Callable[[str, Callable[[], None]], None]
# note(level, message, *args): log one line about external input (maybe rate-limited)
Note = Callable[..., object]


class Operations:
    def __init__(self, external_id: str, buffer: Buffer, note: Note | None = None,
                 clock: Callable[[], float] = time.time):
        self.external_id, self.buffer = external_id, buffer
        self.note = note or log.log
        self.clock = clock
        self.restart_requested = False  # the device loop exits the child when set
        self.ignored_lines = 0  # lines of s/ds payloads ignored (malformed, not ours, ...)
        self.refused_restarts = 0

    def resume(self, publish: Publish) -> None:
        """Finish a restart that was in flight; call once s/ds is subscribed."""
        marker = self.buffer.get_meta(RESTART_MARKER_KEY)
        if marker == EXECUTING:
            log.info("restart done; reporting c8y_Restart successful")
            publish(smartrest.operation_successful(RESTART_FRAGMENT), self._clear)
        elif marker == ACCEPTED:
            log.warning("a restart was interrupted before it started; reporting it failed")
            publish(smartrest.operation_failed(RESTART_FRAGMENT, INTERRUPTED_REASON),
                    self._clear)

    def handle(self, payload: bytes, publish: Publish) -> None:
        """Act on one `s/ds` message (several lines possible); never raises on bad input.

        Logs at most one line per kind of ignored line, plus one count of the rest."""
        operations, rejected = smartrest.split_operations(payload)
        ignored = _Ignored(self.note)
        for fields in rejected:
            ignored.add("malformed", logging.WARNING, "ignoring malformed operation line: %s",
                        logs.external(",".join(fields)))
        for operation in operations:
            if operation.external_id != self.external_id:
                ignored.add("other", logging.INFO,
                            "ignoring operation %d for another device (%s)",
                            operation.template, logs.external(operation.external_id, 80))
            elif operation.template == RESTART_TEMPLATE:
                self._start_restart(publish)
            else:
                ignored.add("unsupported", logging.WARNING, "ignoring unsupported operation %d",
                            operation.template)
        ignored.summarize()
        self.ignored_lines += ignored.count

    def _start_restart(self, publish: Publish) -> None:
        if self.restart_requested or self.buffer.get_meta(RESTART_MARKER_KEY):
            self.note(logging.INFO, "a restart is already in progress; ignoring the repeated 510")
            return
        too_soon = self._too_soon()
        self.buffer.set_meta(RESTART_MARKER_KEY, ACCEPTED)
        if too_soon:
            self.refused_restarts += 1
            self.note(logging.WARNING, "refusing c8y_Restart: %s", too_soon)
            publish(smartrest.operation_executing(RESTART_FRAGMENT),
                    lambda: publish(smartrest.operation_failed(RESTART_FRAGMENT, too_soon),
                                    self._clear))
            return
        log.info("restart requested; reporting c8y_Restart executing")
        self.buffer.set_meta(RESTART_ACCEPTED_AT_KEY, repr(self.clock()))
        publish(smartrest.operation_executing(RESTART_FRAGMENT), self._executing)

    def _too_soon(self) -> str | None:
        """The reason to refuse a restart now, or None."""
        try:
            ago = self.clock() - float(self.buffer.get_meta(RESTART_ACCEPTED_AT_KEY) or "nan")
        except ValueError:
            return None
        if 0 <= ago < RESTART_MIN_INTERVAL_S:  # NaN (none yet) and a clock stepped back: allow
            return TOO_SOON_REASON.format(ago=ago, limit=RESTART_MIN_INTERVAL_S)
        return None

    def _executing(self) -> None:
        self.buffer.set_meta(RESTART_MARKER_KEY, EXECUTING)
        self.restart_requested = True

    def _clear(self) -> None:
        self.buffer.set_meta(RESTART_MARKER_KEY, None)


class _Ignored:
    """The ignored lines of one payload: the first of each kind logged, the rest counted."""

    def __init__(self, note: Note):
        self.note, self.count, self.seen, self.quiet = note, 0, set(), 0

    def add(self, kind: str, level: int, message: str, *args) -> None:
        self.count += 1
        if kind in self.seen:
            self.quiet += 1
            return
        self.seen.add(kind)
        self.note(level, message, *args)

    def summarize(self) -> None:
        if self.quiet:
            self.note(logging.WARNING, "ignored %d more lines of the same s/ds message",
                      self.quiet)
