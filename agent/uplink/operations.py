"""Device operations arriving on `s/ds`: only `c8y_Restart` (510), handled one at a time.

The restart's progress lives in the device's durable store, so it survives the restart it
causes (and any crash on the way):

    510 -> marker "accepted" -> 501 -> (PUBACK) marker "executing" -> the child exits
    new child, online -> 503 -> (PUBACK) marker cleared

A child that comes up with the marker still "accepted" cannot know whether the platform saw
its 501, so it reports 502 with a reason; any restart still PENDING is re-sent after the
following 500. Either way no operation is left stuck in EXECUTING. Static `510` lines carry
no operation ID, so while a restart is in progress a repeated 510 is ignored.
"""

from __future__ import annotations

import logging
from typing import Callable

from agent.storage import Buffer
from agent.uplink import smartrest

RESTART_FRAGMENT = "c8y_Restart"
RESTART_TEMPLATE = 510
RESTART_MARKER_KEY = "operation.c8y_Restart"
ACCEPTED, EXECUTING = "accepted", "executing"
INTERRUPTED_REASON = "Agent restarted before the restart could start"

log = logging.getLogger(__name__)

# publish(SmartREST line, called once the broker acknowledged it)
Publish = Callable[[str, Callable[[], None]], None]


class Operations:
    def __init__(self, external_id: str, buffer: Buffer):
        self.external_id, self.buffer = external_id, buffer
        self.restart_requested = False  # the device loop exits the child when set

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
        """Act on one `s/ds` message (several lines possible); never raises on bad input."""
        operations, rejected = smartrest.split_operations(payload)
        for line in rejected:
            log.warning("ignoring malformed operation line: %.200r", line)
        for operation in operations:
            if operation.external_id != self.external_id:
                log.info("ignoring operation %d for another device (%.80s)",
                         operation.template, operation.external_id)
            elif operation.template == RESTART_TEMPLATE:
                self._start_restart(publish)
            else:
                log.warning("ignoring unsupported operation %d", operation.template)

    def _start_restart(self, publish: Publish) -> None:
        if self.restart_requested or self.buffer.get_meta(RESTART_MARKER_KEY):
            log.info("a restart is already in progress; ignoring the repeated 510")
            return
        log.info("restart requested; reporting c8y_Restart executing")
        self.buffer.set_meta(RESTART_MARKER_KEY, ACCEPTED)
        publish(smartrest.operation_executing(RESTART_FRAGMENT), self._executing)

    def _executing(self) -> None:
        self.buffer.set_meta(RESTART_MARKER_KEY, EXECUTING)
        self.restart_requested = True

    def _clear(self) -> None:
        self.buffer.set_meta(RESTART_MARKER_KEY, None)
