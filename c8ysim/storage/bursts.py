"""Log once per burst: the first of a run of similar events is logged, the rest only counted.

A burst ends after `quiet_s` without such an event; the next one is logged again, with the
number of events that were kept quiet since the last line.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

BURST_QUIET_S = 60.0


class BurstLog:
    def __init__(self, logger: logging.Logger, quiet_s: float = BURST_QUIET_S,
                 clock: Callable[[], float] = time.monotonic):
        self.logger, self.quiet_s, self.clock = logger, quiet_s, clock
        self.last: float | None = None
        self.quiet = 0

    def __call__(self, level: int, message: str, *args) -> None:
        now = self.clock()
        in_burst = self.last is not None and now - self.last < self.quiet_s
        self.last = now
        if in_burst:
            self.quiet += 1
            return
        if self.quiet:
            message += f" ({self.quiet} similar events since the last report)"
        self.logger.log(level, message, *args)
        self.quiet = 0
