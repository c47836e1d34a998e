"""This machine's short, stable ID: what makes default external IDs unique per install.

Two Pis on one tenant must not share a client ID (the platform allows one session per ID:
they would knock each other off in a loop, and their data would land on one device). The ID
is 8 lower-case hex digits, from the first source that has one:

1. the Raspberry Pi's serial number (`/proc/device-tree/serial-number`, or the `Serial`
   line of `/proc/cpuinfo`): its last 8 digits, which is what differs between boards;
2. `/etc/machine-id` (systemd's, made once at install): its first 8 digits;
3. neither: 8 digits of a hash of the host name, with a warning (not stable if it changes).

`C8YSIM_MACHINE_ID_FILE` names a file to use instead of all of them (tests, containers that
share /etc/machine-id). Standard library only.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from functools import lru_cache

ENV_VAR = "C8YSIM_MACHINE_ID_FILE"
PI_SERIAL_FILE = "/proc/device-tree/serial-number"
CPUINFO_FILE = "/proc/cpuinfo"
MACHINE_ID_FILE = "/etc/machine-id"
LENGTH = 8

log = logging.getLogger(__name__)

try:  # Python's own SHA-256: hashlib would load OpenSSL's libcrypto (~3.5 MB) into the agent
    from _sha256 import sha256 as _sha256  # Python 3.11 (Debian 12)
except ImportError:  # 3.12 renamed it
    from hashlib import sha256 as _sha256


def host_id() -> str:
    """The ID of this machine (see the module doc); the same on every call."""
    return _host_id(os.environ.get(ENV_VAR) or None)


@lru_cache(maxsize=4)
def _host_id(override: str | None) -> str:
    if override:
        found = _hex(_read(override), last=False)
        if found:
            return found
        log.warning("%s=%s holds no hex ID; using this machine's own", ENV_VAR, override)
    found = (_hex(_read(PI_SERIAL_FILE), last=True) or _hex(_cpuinfo_serial(), last=True)
             or _hex(_read(MACHINE_ID_FILE), last=False))
    if found:
        return found
    name = socket.gethostname()
    log.warning("no Raspberry Pi serial number and no %s: the host ID comes from the host "
                "name %r and changes with it; set external_id per device", MACHINE_ID_FILE, name)
    return _sha256(name.encode()).hexdigest()[:LENGTH]


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(4096).decode("ascii", "replace")
    except OSError:
        return ""


def _cpuinfo_serial() -> str:
    match = re.search(r"^Serial\s*:\s*(\S+)", _read_all(CPUINFO_FILE), re.MULTILINE)
    return match.group(1) if match else ""


def _read_all(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(1 << 20)
    except OSError:
        return ""


def _hex(text: str, last: bool) -> str | None:
    """LENGTH lower-case hex digits of `text` (its last or first ones); None when it has
    fewer, or only zeros (boards and VMs without a serial number report zeros)."""
    digits = re.sub(r"[^0-9a-f]", "", text.strip("\x00 \n").lower())
    if len(digits) < LENGTH or not digits.strip("0"):
        return None
    return digits[-LENGTH:] if last else digits[:LENGTH]
