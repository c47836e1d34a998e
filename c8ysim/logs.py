"""Logging to stderr with syslog priority prefixes, for journald (`SyslogLevelPrefix=yes`).

`journalctl -u c8ysim -p warning` then filters by level. Every line names its source: the
supervisor or the device a child runs.

One record is one line. The formatter escapes every line break and control character of
the message (`\\n`, `\\r`, `\\t`, `\\x1b`, `\\u2028`, ...) and caps the line's length, so no text
that reaches a log call - from the broker, a config file, an HTTP request - can start a
line of its own (a forged `<0>` priority) or reach journald's line limit (whose overflow
would lose its prefix). Only our own tracebacks span several lines, each with the prefix.
External text is also cut short where it is logged: `external(text)`. A run of similar
events is logged once per burst (`BurstLog`), a stream of them within a budget (`LineBudget`).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Callable

NOTICE = 25  # between INFO and WARNING: state changes worth seeing at `-p notice`
logging.addLevelName(NOTICE, "NOTICE")
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, NOTICE: 5, logging.WARNING: 4,
                   logging.ERROR: 3, logging.CRITICAL: 2}
MAX_LINE_CHARS = 8192  # x 4 UTF-8 bytes stays under journald's LineMax (48 KiB)
EXTERNAL_LIMIT_BYTES = 200
BURST_QUIET_S = 60.0

# C0, DEL, C1, and what str.splitlines() or a terminal also takes for a line break.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """`text` with every control character as a visible escape: one printable line."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match) -> str:
    char = match[0]
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def external(data: bytes | bytearray | memoryview | str | None,
             limit: int = EXTERNAL_LIMIT_BYTES) -> str:
    """Text from outside (the broker, a file, a request) made fit for one log line:
    decoded as UTF-8 with replacement, cut to `limit` bytes with a "…(N more bytes)"
    marker, and escaped. Only the first `limit` bytes are ever decoded."""
    if data is None:
        return ""
    if isinstance(data, str):
        if len(data) <= limit:  # at most `limit` characters; a cheap common case
            return escape(data)
        data = data.encode("utf-8", "replace")
    data = bytes(data) if not isinstance(data, bytes) else data
    more = len(data) - limit
    text = escape(data[:limit].decode("utf-8", "replace"))
    return f"{text}…({more} more bytes)" if more > 0 else text


def one_line(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """`text` escaped and capped to `limit` characters (cut before escaping: O(limit))."""
    more = len(text) - limit
    text = escape(text[:limit] if more > 0 else text)
    if len(text) > limit:
        more, text = max(more, 0) + len(text) - limit, text[:limit]
    return f"{text}…({more} more characters)" if more > 0 else text


def repr_without(record: tuple, hidden: tuple[str, ...] = ("password",)) -> str:
    """`Name(field=value, ...)` of a named tuple without its `hidden` fields: the repr of a
    record that holds a secret, so that no log line or traceback shows it."""
    shown = ", ".join(f"{name}={value!r}" for name, value in zip(record._fields, record)
                      if name not in hidden)
    return f"{type(record).__name__}({shown})"


class LineBudget:
    """At most `lines` log lines per `window_s` for one kind of external input (a flood
    of broker messages must not become a flood of journal lines); the lines held back
    are counted, and the next line let through says how many there were."""

    def __init__(self, logger: logging.Logger, lines: int, window_s: float, clock):
        self.logger, self.lines, self.window_s, self.clock = logger, lines, window_s, clock
        self.window_start = float("-inf")
        self.used = 0
        self.held_back = 0

    def __call__(self, level: int, message: str, *args) -> bool:
        """Log (True) or count (False) one line."""
        now = self.clock()
        if now - self.window_start >= self.window_s:
            self.window_start, self.used = now, 0
        if self.used >= self.lines:
            self.held_back += 1
            return False
        self.used += 1
        if self.held_back:
            message += f" ({self.held_back} similar lines held back before this one)"
            self.held_back = 0
        self.logger.log(level, message, *args)
        return True



class BurstLog:
    """Log once per burst: the first of a run of similar events is logged, the rest only
    counted. A burst ends after `quiet_s` without such an event; the next one is logged
    again, with the number of events that were kept quiet since the last line."""

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

class SyslogPrefixFormatter(logging.Formatter):
    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r} (unformattable: {exc!r})"
        text = f"<{priority}>{one_line(f'{self.source}: {message}')}"
        extra = []
        if record.exc_info:
            extra.append(self.formatException(record.exc_info))
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for block in extra:  # our own traceback: several lines, each with its prefix
            text += "".join(f"\n<{priority}>{one_line(part)}" for part in block.split("\n"))
        return text


def setup(level: str, source: str) -> None:
    """(Re)configure the root logger: one stderr handler naming `source`."""
    root = logging.getLogger()
    handlers = root.handlers
    if (len(handlers) == 1 and isinstance(handlers[0].formatter, SyslogPrefixFormatter)
            and getattr(handlers[0], "stream", None) is sys.stderr):
        # Ours already (a forked child, a reload): only rename the source. Replacing the
        # handler, and setLevel() clearing every logger's cache, wrote ~0.4 MB of pages
        # each child otherwise shares with the supervisor.
        handlers[0].formatter.source = source
    else:
        for handler in list(handlers):
            root.removeHandler(handler)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SyslogPrefixFormatter(source))
        root.addHandler(handler)
    if root.level != logging.getLevelName(level.upper()):
        root.setLevel(level.upper())


def speak_as(source: str) -> None:
    """Name `source` on the lines logged from now on (a group process: the device at work)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, SyslogPrefixFormatter):
            handler.formatter.source = source


def current_source() -> str | None:
    """The source the lines name now (None: logging is not set up by `setup`)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, SyslogPrefixFormatter):
            return handler.formatter.source
    return None
