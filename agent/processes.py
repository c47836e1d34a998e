"""Small Linux process helpers for the supervisor and its children (ctypes prctl, kill).

Everything here is best effort: on a kernel or libc without prctl the agent still works,
only the process names and the parent-death signal are missing.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_NAME = 15  # prctl(2)
PR_SET_PDEATHSIG = 1  # prctl(2)


def kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def watchdog_interval_s() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent_pid: int) -> None:
    """In a fresh child: get SIGTERM when the supervisor dies, and exit if it already has.

    The getppid() check closes the race of a parent that died before the prctl() call.
    """
    try:
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # device.py's ppid check still ends the child within a loop turn
    if os.getppid() != parent_pid:
        os._exit(1)


def set_process_name(name: str) -> None:
    """Set the kernel's comm name (shown by ps -o comm, top), best effort."""
    try:
        _libc().prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass
