"""The ledger: a small file beside a device's buffer that outlives the buffer itself.

`<state dir>/<device>.ledger.json` holds the device state the buffer's meta holds (energy
registers, pending restart) and counters the buffer cannot keep about itself: the rows it
knew it held (`queued`), the rows known lost (`lost`) and the rows delivered straight from
the memory overflow that never reached a file (`bypassed`: with the file's AUTOINCREMENT
high-water they account for every row the device ever buffered). When the buffer's file is lost
(deleted, truncated, overwritten, corrupt), a fresh file starts from the ledger's state, so
energy registers never go back, and the rows the old file held are counted as lost.

It is written after the buffer's transaction, once per tick: a new file, fsynced, renamed
over the old one, so a crash leaves the old or the new version, never a torn one. The
device's loop writes the tick's rows first and this file second, and its session publishes
only after both: every register value that reached Cumulocity is in the ledger too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from agent.storage.bursts import BurstLog

log = logging.getLogger(__name__)


class Ledger:
    def __init__(self, path: str):
        self.path = path
        self.meta: dict[str, str] = {}
        self.queued = self.lost = self.bypassed = 0
        self.failures = BurstLog(log)
        self._load()

    @classmethod
    def beside(cls, storage, device_name: str) -> "Ledger":
        return cls(str(Path(storage.path) / f"{device_name}.ledger.json"))

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as file:
                data = json.load(file)
            self.meta = {str(k): str(v) for k, v in dict(data.get("meta", {})).items()}
            self.queued = max(0, int(data.get("queued", 0)))
            self.lost = max(0, int(data.get("lost", 0)))
            self.bypassed = max(0, int(data.get("bypassed", 0)))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("%s is unreadable (%s); starting it anew", self.path, exc)

    def update(self, meta: dict[str, str | None], queued: int | None = None) -> None:
        for key, value in meta.items():
            if value is None:
                self.meta.pop(key, None)
            else:
                self.meta[key] = value
        if queued is not None:
            self.queued = queued

    def save(self) -> None:
        """Write it durably; on trouble (disk full) log once per burst and go on."""
        data = json.dumps({"meta": self.meta, "queued": self.queued, "lost": self.lost,
                           "bypassed": self.bypassed})
        temp = f"{self.path}.tmp"
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except OSError as exc:
            self.failures(logging.WARNING, "cannot write %s: %s", self.path, exc.strerror)
