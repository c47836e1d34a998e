"""MQTT 3.1.1 codec, independent of paho and of ``c8ysim/``.

Owns the wire format: packet types, reading a packet off a stream, decoding
CONNECT / PUBLISH / SUBSCRIBE / UNSUBSCRIBE bodies, encoding the packets the
tenant sends, and the Cumulocity client-ID rule (ref §1.3).  Anything that
violates MQTT 3.1.1 raises ``Malformed``.  No state, no policy.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, NamedTuple

from .limits import MAX_PACKET_BYTES

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = range(1, 8)
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14


class Malformed(Exception):
    """A packet that violates MQTT 3.1.1; the connection gets closed."""


class Body:
    """Sequential reader over a packet's variable header and payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise Malformed("packet shorter than its fields")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Malformed("string is not valid UTF-8") from exc
        if "\x00" in text:
            raise Malformed("string contains U+0000")
        return text

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def left(self) -> int:
        return len(self.data) - self.pos


# ---------------------------------------------------------------- reading

async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes, int]:
    """Read one packet: (type, flags, body, total size in bytes)."""
    first = (await reader.readexactly(1))[0]
    length, mult, header = 0, 1, 1
    while True:
        byte = (await reader.readexactly(1))[0]
        header += 1
        length += (byte & 0x7F) * mult
        if not byte & 0x80:
            break
        mult *= 128
        if header > 4:
            raise Malformed("remaining length longer than 4 bytes")
    if length > MAX_PACKET_BYTES:
        raise Malformed(f"packet of {length} bytes exceeds the 1 MiB bound")
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body, header + length


class _ConnectFlags(NamedTuple):
    clean_session: bool
    will: bool
    will_qos: int
    will_retain: bool
    username: bool
    password: bool


def _connect_flags(flags: int) -> _ConnectFlags:
    """Decode and check the CONNECT flags byte."""
    if flags & 0x01:
        raise Malformed("CONNECT reserved flag set")
    parsed = _ConnectFlags(
        clean_session=bool(flags & 0x02), will=bool(flags & 0x04),
        will_qos=(flags >> 3) & 3, will_retain=bool(flags & 0x20),
        username=bool(flags & 0x80), password=bool(flags & 0x40))
    if parsed.will_qos == 3 or (not parsed.will and (parsed.will_qos or parsed.will_retain)):
        raise Malformed("inconsistent will flags")
    if parsed.password and not parsed.username:
        raise Malformed("password flag without username flag")
    return parsed


def parse_connect(body: bytes) -> dict[str, Any]:
    """Parse CONNECT; for non-3.1/3.1.1 levels only name and level are read."""
    reader = Body(body)
    info: dict[str, Any] = {"protocol_name": reader.string(),
                            "protocol_level": reader.u8()}
    if (info["protocol_name"], info["protocol_level"]) not in (("MQTT", 4), ("MQIsdp", 3)):
        return info
    flags = _connect_flags(reader.u8())
    info.update(clean_session=flags.clean_session, keepalive=reader.u16(),
                client_id=reader.string(), will_topic=None, will_payload=None,
                will_qos=flags.will_qos, will_retain=flags.will_retain)
    if flags.will:
        info["will_topic"], info["will_payload"] = reader.string(), reader.binary()
    info["username"] = reader.string() if flags.username else None
    info["password"] = reader.binary() if flags.password else None
    if reader.left():
        raise Malformed("trailing bytes after CONNECT payload")
    return info


def parse_publish(flags: int, body: bytes) -> dict[str, Any]:
    """Decode PUBLISH into the ``Record`` fields topic, payload, qos, retain,
    dup and packet_id."""
    qos, dup, retain = (flags >> 1) & 3, bool(flags & 8), bool(flags & 1)
    if qos == 3:
        raise Malformed("PUBLISH with QoS 3")
    reader = Body(body)
    topic = reader.string()
    if not topic or "+" in topic or "#" in topic:
        raise Malformed(f"invalid PUBLISH topic {topic!r}")
    pid = reader.u16() if qos else None
    if pid == 0:
        raise Malformed("PUBLISH with packet id 0")
    return dict(topic=topic, payload=reader.rest(), qos=qos, retain=retain, dup=dup,
                packet_id=pid)


def parse_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    """Packet id and (filter, requested QoS) pairs."""
    reader = Body(body)
    pid = reader.u16()
    filters = []
    while reader.left():
        topic_filter, qos = reader.string(), reader.u8()
        if qos > 2:
            raise Malformed(f"SUBSCRIBE with invalid QoS byte {qos:#x}")
        filters.append((topic_filter, qos))
    if not filters:
        raise Malformed("SUBSCRIBE without topic filters")
    return pid, filters


def parse_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    """Packet id and topic filters."""
    reader = Body(body)
    pid = reader.u16()
    filters = []
    while reader.left():
        filters.append(reader.string())
    if not filters:
        raise Malformed("UNSUBSCRIBE without topic filters")
    return pid, filters


def packet_id(body: bytes) -> int:
    """The packet id of PUBACK, PUBREC, PUBREL or PUBCOMP."""
    return Body(body).u16()


# ---------------------------------------------------------------- writing

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def packet(ptype: int, flags: int, body: bytes = b"") -> bytes:
    return bytes([(ptype << 4) | flags]) + _varint(len(body)) + body


def ack(ptype: int, pid: int) -> bytes:
    """PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK for ``pid``."""
    return packet(ptype, 2 if ptype == PUBREL else 0, struct.pack("!H", pid))


def suback(pid: int, granted: list[int]) -> bytes:
    return packet(SUBACK, 0, struct.pack("!H", pid) + bytes(granted))


def publish_packet(topic: str, payload: bytes, qos: int, pid: int | None) -> bytes:
    raw = topic.encode("utf-8")
    body = (struct.pack("!H", len(raw)) + raw + (struct.pack("!H", pid) if qos else b"")
            + payload)
    return packet(PUBLISH, qos << 1, body)


# ---------------------------------------------------------------- client IDs

def device_identifier(client_id: str) -> str | None:
    """Device part of ``dev``, ``d:dev`` or ``d:dev:xid`` (ref §1.3)."""
    if not client_id:
        return None
    parts = client_id.split(":")
    if len(parts) == 1:
        return parts[0]
    if parts[0] == "d" and len(parts) in (2, 3) and all(parts[1:]):
        return parts[1]
    return None


def client_key(client_id: str) -> str:
    """Normalise a client ID to its device part (``d:abc`` -> ``abc``)."""
    return device_identifier(client_id) or client_id
