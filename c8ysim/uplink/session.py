"""The Cumulocity session of one device: connect, register, subscribe, drain; reconnect forever.

Runs in the device's main thread only: `handle()` takes the transport's events, `poll()` acts
on time (reconnect when the backoff is due, fill the in-flight window); the loop polls after
every batch of events, so the room PUBACKs free is filled once per batch. Per (re)connect:

    CONNECT -> SUBSCRIBE s/e, 100 (wait for its PUBACK) -> 110 + 114 + 117 (+ 112, 113)
            -> SUBSCRIBE s/ds
            -> (s/ds granted) finish operations in flight (503/502) -> 500 -> drain

Buffered rows leave the store only on their PUBACK; a lost connection forgets what was in
flight, so those rows are sent again on the next connection (at least once, in order).
A row that can never be published (a topic MQTT forbids, a payload over the limit, any
error from paho's publish other than "not connected") is quarantined with the reason and
the drain goes on: no row can crash the device or stall its queue.

A PUBACK is not acceptance (protocol reference §3.4): the platform acknowledges a publish
and reports a line it then refuses (an unknown template, bad arguments, a server error)
only on `s/e`, as `<code>,<template>,<message>`, with nothing tying it to a publish. By
then its row is gone from the buffer, and nothing can say which row it was, so the line is
not sent again: it is lost to Cumulocity. The loss is made visible instead: every `s/e`
line counts as `rejected` (except `41,100,...` "Device already existing", the expected
answer to the `100` of every reconnect), the last few are kept as `rejections` (time and
line: status page, /api/status; the count in /metrics too), and the journal gets a warning per `s/e` message,
within the broker-input line budget.

Refused connects: CONNACK 4 (bad user name or password) is final at once: `auth_failed`,
and the next attempt comes near `reconnect_max_s`. CONNACK 5 (not authorized) is also
what Cumulocity says under overload during connect (§1.9), so it is retried
`NOT_AUTHORIZED_RETRIES` times a few seconds apart (with jitter) before it counts as bad
credentials (and, until a connect is accepted, every CONNACK 5 after that). Any other
refusal backs off like a lost connection.

Throttling (§5): over the tenant's stream limit the platform queues, then disconnects. A
backlog drains at `pacing.DrainRate`'s rate: it starts at a hundredth of the ceiling
(`max_lines_per_s`, the constructor's argument: the default 100000 a site starts at 1000)
and follows the PUBACK latency of the drain's publishes (each one's hand-over to paho is
kept in `handed_at`): up while it stays near the lowest seen lately and the rate is what
holds the backlog back, down to four fifths of what the tenant delivers once it rises
(the tenant queues). While a backlog drains, the lines in flight are also held to the
rate times the latency threshold (`_room`): a tenant that starts queueing holds that much
of ours at most, however far the rate overshot. A connection lost while draining a backlog
halves the rate as the backstop. Live traffic (no backlog) never changes it, and its few
lines a tick go at once from the bucket's burst. The rate in force is the heartbeat's
`drain_rate`; cuts and raises are logged once each per `RATE_LOG_EVERY_S`.

The broker is not trusted either: `s/ds` and `s/e` messages over the platform's own limit
(`MAX_INBOUND_BYTES`) are dropped unread, and beyond `INBOUND_BYTES_PER_S` they are dropped
too (a flood must not starve the device loop and its heartbeat); both are counted
(`inbound_dropped`) and logged once per burst. What is logged about them is escaped,
truncated and limited in lines (`logs.external`, `logs.LineBudget`).
"""

from __future__ import annotations

import collections
import logging
import queue
import random
import time
from typing import Callable, Mapping, NamedTuple

from c8ysim import backoff, logs
from c8ysim.heartbeat import Link
from c8ysim.storage import Buffer, Record
from c8ysim.uplink import smartrest
from c8ysim.uplink.operations import Action, Operations
from c8ysim.uplink.pacing import CUT, RAISED, DrainRate, TokenBucket
from c8ysim.uplink.transport import (
    Connected, ConnectFailed, Connection, Disconnected, Endpoint, Message, NotConnected,
    Published, Subscribed, TlsSetupError, invalid_topic)

