"""Store and forward: the Buffer contract every backend implements, and `open_buffer()`.

A buffer holds what goes on the wire (topic + payload bytes + created time), oldest first.
A row leaves the buffer only when the broker acknowledged it (`ack`), is moved aside because
it can never be sent (`quarantine`), or is dropped by the size/age bounds (counted). Next to
the queue each buffer keeps a small durable key/value area for device state (registration,
pending operation, energy registers), written in the same transaction as the readings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol


@dataclass(frozen=True)
class Record:
    id: int
    topic: str
    payload: bytes
    created: float  # epoch seconds when the record was queued


@dataclass(frozen=True)
class BufferStats:
    depth: int
    oldest_age_s: float | None
    bytes: int
    dropped: int
    quarantined: int


class Buffer(Protocol):
    def put_many(self, items: Iterable[tuple[str, bytes, float]],
                 meta: Mapping[str, str] | None = None) -> None:
        """Append (topic, payload, created) rows and set meta keys, in one transaction."""

    def peek(self, limit: int, after_id: int = 0) -> list[Record]:
        """Up to `limit` oldest rows with id > after_id, in id order."""

    def ack(self, ids: Iterable[int]) -> None:
        """Delete rows the broker acknowledged."""

    def quarantine(self, ids: Iterable[int], reason: str) -> None:
        """Move rows that can never be sent out of the queue, keeping them for inspection."""

    def stats(self, now: float) -> BufferStats: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or with None delete) one durable device-state key."""

    def close(self) -> None: ...


def open_buffer(storage, device_name: str) -> Buffer:
    """Open the configured backend's buffer for one device (call it after fork)."""
    if storage.backend == "postgres":
        raise NotImplementedError("the PostgreSQL backend is not built yet")
    from agent.storage.sqlite import SqliteBuffer

    return SqliteBuffer.open_in(storage, device_name)
