"""The ledger: a small file beside a device's buffer that outlives the buffer itself.

`<state dir>/<device>.ledger.json` holds the device state the buffer's meta holds (energy
registers, pending restart) and counters the buffer cannot keep about itself: the rows it
knew it held (`queued`), the rows known lost (`lost`) and the rows delivered straight from
the memory overflow that never reached a file (`bypassed`: with the file's AUTOINCREMENT
high-water they account for every row the device ever buffered). Each change of the device
state is numbered (`seq`), in the store's meta too, so the newer of the two wins at open.
When the buffer's file is lost (deleted, truncated, overwritten, corrupt), or its state is
older (the newest was in memory when the process ended), the store takes the ledger's: energy
registers never go back, and the rows a lost file held are counted.

It is written after the buffer's transaction, once per tick, so every register value that
reached Cumulocity is in it. The file has two fixed slots of SLOT_BYTES, written in turn in
place, each with a CRC: a crash mid-write leaves the other slot, and a full disk (the SD
card's most common end) does not stop it, since no block is ever allocated anew. It is as
durable as the buffer: fsynced per write only with `storage.synchronous: full`; otherwise,
like SQLite's WAL commits, it survives any crash of the process at once and a power cut once
the kernel wrote it back (seconds), and the kernel folds a tick's 4 KiB into few writes.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path

from c8ysim import logs

SLOT_BYTES = 4096
SLOTS = 2
META_SEQ_KEY = "buffer.meta_seq"  # the store's meta key for its device state's `seq`

log = logging.getLogger(__name__)


class Ledger:
    def __init__(self, path: str, durable: bool = False):
        self.path, self.durable = path, durable
        self.meta: dict[str, str] = {}
        self.queued = self.lost = self.bypassed = 0
        self.seq = 0  # of the device state: each change numbered, in the store's meta too
        self.writes = 0  # slot to write next = writes % SLOTS
        self.failures = logs.BurstLog(log)
        self._load()

    @classmethod
    def beside(cls, storage, device_name: str) -> "Ledger":
        return cls(str(Path(storage.path) / f"{device_name}.ledger.json"),
                   durable=storage.synchronous == "full")

    def update(self, meta: dict[str, str | None], queued: int | None = None) -> None:
        for key, value in meta.items():
            if value is None:
                self.meta.pop(key, None)
            else:
                self.meta[key] = value
        if queued is not None:
            self.queued = queued

    def save(self) -> None:
        """Write the next slot durably; on trouble log once per burst and go on."""
        self.writes += 1
        slot = _encode({"writes": self.writes, "seq": self.seq, "meta": self.meta,
                        "queued": self.queued, "lost": self.lost, "bypassed": self.bypassed})
        try:
            fd = self._open()
            try:
                if os.fstat(fd).st_size < SLOTS * SLOT_BYTES:  # new: both slots at once
                    os.pwrite(fd, slot * SLOTS, 0)
                else:
                    os.pwrite(fd, slot, (self.writes % SLOTS) * SLOT_BYTES)
                if self.durable:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
        except (OSError, ValueError) as exc:
            self.failures(logging.WARNING, "cannot write %s: %s", self.path,
                          getattr(exc, "strerror", None) or exc)

    def _open(self) -> int:
        """The file, opened anew at each save (it may have been deleted meanwhile); its
        directory is made only when it is missing (not a mkdir per tick)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            return os.open(self.path, flags, 0o600)

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as file:
                raw = file.read(SLOTS * SLOT_BYTES)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("%s is unreadable (%s); starting it anew", self.path, exc.strerror)
            return
        slots = [_decode(raw[i * SLOT_BYTES:(i + 1) * SLOT_BYTES]) for i in range(SLOTS)]
        valid = [s for s in slots if s is not None]
        if not valid:
            log.error("%s is unreadable (no valid slot); starting it anew", self.path)
            return
        data = max(valid, key=lambda s: s["writes"])
        self.writes, self.seq = data["writes"], data["seq"]
        self.meta, self.queued = data["meta"], data["queued"]
        self.lost, self.bypassed = data["lost"], data["bypassed"]


def _encode(data: dict) -> bytes:
    text = json.dumps(data, separators=(",", ":")).encode()
    body = b"%08x %s" % (zlib.crc32(text), text)
    if len(body) >= SLOT_BYTES:
        raise ValueError(f"the device state needs {len(body)} bytes, a slot has {SLOT_BYTES}")
    return body + b" " * (SLOT_BYTES - 1 - len(body)) + b"\n"


def _decode(slot: bytes) -> dict | None:
    """The slot's data, or None when it is torn, empty or not ours."""
    try:
        crc, text = slot.rstrip(b" \n\0").split(b" ", 1)
        if int(crc, 16) != zlib.crc32(text):
            return None
        data = json.loads(text)
        return {"writes": int(data["writes"]), "seq": int(data["seq"]),
                "meta": {str(k): str(v) for k, v in dict(data["meta"]).items()},
                "queued": max(0, int(data["queued"])), "lost": max(0, int(data["lost"])),
                "bypassed": max(0, int(data["bypassed"]))}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
