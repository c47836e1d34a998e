"""Durations as people write them: `30s`, `10m`, `2h`, `7d`, or plain seconds.

One rule for the YAML's scenarios, `c8y_Command` and `c8ysim backfill --since`. A leaf
module: standard library only.
"""

from __future__ import annotations

import re

UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EXAMPLES = "30s, 10m, 2h or 7d"
_DURATION = re.compile(r"\s*(\d{1,9}(?:\.\d{1,6})?)\s*([smhd]?)\s*")


def parse(text: str, max_s: float) -> float:
    """Seconds, more than 0 and at most `max_s`; ValueError saying what is allowed."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"'{str(text)[:40]}' is not a duration like {EXAMPLES}")
    seconds = float(match.group(1)) * UNITS_S[match.group(2) or "s"]
    if not 0 < seconds <= max_s:
        raise ValueError(f"a duration must be more than 0 and at most {describe(max_s)}")
    return seconds


def describe(seconds: float) -> str:
    """The shortest exact way to write `seconds` (`90m`, `2h`, `1d`; `1.5s`)."""
    for unit in ("d", "h", "m"):
        if seconds >= UNITS_S[unit] and seconds % UNITS_S[unit] == 0:
            return f"{seconds // UNITS_S[unit]:.0f}{unit}"
    return f"{seconds:g}s"