WINDOW_PUBLISHES = 20  # QoS 1 publishes in flight; paho slows down with large windows
# A paced backlog leaves in publishes about this far apart, each with the lines the rate
# allows in that time (at most DRAIN_BATCH_LINES): sent a line at a time as tokens come,
# every line took a publish, a PUBACK and a commit of its own (issue 18: 1000 lines/s cost
# half a core, 30 x the CPU per line of an unpaced drain).
DRAIN_BATCH_S = 0.1
DRAIN_BATCH_LINES = 64
ROWS_PER_PEEK = 500
IDLE_POLL_S = 5.0  # online with nothing to send: rows another process queues wait this at most
BACKOFF_BASE_S = 1.0
STABLE_AFTER_S = 60.0  # a connection up this long resets the backoff
CONNECT_TIMEOUT_S = 30.0  # TCP + TLS + CONNACK; longer counts as a failed attempt
REGISTER_TIMEOUT_S = 30.0  # CONNACK to online (100 PUBACK, SUBACKs)
QUICK_CLOSE_S = 5.0  # closed this soon after connect, before CONNACK: not an MQTT port?
UNLIMITED_LINES_PER_S = 1e9
RATE_LOG_EVERY_S = 30.0  # latency cuts, and raises: one info line each per this at most
MAX_INBOUND_BYTES = 16384  # Cumulocity never sends more in one message; larger = hostile
INBOUND_BYTES_PER_S = 32 * 1024  # parsing budget for s/ds + s/e (also the burst)
INBOUND_MIN_COST_BYTES = 1024  # a message takes at least this much of the budget
INBOUND_LOG_LINES, INBOUND_LOG_WINDOW_S = 20, 60.0  # lines about broker input per window
S_E_LOG_BYTES = 300
REJECTIONS_KEPT = 5  # the last s/e lines in the heartbeat
NOT_AUTHORIZED = "Not authorized"  # transport's reason for CONNACK 5, on either paho
NOT_AUTHORIZED_RETRIES = 3  # CONNACK 5 may be transient overload: retry before auth_failed
NOT_AUTHORIZED_RETRY_S = (1.0, 3.0)  # uniform delay between those retries (<= the cap)

log = logging.getLogger(__name__)


class Registration(NamedTuple):
    """What the device tells Cumulocity about itself on every connect."""

    name: str
    type: str
    serial: str
    model: str
    revision: str
    supported_operations: tuple[str, ...]
    required_interval_min: int
    position: tuple[float, float, float | None] | None = None  # latitude, longitude, altitude
    configuration: str | None = None  # the 113 text (c8y_Configuration), if it has one


