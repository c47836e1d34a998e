"""The MQTT server side of the tenant: connections, sessions, packet flow.

Owns the live connections and their session numbers, reading and dispatching
packets, keepalive and CONNECT timeouts, session take-over, QoS 0/1/2 in both
directions (inbound QoS 2 is processed on PUBLISH and de-duplicated by packet
id until PUBREL), the message size limit, SUBSCRIBE/UNSUBSCRIBE, last wills,
withheld acknowledgements, and closing.  Who may connect is ``admission``'s
decision; what a PUBLISH means is ``upstream``'s.
"""

from __future__ import annotations

import asyncio
import collections
import traceback
from typing import Any

from .admission import Admission
from .connection import Connection
from .inventory import Inventory
from .journal import Journal
from .limits import MAX_MESSAGE_BYTES, MAX_WRITE_BUFFER, WARN_PAYLOAD_BYTES
from .mqtt import (
    CONNACK, CONNECT, DISCONNECT, PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC,
    PUBREL, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE, Malformed, ack, client_key, packet,
    packet_id, parse_connect, parse_publish, parse_subscribe, parse_unsubscribe,
    publish_packet, read_packet, suback)
from .operations import OperationBook
from .throttle import StreamLimit
from .topics import REFUSED, grant
from .upstream import Upstream

_ACK_NAMES = {PUBACK: "puback", PUBREC: "pubrec", PUBCOMP: "pubcomp"}
LINGER_S = 2.0   # a connection closed with ``linger`` is aborted after this


