"""State of one client connection (and, once accepted, one MQTT session).

Owns the per-connection facts: client key and session number, keepalive,
the will, granted subscriptions, the 500/s/ds bookkeeping of checker rule 5,
packet ids in flight in both directions and withheld acknowledgements.
"""

from __future__ import annotations

import asyncio


class Connection:
    """One TCP connection; ``key`` is ``<ip:port>`` until CONNECT names it."""

    def __init__(self, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.key = f"<{peer[0]}:{peer[1]}>" if peer else "<unknown>"
        self.accepted = False
        self.session = 0
        self.keepalive = 0
        self.will: tuple[str, bytes, int, bool] | None = None
        self.subs: dict[str, int] = {}
        self.ds_acked = False
        self.sent_500 = False
        self.publishes = 0
        self.rate_limited = False
        self.next_pid = 1
        self.inflight: dict[int, str] = {}   # outbound pid -> "puback" | "pubrec" | "pubcomp"
        self.qos2_in: set[int] = set()
        self.withheld: list[bytes] = []
        self.closed = False
        self.task: asyncio.Task | None = None

    def alloc_pid(self) -> int:
        for _ in range(65535):
            pid = self.next_pid
            self.next_pid = pid % 65535 + 1
            if pid not in self.inflight:
                return pid
        raise RuntimeError("no free packet id")