class Session:
    def __init__(self, endpoint: Endpoint, registration: Registration, buffer: Buffer,
                 events: queue.SimpleQueue, reconnect_max_s: float, rng: random.Random,
                 max_lines_per_s: float = UNLIMITED_LINES_PER_S,
                 auth_retry_max_s: float | None = None,
                 actions: Mapping[str, Action] | None = None,
                 start_lines_per_s: float | None = None):
        self.endpoint, self.registration, self.buffer = endpoint, registration, buffer
        self.events, self.reconnect_max_s, self.rng = events, reconnect_max_s, rng
        # Refused credentials are tried again near this (the device may fall back sooner).
        self.auth_retry_max_s = min(auth_retry_max_s or reconnect_max_s, reconnect_max_s)
        # the backlog's rate: `max_lines_per_s` is its ceiling (pacing.DrainRate)
        self.drain = DrainRate(max_lines_per_s, time.monotonic(), start_lines_per_s)
        self.pace = TokenBucket(self.drain.current, time.monotonic())
        self.rate_changes = collections.Counter()  # latency cuts and raises not logged yet
        self.rate_logged_at: dict[str, float] = {}  # CUT, RAISED -> last logged
        self.backlogged = False  # the last read of the buffer found more rows than it took
        self.inbound_budget = TokenBucket(INBOUND_BYTES_PER_S, time.monotonic())
        self.note_inbound = logs.LineBudget(log, INBOUND_LOG_LINES, INBOUND_LOG_WINDOW_S,
                                            time.monotonic)
        self.operations = Operations(endpoint.client_id, buffer, self.note_inbound,
                                     actions=actions)
        self.inbound_dropped = 0  # s/ds, s/e messages dropped unread (too large, flood)
        self.log_oversized, self.log_flood = logs.BurstLog(log), logs.BurstLog(log)
        self.log_poison, self.log_store = logs.BurstLog(log), logs.BurstLog(log)
        self.state = Link.DISCONNECTED
        self.connection: Connection | None = None
        self.generation = 0
        self.failures = 0
        self.retry_at = 0.0  # monotonic time of the next connect attempt
        self.state_since = time.monotonic()
        self.connected_since: float | None = None  # wall clock, for the status page
        self.pending: dict[int, Callable[[], None] | None] = {}  # mid -> on PUBACK/SUBACK
        self.inflight: dict[int, list[int]] = {}  # publish mid -> buffered row ids
        self.handed_at: dict[int, float] = {}  # publish mid -> when paho took it (monotonic)
        self.subscriptions: dict[int, str] = {}  # SUBSCRIBE mid -> topic filter
        self.cursor = 0  # highest row id handed to paho on this connection
        # Rows read from the buffer (in order, after `cursor`) not yet handed to paho: read
        # once, not again with every PUBACK (a freed slot takes one publish of them).
        self.lookahead: list[Record] = []
        self.sent = 0
        self.reconnects = 0
        self.attempts = 0  # connection attempts since the child started
        self.last_ack: float | None = None
        self.last_error: str | None = None
        self.auth_failed = False
        self.not_authorized = 0  # CONNACK 5 in a row (retried NOT_AUTHORIZED_RETRIES times)
        self.rejected = 0  # s/e lines but the expected 41,100
        self.rejections: collections.deque = collections.deque(maxlen=REJECTIONS_KEPT)

    # -- driven by the device loop ------------------------------------------------------

    def poll(self, now: float) -> None:
        if self.state == Link.DISCONNECTED and now >= self.retry_at:
            self._open(now)
        elif self.state in (Link.CONNECTING, Link.INTRODUCING) and \
                now - self.state_since > _timeout_for(self.state):
            what = "CONNACK" if self.state == Link.CONNECTING else "answer to the registration"
            self._fail(now, f"no {what} within {_timeout_for(self.state):.0f} s")
        elif self.state == Link.ONLINE:
            if self.failures and now - self.state_since >= STABLE_AFTER_S:
                self.failures = 0
            self._fill_window(now)

    def handle(self, event, now: float) -> None:
        if getattr(event, "generation", None) != self.generation or self.connection is None:
            return  # from a connection we already gave up on
        handler = _HANDLERS.get(type(event))
        if handler:
            handler(self, event, now)

    def wakeup_in(self, now: float) -> float | None:
        """Seconds until poll() has timed work to do (None: only events matter)."""
        if self.state == Link.DISCONNECTED:
            return max(0.0, self.retry_at - now)
        room = self._room() if self.state == Link.ONLINE else 0
        if room and room >= self._batch_wanted():
            wait = self.pace.wait_s(now, max(1, self._batch_wanted()))
            return wait if wait > 0 else None
        return IDLE_POLL_S if self.state == Link.ONLINE else 1.0

    def report_configuration(self, text: str) -> None:
        """A new 113 text: sent now when online, and on every later connect."""
        self.registration = self.registration._replace(configuration=text)
        if self.state == Link.ONLINE:
            self._send_session(smartrest.configuration(text))

    def close(self) -> None:
        if self.connection:
            self.connection.close()
            self.connection = None
        self.state = Link.STOPPED

    def status(self) -> dict:
        """The session's part of the device's heartbeat (`c8ysim.heartbeat.Heartbeat` fields)."""
        return {
            "connection": Link.AUTH_FAILED if self.auth_failed and self.state != Link.ONLINE
            else self.state,
            "connected": self.state == Link.ONLINE,
            "connected_since": self.connected_since,
            "inflight": self._inflight_lines(),
            "sent": self.sent,
            "reconnects": self.reconnects,
            "attempts": self.attempts,
            "last_ack": self.last_ack,
            "last_error": self.last_error,
            "inbound_dropped": self.inbound_dropped,
            "inbound_ignored": self.operations.ignored_lines,
            "rejected": self.rejected,
            "rejections": [list(item) for item in self.rejections],
            "drain_rate": round(self.drain.current, 3),
        }

    # -- connection lifecycle -------------------------------------------------------------

    def _open(self, now: float) -> None:
        self.generation += 1
        self.attempts += 1
        try:
            self.connection = Connection(self.endpoint, self.events, self.generation,
                                         WINDOW_PUBLISHES + 4)
        except TlsSetupError as exc:  # e.g. a certificate file being replaced right now
            self._fail(now, str(exc))
            return
        self._enter(Link.CONNECTING, now)
        log.info("connecting to %s:%d as %s", self.endpoint.host, self.endpoint.port,
                 self.endpoint.client_id)
        self.connection.start()

    def _fail(self, now: float, reason: str, auth: bool = False,
              delay: float | None = None) -> None:
        was_online = self.state == Link.ONLINE
        if self.connection:
            self.connection.close()
            self.connection = None
        self.failures += 1
        self.auth_failed = auth
        if delay is None:
            delay = (backoff.near_cap(self.auth_retry_max_s, self.rng) if auth else
                     backoff.full_jitter(self.failures, BACKOFF_BASE_S, self.reconnect_max_s,
                                         self.rng))
        if was_online and self.backlogged and self.drain.throttled(now):
            self.pace.set_rate(self.drain.current, now)
            log.warning("lost the connection while draining a backlog: draining at %g "
                        "lines/s from now on (max_lines_per_s %g)", self.drain.current,
                        self.drain.ceiling)
        self.backlogged = False
        self.retry_at = now + delay
        self.last_error = reason
        self.inflight.clear()
        self.handed_at.clear()
        self.pending.clear()
        self.subscriptions.clear()
        self.cursor = 0
        self.lookahead = []
        self.connected_since = None
        self._enter(Link.DISCONNECTED, now)
        if was_online:
            self.reconnects += 1
        level = logging.ERROR if auth else logging.WARNING
        log.log(level, "%s; reconnecting in %.1f s", reason, delay)

    def _enter(self, state: Link, now: float) -> None:
        self.state, self.state_since = state, now

    def _send_session(self, payload: str, on_ack: Callable[[], None] | None = None) -> None:
        """Publish a session line now (not via the buffer); `on_ack` runs on its PUBACK."""
        if self.connection is None:
            return
        try:
            mid = self.connection.publish(smartrest.UPSTREAM_TOPIC, payload.encode())
        except NotConnected as exc:
            self.last_error = f"publish failed: {exc}"  # the Disconnected event follows
            return
        self.pending[mid] = on_ack

    # -- events -------------------------------------------------------------------------

    def _on_connected(self, event: Connected, now: float) -> None:
        if not event.ok:
            if (event.auth_failed and event.reason == NOT_AUTHORIZED
                    and self.not_authorized < NOT_AUTHORIZED_RETRIES):
                self.not_authorized += 1
                self._fail(now, f"broker refused the connection: {event.reason} (may be "
                           f"transient; retry {self.not_authorized} of "
                           f"{NOT_AUTHORIZED_RETRIES})",
                           delay=min(self.reconnect_max_s,
                                     self.rng.uniform(*NOT_AUTHORIZED_RETRY_S)))
                return
            hint = " (check tenant, user and password)" if event.auth_failed else ""
            self._fail(now, f"broker refused the connection: {event.reason}{hint}",
                       auth=event.auth_failed)
            return
        self.auth_failed = False
        self.not_authorized = 0
        reg = self.registration
        self._enter(Link.INTRODUCING, now)
        # s/e first (it needs no device): what the platform says about the 100 and the
        # 110/114/117 after it (41,100 on every reconnect) reaches us too
        self._subscribe(smartrest.ERRORS_TOPIC, 0, "s/e")
        self._send_session(smartrest.device_creation(reg.name, reg.type),
                           self._after_device_created)

    def _on_connect_failed(self, event: ConnectFailed, now: float) -> None:
        self._fail(now, f"cannot connect to {self.endpoint.host}:{self.endpoint.port}: "
                   f"{event.reason}")

    def _on_disconnected(self, event: Disconnected, now: float) -> None:
        if self.state == Link.CONNECTING:  # ended before any CONNACK
            waited = now - self.state_since
            if event.timed_out or waited >= QUICK_CLOSE_S:
                self._fail(now, f"no CONNACK within {waited:.0f} s ({event.reason})")
            else:
                self._fail(now, f"the broker closed the connection right after connect, before "
                           f"answering CONNECT ({event.reason}); plain MQTT to a TLS port? "
                           "check cumulocity.port and cumulocity.tls")
            return
        self._fail(now, f"connection lost: {event.reason}")

    def _on_published(self, event: Published, now: float) -> None:
        if event.mid in self.pending:
            on_ack = self.pending.pop(event.mid)
            if on_ack:
                on_ack()
            return
        ids = self.inflight.pop(event.mid, None)
        handed_at = self.handed_at.pop(event.mid, None)
        if ids:
            self.buffer.ack(ids)
            self.sent += len(ids)
            self.last_ack = time.time()
            if handed_at is not None:
                self._pace_by_latency(handed_at, len(ids), now)

    def _after_device_created(self) -> None:
        reg = self.registration
        lines = [smartrest.hardware(reg.serial, reg.model, reg.revision),
                 smartrest.supported_operations(*reg.supported_operations),
                 smartrest.required_interval(reg.required_interval_min)]
        if reg.position:
            lines.append(smartrest.position(*reg.position))
        if reg.configuration is not None:
            lines.append(smartrest.configuration(reg.configuration))
        self._send_session("\n".join(lines))
        self._subscribe(smartrest.OPERATIONS_TOPIC, 1, "s/ds")

    def _subscribe(self, topic: str, qos: int, name: str) -> None:
        if self.connection is None:
            return
        try:
            self.subscriptions[self.connection.subscribe(topic, qos)] = name
        except NotConnected as exc:
            self.last_error = f"subscribe failed: {exc}"  # the Disconnected event follows

    def _on_subscribed(self, event: Subscribed, now: float) -> None:
        if self.subscriptions.pop(event.mid, None) != "s/ds":
            return
        if not all(event.granted):
            self._fail(now, "the broker refused the subscription to s/ds")
            return
        self.operations.resume(self._send_session)
        self._send_session(smartrest.get_pending_operations())
        self._enter(Link.ONLINE, now)
        self.drain.online(now)
        self.connected_since = time.time()
        self.last_error = None
        log.log(logs.NOTICE, "online as %s", self.endpoint.client_id)
        self._fill_window(now)

    def _on_message(self, event: Message, now: float) -> None:
        if not self._admit(event, now):
            return
        try:
            if event.topic == smartrest.ERRORS_TOPIC:
                self._on_errors(event.payload)
            elif event.topic == smartrest.OPERATIONS_TOPIC:
                self.operations.handle(event.payload, self._send_session)
        except Exception as exc:  # noqa: BLE001 - broker input must never end the device
            self.note_inbound(logging.ERROR, "could not handle a %s message: %s",
                              logs.external(event.topic, 80), logs.external(repr(exc)))

    def _on_errors(self, payload: bytes) -> None:
        """Count and log the platform's error lines (each a line of ours it refused): one
        journal line per message, the message as it came (escaped, cut short)."""
        refused = 0
        for fields in smartrest.parse(payload):
            if _expected_error(fields):
                continue
            refused += 1
            self.rejections.append(
                (round(time.time(), 3),
                 logs.external(",".join(fields), S_E_LOG_BYTES)))  # quotes gone
        self.rejected += refused
        if refused:
            self.note_inbound(logging.WARNING, "Cumulocity rejected %d line(s) it had "
                              "acknowledged (%d so far; they are not sent again): %s",
                              refused, self.rejected, logs.external(payload, S_E_LOG_BYTES))
        elif payload.strip():
            self.note_inbound(logging.INFO, "Cumulocity: %s (as expected on reconnect)",
                              logs.external(payload, S_E_LOG_BYTES))

    def _admit(self, event: Message, now: float) -> bool:
        """Whether to read this message; else it is dropped and counted, before parsing."""
        size = len(event.payload)
        topic = logs.external(event.topic, 80)
        if size > MAX_INBOUND_BYTES:
            self.inbound_dropped += 1
            self.log_oversized(logging.WARNING, "dropped a %d-byte %s message unread: over the "
                               "%d-byte limit (%d dropped so far)", size, topic,
                               MAX_INBOUND_BYTES, self.inbound_dropped)
            return False
        cost = max(size, INBOUND_MIN_COST_BYTES)
        if self.inbound_budget.available(now) < cost:
            self.inbound_dropped += 1
            self.log_flood(logging.WARNING, "dropping %s messages: the broker sends more than "
                           "%d bytes/s (%d dropped so far)", topic, INBOUND_BYTES_PER_S,
                           self.inbound_dropped)
            return False
        self.inbound_budget.take(cost, now)
        return True

    # -- draining the buffer ------------------------------------------------------------------

    def _fill_window(self, now: float) -> None:
        read_to_end = False  # a peek of this turn found every row there was
        while self.state == Link.ONLINE:
            room, tokens = self._room(), self.pace.available(now)
            budget = min(ROWS_PER_PEEK, tokens, room)
            if not budget or budget < self._batch_wanted():
                if self.backlogged and tokens < room:
                    self.drain.held_back()  # the rate, not the window, holds it back
                return  # a backlog goes out a batch at a time (wakeup_in says when)
            if not self.lookahead:
                if read_to_end:  # rows another process adds meanwhile: the next turn's peek
                    return
                rows = self._peek(budget + 1)
                # one more row than allowed tells whether a backlog waits
                self.backlogged = len(rows) > budget
                read_to_end = not self.backlogged
                if not rows:
                    return
                # quarantining moves the cursor past those
                self.lookahead = self._sendable(rows[:budget])
                continue
            rows, self.lookahead = self.lookahead[:budget], self.lookahead[budget:]
            handed = all(self._publish_batch(topic, batch, now) for topic, batch in pack(rows))
            # what was not handed to paho (window full, not connected) waits for the next turn
            self.lookahead = [r for r in rows if r.id > self.cursor] + self.lookahead
            if not handed:
                return

    def _pace_by_latency(self, handed_at: float, lines: int, now: float) -> None:
        """A drain publish's PUBACK: the rate follows its latency while a backlog waits."""
        change = self.drain.acked(handed_at, lines, now, self.backlogged)
        if change is None:
            return
        self.pace.set_rate(self.drain.current, now)
        self.rate_changes[change] += 1
        logged = self.rate_logged_at.get(change)
        if logged is None or now - logged >= RATE_LOG_EVERY_S:
            self._log_rate(change, now)

    def _log_rate(self, change: str, now: float) -> None:
        """One info line for a cut (or a raise) and the changes not logged before it."""
        drain = self.drain
        why = ("the tenant queues: PUBACK latency %.0f ms, over %.0f ms (lowest lately)" if
               change == CUT else "PUBACK latency %.0f ms, near %.0f ms (lowest lately)")
        log.info("draining at %g lines/s (max_lines_per_s %g): " + why
                 + "; %d cut(s), %d raise(s) since the last report", round(drain.current, 1),
                 drain.ceiling, 1000 * (drain.last_round or 0), 1000 * (drain.base.value or 0),
                 self.rate_changes[CUT], self.rate_changes[RAISED])
        self.rate_changes.clear()
        self.rate_logged_at[change] = now

    def _batch_wanted(self) -> int:
        """Lines the bucket should hold before the next publish: a batch's worth while more
        rows wait than may go now, else what waits (live readings go at once)."""
        batch = max(1, min(DRAIN_BATCH_LINES, int(self.pace.rate_per_s * DRAIN_BATCH_S)))
        return batch if self.backlogged else min(batch, len(self.lookahead))

    def _peek(self, limit: int) -> list[Record]:
        try:
            return self.buffer.peek(limit, after_id=self.cursor)
        except Exception as exc:  # noqa: BLE001 - the contract says never; a row must not kill us
            self.log_store(logging.ERROR, "cannot read the buffer: %s", logs.external(repr(exc)))
            return []

    def _sendable(self, rows: list[Record]) -> list[Record]:
        """`rows` without those that can never be published (quarantined here)."""
        good = []
        for row in rows:
            reason = invalid_topic(row.topic) or _invalid_payload(row.payload)
            if reason:
                self._quarantine([row], reason)
            else:
                good.append(row)
        return good

    def _quarantine(self, rows: list[Record], reason: str) -> None:
        self.buffer.quarantine([r.id for r in rows], reason)
        self.cursor = max(self.cursor, rows[-1].id)
        self.log_poison(logging.ERROR, "quarantined %d buffered record(s) from id %d: %s",
                        len(rows), rows[0].id, logs.external(reason, 300))

    def _publish_batch(self, topic: str, batch: list[Record], now: float) -> bool:
        payload = b"\n".join(r.payload for r in batch)
        if len(payload) > smartrest.MAX_PAYLOAD_BYTES:
            self._quarantine(batch, f"{len(payload)} bytes exceed the "
                             f"{smartrest.MAX_PAYLOAD_BYTES}-byte MQTT payload limit")
            return True
        try:
            mid = self.connection.publish(topic, payload)
        except NotConnected as exc:
            self.last_error = f"publish failed: {exc}"
            return False  # the Disconnected event follows
        except Exception as exc:  # noqa: BLE001 - paho refuses this row: it never will take it
            if len(batch) > 1:  # find the row at fault: one at a time
                return all(self._publish_batch(topic, [row], now) for row in batch)
            self._quarantine(batch, f"publish refused: {type(exc).__name__}: {exc}")
            return True
        self.inflight[mid] = [r.id for r in batch]
        self.handed_at[mid] = now
        self.cursor = batch[-1].id
        self.pace.take(len(batch), now)
        return len(self.inflight) < WINDOW_PUBLISHES

    def _room(self) -> int:
        """Lines the window takes now: none once WINDOW_PUBLISHES are in flight; while a
        backlog drains, up to a latency threshold's worth of the rate in flight (at least a
        batch): what a tenant that starts queueing can hold of ours, whatever the rate
        (`DrainRate.inflight_limit`)."""
        if len(self.inflight) >= WINDOW_PUBLISHES:
            return 0
        if not self.backlogged:
            return ROWS_PER_PEEK
        limit = max(self.drain.inflight_limit(), self._batch_wanted())
        return max(0, int(limit) - self._inflight_lines())

    def _inflight_lines(self) -> int:
        return sum(len(ids) for ids in self.inflight.values())


