"""What happened, per client: the tenant's record for tests to assert on.

Owns every ``Record`` of packets received and events on a connection, the
copies of PUBLISHes sent to each client, and the verdicts: checker-rule and
protocol ``violations``, ``warnings``, and ``internal_errors`` of the fake
itself.  Client keys are device parts of client IDs (see ``mqtt.client_key``).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import time
from typing import Any


@dataclasses.dataclass
class Record:
    """One thing a client did (or that happened to its connection).

    kind: connect | publish | will | oversize | subscribe | unsubscribe |
          puback | pubrec | pubrel | pubcomp | pingreq | disconnect |
          malformed | drop | sent (outbound PUBLISH, only in ``sent()``)
    time: ``time.monotonic()`` when it was processed.
    session: 1-based number of the accepted connection of this client
             (0 for refused connects and pre-CONNECT events).
    """

    kind: str
    time: float
    session: int
    topic: str | None = None
    payload: bytes | None = None
    qos: int | None = None
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    filters: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    granted: list[int] = dataclasses.field(default_factory=list)
    rc: int | None = None
    accepted: bool = True
    detail: str = ""
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def text(self) -> str:
        return (self.payload or b"").decode("utf-8", "replace")


class Journal:
    """Records, sent messages and verdicts; lives in the server thread."""

    def __init__(self) -> None:
        self._records: dict[str, list[Record]] = collections.defaultdict(list)
        self._sent: dict[str, list[Record]] = collections.defaultdict(list)
        self.violations: list[str] = []
        self.warnings: list[str] = []
        self.internal_errors: list[str] = []

    def record(self, key: str, kind: str, session: int = 0, **fields: Any) -> None:
        self._records[key].append(Record(kind, time.monotonic(), session, **fields))

    def record_sent(self, key: str, session: int, **fields: Any) -> None:
        self._sent[key].append(Record("sent", time.monotonic(), session, **fields))

    def violation(self, key: str, text: str) -> None:
        self.violations.append(f"{key}: {text}")

    def warning(self, key: str, text: str) -> None:
        self.warnings.append(f"{key}: {text}")

    def records(self, key: str) -> list[Record]:
        """A copy of the records of one client."""
        return copy.deepcopy(self._records.get(key, []))

    def sent(self, key: str) -> list[Record]:
        """A copy of the PUBLISHes sent to one client."""
        return copy.deepcopy(self._sent.get(key, []))
