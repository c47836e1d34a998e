"""systemd notifications (READY, STATUS, WATCHDOG, RELOADING, STOPPING) via `sdnotify`.

The only module that imports sdnotify. Outside systemd ($NOTIFY_SOCKET unset) it is silent.
"""

from __future__ import annotations

import logging
import os

import sdnotify

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self):
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        # debug=True makes sdnotify raise instead of swallowing errors: a broken socket
        # (e.g. AF_UNIX forbidden by the unit) must show in the log, not time the start out.
        self._notifier = sdnotify.SystemdNotifier(debug=True) if self.enabled else None

    def notify(self, state: str) -> None:
        if not self._notifier:
            return
        try:
            self._notifier.notify(state)
        except OSError as exc:
            log.error("cannot notify systemd (%s): %s", state.split("=")[0], exc)