def pack(rows: list[Record], limit: int = smartrest.MAX_PAYLOAD_BYTES):
    """(topic, batch): consecutive rows of one topic, greedily packed in order into payloads
    of at most `limit` bytes once joined by newlines. The only packer of publishes.

    A row that alone exceeds the limit comes out as a batch of its own (to be quarantined).
    """
    batch: list[Record] = []
    size = 0
    for row in rows:
        fits = size + 1 + len(row.payload) <= limit
        if batch and (row.topic != batch[0].topic or not fits):
            yield batch[0].topic, batch
            batch, size = [], 0
        batch.append(row)
        size += len(row.payload) + (1 if len(batch) > 1 else 0)
    if batch:
        yield batch[0].topic, batch


def _invalid_payload(payload) -> str | None:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return None
    return f"the payload is {type(payload).__name__}, not bytes"


def _expected_error(fields: list[str]) -> bool:
    """`41,100,Device already existing`: the answer to the 100 of every reconnect."""
    return fields[:2] == ["41", "100"] and "exist" in ",".join(fields[2:]).lower()


def _timeout_for(state: Link) -> float:
    return CONNECT_TIMEOUT_S if state == Link.CONNECTING else REGISTER_TIMEOUT_S


_HANDLERS = {
    Connected: Session._on_connected,
    ConnectFailed: Session._on_connect_failed,
    Disconnected: Session._on_disconnected,
    Published: Session._on_published,
    Subscribed: Session._on_subscribed,
    Message: Session._on_message,
}