class Broker:
    """Serves MQTT connections inside the tenant's event loop."""

    def __init__(self, journal: Journal, admission: Admission, inventory: Inventory,
                 operations: OperationBook, *, create_delay: float,
                 connect_timeout: float) -> None:
        self.journal = journal
        self.admission = admission
        self.inventory = inventory
        self.upstream = Upstream(journal, inventory, operations, self.deliver,
                                 create_delay)
        self.connect_timeout = connect_timeout
        self.active: dict[str, Connection] = {}
        self._conns: set[Connection] = set()
        self._session_count: collections.Counter[str] = collections.Counter()
        self._withhold: set[str] = set()
        self.stream_limit = StreamLimit()   # tenant-wide lines/s and queue (ref §5)
        self._stopping = False

    # ------------------------------------------------------------------ life cycle

    async def serve(self, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        """``asyncio.start_server`` callback: one connection until it ends."""
        conn = Connection(reader, writer)
        conn.task = asyncio.current_task()
        self._conns.add(conn)
        try:
            await self._read_loop(conn)
        except Malformed as exc:
            self._malformed(conn, str(exc))
        except TimeoutError:
            self._timeout(conn)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.close(conn, "connection closed by client without DISCONNECT")
        except asyncio.CancelledError:
            self.close(conn, "tenant stopped")
        except Exception:  # noqa: BLE001 - never crash the server
            self.journal.internal_errors.append(traceback.format_exc())
            self.close(conn, "internal error in fake tenant")
        finally:
            self.close(conn, "connection ended")
            self._conns.discard(conn)

    async def shutdown(self, server: asyncio.Server) -> None:
        """Close the listener and every connection (no wills fire)."""
        self._stopping = True
        server.close()
        for conn in list(self._conns):
            self.close(conn, "tenant stopped")
        tasks = [c.task for c in self._conns if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        try:
            await asyncio.wait_for(server.wait_closed(), 2.0)
        except TimeoutError:
            pass

    async def _read_loop(self, conn: Connection) -> None:
        while not conn.closed:
            if not conn.accepted:
                timeout: float | None = self.connect_timeout
            else:
                timeout = 1.5 * conn.keepalive if conn.keepalive else None
            ptype, flags, body, size = await asyncio.wait_for(
                read_packet(conn.reader), timeout)
            if conn.closed:
                return
            self._dispatch(conn, ptype, flags, body, size)

    def _timeout(self, conn: Connection) -> None:
        if conn.accepted:
            self.journal.violation(conn.key, f"keepalive timeout: nothing received "
                                   f"for 1.5 x {conn.keepalive} s")
            self.close(conn, "keepalive timeout")
        else:
            self.journal.warning(conn.key, "no CONNECT within connect_timeout")
            self.close(conn, "no CONNECT")

    def _malformed(self, conn: Connection, reason: str) -> None:
        self.journal.record(conn.key, "malformed", conn.session, detail=reason)
        self.journal.violation(conn.key, f"malformed packet: {reason}")
        self.close(conn, f"malformed packet: {reason}")

    def write(self, conn: Connection, data: bytes) -> None:
        if conn.closed:
            return
        conn.writer.write(data)
        if conn.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.close(conn, "client does not read (write buffer > 1 MiB)")

    def close(self, conn: Connection, reason: str, *, graceful: bool = False,
              linger: bool = False) -> None:
        """Close a connection once; record why and run the will if abnormal.

        ``linger``: the session ends as abruptly, but what was written reaches the
        client before the FIN, and what it still sends is left unread (no RST that
        would destroy acknowledgements it has not read yet) until ``LINGER_S``."""
        if conn.closed:
            return
        conn.closed = True
        if conn.accepted:
            self._end_session(conn, reason, graceful)
        if graceful:
            conn.writer.close()
        elif linger and conn.writer.can_write_eof():
            conn.writer.write_eof()
            asyncio.get_running_loop().call_later(LINGER_S, conn.writer.transport.abort)
        else:
            conn.writer.transport.abort()

    def _end_session(self, conn: Connection, reason: str, graceful: bool) -> None:
        if not graceful:
            self.journal.record(conn.key, "drop", conn.session, detail=reason)
        if self.active.get(conn.key) is conn:
            del self.active[conn.key]
        if conn.ds_acked and not conn.sent_500:
            self.journal.warning(conn.key, f"session {conn.session} subscribed s/ds "
                                 "but never published 500")
        if not graceful and conn.will and not self._stopping:
            self._run_will(conn)

    def _run_will(self, conn: Connection) -> None:
        topic, payload, qos, retain = conn.will  # type: ignore[misc]
        self.journal.record(conn.key, "will", conn.session, topic=topic,
                            payload=payload, qos=qos, retain=retain)
        self.upstream.handle(conn, topic, payload)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, conn: Connection, ptype: int, flags: int, body: bytes,
                  size: int) -> None:
        expected_flags = 2 if ptype in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
        if ptype != PUBLISH and flags != expected_flags:
            raise Malformed(f"invalid fixed-header flags {flags:#x} for type {ptype}")
        if not conn.accepted:
            if ptype != CONNECT:
                raise Malformed(f"packet type {ptype} before CONNECT")
            self._on_connect(conn, body)
        elif ptype == PUBLISH:
            self._on_publish(conn, flags, body, size)
        elif ptype in _ACK_NAMES:
            self._on_client_ack(conn, ptype, body)
        elif ptype == PUBREL:
            self._on_pubrel(conn, body)
        elif ptype == SUBSCRIBE:
            self._on_subscribe(conn, body)
        elif ptype == UNSUBSCRIBE:
            self._on_unsubscribe(conn, body)
        elif ptype == PINGREQ:
            self.journal.record(conn.key, "pingreq", conn.session)
            self.write(conn, packet(PINGRESP, 0))
        elif ptype == DISCONNECT:
            self._on_disconnect(conn)
        else:
            raise Malformed(f"packet type {ptype} not allowed from a client")

    def _on_disconnect(self, conn: Connection) -> None:
        self.journal.record(conn.key, "disconnect", conn.session)
        conn.will = None
        self.close(conn, "DISCONNECT", graceful=True)

    # ------------------------------------------------------------------ CONNECT

    def _on_connect(self, conn: Connection, body: bytes) -> None:
        info = parse_connect(body)
        client_id = info.get("client_id")
        if client_id is not None:
            conn.key = client_key(client_id) or conn.key
        rc, problem = self.admission.decide(info)
        if problem:
            self.journal.violation(conn.key, problem)
        if rc == 0:
            self._accept(conn, info)
        safe_info = {k: v for k, v in info.items() if k not in ("password", "will_payload")}
        self.journal.record(conn.key, "connect", conn.session, rc=rc, info=safe_info)
        self.write(conn, packet(CONNACK, 0, bytes([0, rc])))
        if rc:
            self.close(conn, f"CONNACK {rc}", graceful=True)

    def _accept(self, conn: Connection, info: dict[str, Any]) -> None:
        """Start a session; a live session of the same device is knocked off."""
        old = self.active.get(conn.key)
        if old is not None:
            self.close(old, "session taken over by a new connection")
        self._session_count[conn.key] += 1
        conn.session = self._session_count[conn.key]
        conn.accepted = True
        conn.keepalive = info["keepalive"]
        if info.get("will_topic") is not None:
            conn.will = (info["will_topic"], info["will_payload"], info["will_qos"],
                         info["will_retain"])
        self.active[conn.key] = conn
        conn.rate_limited = self.admission.take_rate_limit(conn.key)

    # ------------------------------------------------------------------ inbound PUBLISH

    def _on_publish(self, conn: Connection, flags: int, body: bytes, size: int) -> None:
        fields = parse_publish(flags, body)
        if size > MAX_MESSAGE_BYTES:
            self._reject_oversize(conn, size, fields)
            return
        if conn.rate_limited and conn.publishes == 0:
            self._reject_rate_limited(conn, fields)
            return
        conn.publishes += 1
        if not self.stream_limit.submit(conn, fields["topic"], fields["payload"],
                                        lambda: self._process_publish(conn, fields)):
            self._reject_stream_overflow(conn, fields)

    def _process_publish(self, conn: Connection, fields: dict[str, Any]) -> None:
        """Apply and acknowledge one PUBLISH (now, or when the stream limit allows)."""
        if conn.closed:
            return
        qos, pid = fields["qos"], fields["packet_id"]
        if qos == 2 and pid in conn.qos2_in:
            self.journal.record(conn.key, "publish", conn.session, accepted=False,
                                detail="QoS 2 duplicate, not processed again", **fields)
            self._send_ack(conn, ack(PUBREC, pid))
            return
        self.journal.record(conn.key, "publish", conn.session, **fields)
        self._warn_large(conn, fields)
        delay = self.upstream.handle(conn, fields["topic"], fields["payload"])
        if qos == 1:
            self._send_ack(conn, ack(PUBACK, pid), delay)
        elif qos == 2:
            conn.qos2_in.add(pid)
            self._send_ack(conn, ack(PUBREC, pid), delay)

    def _reject_oversize(self, conn: Connection, size: int, fields: dict[str, Any]) -> None:
        self.journal.record(conn.key, "oversize", conn.session, accepted=False,
                            detail=f"{size} bytes > {MAX_MESSAGE_BYTES}", **fields)
        self.journal.violation(conn.key, f"message of {size} bytes on {fields['topic']} "
                               f"exceeds {MAX_MESSAGE_BYTES} bytes incl. header")
        self.close(conn, f"message too large ({size} bytes)")

    def _reject_rate_limited(self, conn: Connection, fields: dict[str, Any]) -> None:
        self.journal.record(conn.key, "publish", conn.session, accepted=False,
                            detail="rejected: rate limit exceeded", **fields)
        self.close(conn, "rate limit exceeded (disconnect after first message)")

    def _reject_stream_overflow(self, conn: Connection, fields: dict[str, Any]) -> None:
        self.journal.record(conn.key, "publish", conn.session, accepted=False,
                            detail="rejected: stream queue full", **fields)
        self.close(conn, "stream limit exceeded (queue full)", linger=True)

    def _warn_large(self, conn: Connection, fields: dict[str, Any]) -> None:
        size = len(fields["payload"])
        if size > WARN_PAYLOAD_BYTES:
            self.journal.warning(conn.key, f"payload of {size} bytes on "
                                 f"{fields['topic']} (> {WARN_PAYLOAD_BYTES})")

    def _send_ack(self, conn: Connection, data: bytes, delay: float = 0.0) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send_ack, conn, data)
            return
        if conn.closed:
            return
        if conn.key in self._withhold:
            conn.withheld.append(data)
        else:
            self.write(conn, data)

    def set_withhold(self, key: str, on: bool) -> None:
        """Hold back PUBACK/PUBREC for ``key``; switching off sends held acks."""
        if on:
            self._withhold.add(key)
            return
        self._withhold.discard(key)
        conn = self.active.get(key)
        if conn is not None:
            held, conn.withheld = conn.withheld, []
            for data in held:
                self.write(conn, data)

    def _on_pubrel(self, conn: Connection, body: bytes) -> None:
        pid = packet_id(body)
        self.journal.record(conn.key, "pubrel", conn.session, packet_id=pid)
        conn.qos2_in.discard(pid)
        self.write(conn, ack(PUBCOMP, pid))

    # ------------------------------------------------------------------ outbound PUBLISH

    def deliver(self, conn: Connection | None, topic: str, payload: bytes) -> bool:
        """PUBLISH to one client at its subscription QoS, if subscribed."""
        if conn is None or conn.closed or topic not in conn.subs:
            return False
        qos = conn.subs[topic]
        pid = conn.alloc_pid() if qos else None
        if pid is not None:
            conn.inflight[pid] = "puback" if qos == 1 else "pubrec"
        self.write(conn, publish_packet(topic, payload, qos, pid))
        self.journal.record_sent(conn.key, conn.session, topic=topic, payload=payload,
                                 qos=qos, packet_id=pid)
        return True

    def _on_client_ack(self, conn: Connection, ptype: int, body: bytes) -> None:
        pid = packet_id(body)
        name = _ACK_NAMES[ptype]
        self.journal.record(conn.key, name, conn.session, packet_id=pid)
        if conn.inflight.get(pid) != name:
            self.journal.violation(conn.key, f"{name.upper()} for packet id {pid} "
                                   "that is not awaiting it")
            return
        if ptype == PUBREC:
            conn.inflight[pid] = "pubcomp"
            self.write(conn, ack(PUBREL, pid))
        else:
            del conn.inflight[pid]

    # ------------------------------------------------------------------ SUBSCRIBE

    def _on_subscribe(self, conn: Connection, body: bytes) -> None:
        pid, filters = parse_subscribe(body)
        if len(filters) > 1:
            self.journal.violation(conn.key, f"SUBSCRIBE with {len(filters)} filters "
                                   "(one filter per packet, ref §1.10)")
        granted = [self._grant(conn, f, q) for f, q in filters]
        self.journal.record(conn.key, "subscribe", conn.session, packet_id=pid,
                            filters=filters, granted=granted)
        self.write(conn, suback(pid, granted))
        for (topic_filter, _), code in zip(filters, granted):
            if code != REFUSED:
                conn.subs[topic_filter] = code
                conn.ds_acked = conn.ds_acked or topic_filter == "s/ds"

    def _grant(self, conn: Connection, topic_filter: str, qos: int) -> int:
        code, problem = grant(topic_filter, qos, self.inventory.ready(conn.key))
        if problem:
            self.journal.violation(conn.key, problem)
        return code

    def _on_unsubscribe(self, conn: Connection, body: bytes) -> None:
        pid, filters = parse_unsubscribe(body)
        for topic_filter in filters:
            conn.subs.pop(topic_filter, None)
        self.journal.record(conn.key, "unsubscribe", conn.session, packet_id=pid,
                            filters=[(f, 0) for f in filters])
        self.write(conn, ack(UNSUBACK, pid))
