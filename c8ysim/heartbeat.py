"""What a device child tells the supervisor once a second, and the words it uses.

`Heartbeat` is the one definition of the datagram: the child fills it (its buffer's counts,
its session's link and counters, its last reading) and sends `encode()`; the supervisor
keeps `decode()`'s result and shows its fields, under the same names, in the device view of
`/api/status` (see `DEVICE_VIEW_FIELDS`). `Link` is the session's state as the status page
shows it. A leaf module: standard library only, so both sides of the fork may import it.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import NamedTuple


class Link(StrEnum):
    """A device's uplink: the session's own states, and two that only the view knows."""

    DISCONNECTED = "disconnected"  # waiting to (re)connect
    CONNECTING = "connecting"  # TCP, TLS, CONNECT sent: waiting for the CONNACK
    INTRODUCING = "introducing"  # CONNACK'd: 100, 110/114/117, subscriptions under way
    REGISTERING = "registering"  # bootstrap: waiting to be accepted in Device registration
    ONLINE = "online"  # registered and subscribed: draining the buffer
    STOPPED = "stopped"  # closed for good (the device is stopping)
    AUTH_FAILED = "auth_failed"  # disconnected after the broker refused the credentials
    NOT_CONFIGURED = "not_configured"  # no `cumulocity` section: simulating and buffering
    OUTAGE = "comms_loss"  # a simulated comms_loss: offline on purpose, buffering


class Heartbeat(NamedTuple):
    """One beat. Counters count since the child started; times are epoch seconds."""

    pid: int | None = None  # None: no beat yet (in the supervisor's view only)
    time: float | None = None
    queued: int | None = None  # rows waiting in the buffer (None: unknown yet)
    oldest_queued_age_s: float | None = None
    dropped: int = 0  # rows dropped by the buffer's size or age bounds
    quarantined: int = 0  # rows set aside because they can never be sent
    lost: int = 0  # rows known lost with their store (kept across restarts by the ledger)
    degraded: str | None = None  # why the buffer is not working normally
    buffer_backend: str | None = None
    last_reading: dict | None = None  # {"time": t, "<fragment>.<series>": value, ...}
    units: dict | None = None  # {"<fragment>.<series>": unit} of the device's readings
    connection: Link = Link.NOT_CONFIGURED
    connected: bool = False
    connected_since: float | None = None
    inflight: int = 0  # rows published and not yet acknowledged
    sent: int = 0  # rows acknowledged by the broker
    reconnects: int = 0  # connections lost after being online
    attempts: int = 0  # connection attempts
    last_ack: float | None = None
    last_error: str | None = None
    inbound_dropped: int = 0  # s/ds and s/e messages dropped unread (too large, a flood)
    inbound_ignored: int = 0  # operation lines ignored (malformed, not ours, unsupported)
    rejected: int = 0  # error lines the platform sent on s/e for our lines (not the expected)
    rejections: list | None = None  # the last few: [[epoch, "the s/e line"], ...]
    drain_rate: float | None = None  # lines/s a backlog drains at now (uplink.pacing)
    faults: list | None = None  # active faults and forced weather: [[name, device, end], ...]
    overrides: dict | None = None  # settings set from Cumulocity: {"peak_kw": 8.0, ...}
    # Only from a group process (scale mode), which beats once a second for each device:
    device: str | None = None  # whose beat this is
    # the device's own lifecycle in its group: {"state": "running"|"backoff"|"fatal",
    # "restarts": n, "last_exit": str|None, "retry_in_s": s|None}
    member: dict | None = None

    def encode(self) -> bytes:
        # Its fields as they are: plain JSON values (a Link is a str).
        return json.dumps(self._asdict()).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Heartbeat":
        """The beat in `data`; ValueError when it is not one (a stray or garbled datagram)."""
        try:
            fields = json.loads(data)
            if not isinstance(fields, dict):
                raise TypeError("not an object")
            if "connection" in fields:
                fields["connection"] = Link(fields["connection"])
            return cls(**fields)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"not a heartbeat: {exc}") from None


# How a group's beat is routed; the supervisor reads them, the device view does not show them.
ROUTING_FIELDS = ("device", "member")
VIEWED_BEAT_FIELDS = tuple(name for name in Heartbeat._fields if name not in ROUTING_FIELDS)

# A device's fields before its first beat: unknown (shown as such), not zero.
UNKNOWN = {**dict.fromkeys(VIEWED_BEAT_FIELDS), "connected": False}

# The device view of /api/status: the beat's fields, then what the supervisor adds.
SUPERVISOR_FIELDS = ("name", "type", "external_id", "state", "restarts", "last_exit",
                     "retry_in_s")
DEVICE_VIEW_FIELDS = frozenset(VIEWED_BEAT_FIELDS) | frozenset(SUPERVISOR_FIELDS)


def viewed(beat: Heartbeat) -> dict:
    """The beat's fields as the device view shows them (without the routing fields). A
    shallow copy: the beat is frozen, and no reader changes what its fields hold."""
    return {k: v for k, v in zip(Heartbeat._fields, beat) if k not in ROUTING_FIELDS}
