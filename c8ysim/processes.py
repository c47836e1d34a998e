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


def _find_prctl():
    """libc's prctl, looked up once at import, i.e. in the supervisor before it forks: a
    ctypes lookup makes a new function-pointer class, and doing it in every child wrote
    ~0.3 MB of its private memory. None without a libc that has it."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def die_with_parent(parent_pid: int) -> None:
    """In a fresh child: get SIGTERM when the supervisor dies, and exit if it already has.

    The getppid() check closes the race of a parent that died before the prctl() call.
    """
    if _PRCTL is not None:  # without it device.py's ppid check ends the child within a turn
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def set_process_name(name: str) -> None:
    """Set the kernel's comm name (shown by ps -o comm, top), best effort."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
