"""Noticing steps of the wall clock (NTP, `date -s`, an RTC read late at boot).

The agent times everything on the monotonic clock and uses the wall clock only for what it
says: readings are stamped with it and aimed at its multiples of the interval. So a step
changes nothing but the timestamps from then on: forward, the skipped span has no readings and
the energy registers cover it in one step; back, timestamps repeat the span and the registers
hold until the clock passes the last reading (they never decrease). This module only makes a
step visible in the journal, once, where someone reading a chart with a gap or a repeat will
look.
"""

from __future__ import annotations

import time
from typing import Callable

STEP_THRESHOLD_S = 1.0  # NTP steps above 0.128 s; slewing moves far less between two checks


class StepWatch:
    """Compares the wall clock with the monotonic clock at each `check`."""

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.wall, self.monotonic = wall, monotonic
        self.offset = wall() - monotonic()

    def check(self) -> float:
        """Seconds the wall clock stepped since the last check (+ forward); 0.0 if it did not."""
        offset = self.wall() - self.monotonic()
        step, self.offset = offset - self.offset, offset
        return step if abs(step) >= STEP_THRESHOLD_S else 0.0


def describe(step_s: float) -> str:
    """The journal line for a step of `step_s` seconds."""
    if step_s > 0:
        return (f"the wall clock stepped forward by {step_s:.1f} s: readings follow it, with no "
                "readings for the skipped span (energy registers cover it)")
    return (f"the wall clock stepped back by {-step_s:.1f} s: readings follow it, so timestamps "
            "repeat that span; energy registers hold until it has passed")
