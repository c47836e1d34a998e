"""Logging to stderr with syslog priority prefixes, for journald (`SyslogLevelPrefix=yes`).

`journalctl -u c8ysim -p warning` then filters by level. Every line names its source: the
supervisor or the device a child runs.
"""

from __future__ import annotations

import logging
import sys

NOTICE = 25  # between INFO and WARNING: state changes worth seeing at `-p notice`
logging.addLevelName(NOTICE, "NOTICE")
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, NOTICE: 5, logging.WARNING: 4,
                   logging.ERROR: 3, logging.CRITICAL: 2}


class SyslogPrefixFormatter(logging.Formatter):
    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6)
        text = f"<{priority}>{self.source}: {record.getMessage()}"
        if record.exc_info:
            trace = self.formatException(record.exc_info).replace("\n", f"\n<{priority}>")
            text += f"\n<{priority}>{trace}"
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
