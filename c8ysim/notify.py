"""systemd notifications (READY, STATUS, WATCHDOG, RELOADING, STOPPING) via `sdnotify`.

The only module that imports sdnotify. Outside systemd ($NOTIFY_SOCKET unset) it is silent.
Errors are logged, never swallowed: a unit that forbids AF_UNIX would otherwise just time
out its start. A failed send is retried once on a fresh socket (systemd re-creates its
notify socket on `daemon-reexec`).
"""

from __future__ import annotations

import logging
import os

import sdnotify

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self):
        self.enabled = bool(os.environ.get(NOTIFY_SOCKET_ENV))
        self._notifier = None
        if self.enabled:
            try:
                self._notifier = _connect()
            except OSError as exc:
                log.error("cannot reach systemd's notify socket %s: %s",
                          os.environ.get(NOTIFY_SOCKET_ENV), exc)

    def notify(self, state: str) -> None:
        """Send `state` (e.g. "READY=1", "STATUS=3/3 devices online") to systemd."""
        if not self.enabled:
            return
        try:
            self._send(state)
        except OSError:
            self.close()
            try:
                self._send(state)
            except OSError as exc:
                log.error("cannot notify systemd (%s): %s", state.split("=")[0], exc)

    def _send(self, state: str) -> None:
        if self._notifier is None:
            self._notifier = _connect()
        self._notifier.notify(state)

    def close(self) -> None:
        """Close the socket (a forked child does this: it must not talk for the supervisor)."""
        if self._notifier is not None and self._notifier.socket is not None:
            self._notifier.socket.close()
        self._notifier = None


def _connect() -> sdnotify.SystemdNotifier:
    # debug=True makes sdnotify raise instead of swallowing errors.
    return sdnotify.SystemdNotifier(debug=True)
