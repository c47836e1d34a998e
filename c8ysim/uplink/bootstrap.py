"""Device registration with the bootstrap user (ref §1.5): how a device gets its own login.

A device with `cumulocity.bootstrap` and no credentials of its own connects as the bootstrap
user (`management/devicebootstrap`), client ID = its external ID, and asks for credentials:

    CONNECT -> SUBSCRIBE s/dcr -> (granted) PUBLISH s/ucr "" now and every 5 s
            -> (an operator accepted it in Device management > Registration)
               s/dcr: 70,<tenant>,<user>,<password> -> DISCONNECT

The device then stores them (`credentials`) and its `Session` logs in with them. Like the
session, `Bootstrap` runs in the device's main thread only: `handle()` takes the transport's
events, `poll()` acts on time; failed connections are retried with backoff, forever.

`RefusalWatch` tells the device when the broker has refused a session's credentials long
enough (the device was deleted, its user with it) to throw them away and register again.
"""

from __future__ import annotations

import logging
import queue
import random
import time

from c8ysim import backoff, logs
from c8ysim.heartbeat import Link
from c8ysim.uplink import smartrest
from c8ysim.uplink.credentials import Credentials, problem
from c8ysim.uplink.transport import (
    Connected, ConnectFailed, Connection, Disconnected, Endpoint, Message, NotConnected,
    Subscribed, TlsSetupError)

REQUEST_TOPIC = "s/ucr"  # an empty publish asks for the credentials
CREDENTIALS_TOPIC = "s/dcr"  # 70,<tenant>,<user>,<password> once accepted
CREDENTIALS_TEMPLATE = "70"
POLL_INTERVAL_S = 5.0  # as C8YDM and the reference's measurements do
REMIND_EVERY_S = 600.0  # the journal repeats which external ID to register
BACKOFF_BASE_S = 1.0
STABLE_AFTER_S = 60.0  # polling this long resets the backoff
CONNECT_TIMEOUT_S = 30.0  # TCP + TLS + CONNACK + SUBACK
MAX_INBOUND_BYTES = 16384  # Cumulocity never sends more in one message
INBOUND_LOG_LINES, INBOUND_LOG_WINDOW_S = 20, 60.0
REFUSED_FOR_S = 60.0  # stored credentials refused this long ...
MIN_REFUSALS = 3  # ... and this many connects in a row: the device user is gone

log = logging.getLogger(__name__)


class Bootstrap:
    """Registration of one device; `credentials` is set once Cumulocity issued them."""

    def __init__(self, endpoint: Endpoint, events: queue.SimpleQueue, reconnect_max_s: float,
                 rng: random.Random):
        self.endpoint, self.events = endpoint, events
        self.reconnect_max_s, self.rng = reconnect_max_s, rng
        self.note_inbound = logs.LineBudget(log, INBOUND_LOG_LINES, INBOUND_LOG_WINDOW_S,
                                            time.monotonic)
        self.state = Link.DISCONNECTED
        self.state_since = time.monotonic()
        self.connection: Connection | None = None
        self.generation = 0
        self.subscription: int | None = None  # mid of the SUBSCRIBE s/dcr
        self.failures = 0
        self.retry_at = 0.0
        self.next_request_at = 0.0
        self.reminded_at: float | None = None
        self.requests = 0  # s/ucr publishes
        self.attempts = 0
        self.reconnects = 0
        self.inbound_dropped = 0
        self.inbound_ignored = 0
        self.last_error: str | None = None
        self.auth_failed = False
        self.credentials: Credentials | None = None

    # -- driven by the device loop ------------------------------------------------------

    def poll(self, now: float) -> None:
        self._remind(now)
        if self.state == Link.DISCONNECTED and now >= self.retry_at:
            self._open(now)
        elif self.state == Link.CONNECTING and now - self.state_since > CONNECT_TIMEOUT_S:
            self._fail(now, f"no answer to CONNECT and SUBSCRIBE {CREDENTIALS_TOPIC} within "
                       f"{CONNECT_TIMEOUT_S:.0f} s")
        elif self.state == Link.REGISTERING and now >= self.next_request_at:
            if self.failures and now - self.state_since >= STABLE_AFTER_S:
                self.failures = 0
            self._request(now)

    def handle(self, event, now: float) -> None:
        if getattr(event, "generation", None) != self.generation or self.connection is None:
            return  # from a connection we already gave up on
        handler = _HANDLERS.get(type(event))
        if handler:
            handler(self, event, now)

    def wakeup_in(self, now: float) -> float | None:
        if self.state == Link.DISCONNECTED:
            return max(0.0, self.retry_at - now)
        if self.state == Link.REGISTERING:
            return max(0.0, self.next_request_at - now)
        return 1.0

    def close(self) -> None:
        if self.connection:
            self.connection.close()
            self.connection = None
        self.state = Link.STOPPED

    def status(self) -> dict:
        """The same heartbeat fields as `Session.status()`."""
        return {
            "connection": Link.AUTH_FAILED if self.auth_failed and self.state != Link.REGISTERING
            else self.state,
            "connected": False,  # not as the device itself, yet
            "connected_since": None,
            "inflight": 0,
            "sent": 0,
            "reconnects": self.reconnects,
            "attempts": self.attempts,
            "last_ack": None,
            "last_error": self.last_error,
            "inbound_dropped": self.inbound_dropped,
            "inbound_ignored": self.inbound_ignored,
            "rejected": 0,  # s/e lines: the bootstrap user never subscribes s/e
            "rejections": [],
        }

    # -- connection lifecycle -------------------------------------------------------------

    def _remind(self, now: float) -> None:
        if self.reminded_at is not None and now - self.reminded_at < REMIND_EVERY_S:
            return
        self.reminded_at = now
        log.log(logs.NOTICE, "not registered yet: in Cumulocity, add the external ID %s under "
                "Device management > Registration, then accept the device (it asks as %s "
                "every %.0f s)", self.endpoint.client_id, self.endpoint.username,
                POLL_INTERVAL_S)

    def _open(self, now: float) -> None:
        self.generation += 1
        self.attempts += 1
        try:
            self.connection = Connection(self.endpoint, self.events, self.generation, 4)
        except TlsSetupError as exc:
            self._fail(now, str(exc))
            return
        self._enter(Link.CONNECTING, now)
        log.info("connecting to %s:%d as %s (bootstrap user %s) to register",
                 self.endpoint.host, self.endpoint.port, self.endpoint.client_id,
                 self.endpoint.username)
        self.connection.start()

    def _fail(self, now: float, reason: str, auth: bool = False) -> None:
        if self.state == Link.REGISTERING:
            self.reconnects += 1
        if self.connection:
            self.connection.close()
            self.connection = None
        self.failures += 1
        self.auth_failed = auth
        delay = (backoff.near_cap(self.reconnect_max_s, self.rng) if auth else
                 backoff.full_jitter(self.failures, BACKOFF_BASE_S, self.reconnect_max_s,
                                     self.rng))
        self.retry_at = now + delay
        self.last_error = reason
        self.subscription = None
        self._enter(Link.DISCONNECTED, now)
        log.log(logging.ERROR if auth else logging.WARNING, "registration: %s; reconnecting "
                "in %.1f s", reason, delay)

    def _enter(self, state: Link, now: float) -> None:
        self.state, self.state_since = state, now

    def _request(self, now: float) -> None:
        self.next_request_at = now + POLL_INTERVAL_S
        try:
            self.connection.publish(REQUEST_TOPIC, b"", qos=0)
        except NotConnected as exc:
            self.last_error = f"publish failed: {exc}"  # the Disconnected event follows
            return
        self.requests += 1

    # -- events -------------------------------------------------------------------------

    def _on_connected(self, event: Connected, now: float) -> None:
        if not event.ok:
            hint = " (check cumulocity.bootstrap)" if event.auth_failed else ""
            self._fail(now, f"broker refused the bootstrap user: {event.reason}{hint}",
                       auth=event.auth_failed)
            return
        self.auth_failed = False
        try:
            self.subscription = self.connection.subscribe(CREDENTIALS_TOPIC, 1)
        except NotConnected as exc:
            self.last_error = f"subscribe failed: {exc}"  # the Disconnected event follows

    def _on_connect_failed(self, event: ConnectFailed, now: float) -> None:
        self._fail(now, f"cannot connect to {self.endpoint.host}:{self.endpoint.port}: "
                   f"{event.reason}")

    def _on_disconnected(self, event: Disconnected, now: float) -> None:
        self._fail(now, f"connection lost: {event.reason}")

    def _on_subscribed(self, event: Subscribed, now: float) -> None:
        if event.mid != self.subscription:
            return
        if not all(event.granted):
            self._fail(now, f"the broker refused the subscription to {CREDENTIALS_TOPIC}")
            return
        self._enter(Link.REGISTERING, now)
        self.last_error = None
        self._request(now)

    def _on_message(self, event: Message, now: float) -> None:
        if event.topic != CREDENTIALS_TOPIC or len(event.payload) > MAX_INBOUND_BYTES:
            self.inbound_dropped += 1
            self.note_inbound(logging.WARNING, "registration: dropped a %d-byte message on %s "
                              "unread", len(event.payload), logs.external(event.topic, 80))
            return
        found, ignored = parse_credentials(event.payload)
        for reason in ignored:
            self.inbound_ignored += 1
            self.note_inbound(logging.WARNING, "registration: ignored a line on %s: %s",
                              CREDENTIALS_TOPIC, reason)
        if found is None:
            return
        self.credentials = found
        self.close()
        self.last_error = None
        log.log(logs.NOTICE, "registered: Cumulocity issued the login %s for %s",
                found.username, self.endpoint.client_id)


def parse_credentials(payload: bytes) -> tuple[Credentials | None, list[str]]:
    """The first valid `70,<tenant>,<user>,<password>` line of an `s/dcr` payload, and why
    each other line was ignored, for the journal: escaped, and with no field but the first
    (any line here may hold a password, e.g. a `70` line with a stray blank)."""
    found, ignored = None, []
    for fields in smartrest.parse(payload):
        if fields[0] != CREDENTIALS_TEMPLATE:
            ignored.append(f"not a credentials line: template '{logs.external(fields[0], 40)}'"
                           f" and {len(fields) - 1} more field(s), not shown")
            continue
        if len(fields) != 4:
            ignored.append(f"a 70 line with {len(fields) - 1} fields instead of 3 "
                           "(tenant, user, password); its content is not shown")
            continue
        if reason := problem(*fields[1:]):
            ignored.append(f"a 70 line that is no usable login: {reason}")
            continue
        if found is None:
            found = Credentials(*fields[1:])
    return found, ignored


class RefusalWatch:
    """Whether the broker refuses a session's login for good: CONNACK 4/5 (the session's
    `auth_failed`) on at least `at_least` connects in a row, over at least `for_s` seconds.
    One refusal is not enough: CONNACK 5 also means a transient overload (ref §1.9)."""

    def __init__(self, for_s: float = REFUSED_FOR_S, at_least: int = MIN_REFUSALS):
        self.for_s, self.at_least = for_s, at_least
        self.since: float | None = None
        self.first_attempt = 0

    def observe(self, refused: bool, waiting: bool, attempts: int, now: float) -> bool:
        """`refused`: the last connects were refused for the login; `waiting`: no attempt
        is under way; `attempts`: connects so far. True: give the login up."""
        if not refused:
            self.since = None
            return False
        if self.since is None:
            self.since, self.first_attempt = now, attempts
        refusals = attempts - self.first_attempt + (1 if waiting else 0)
        return now - self.since >= self.for_s and refusals >= self.at_least

    def refused_for_s(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


_HANDLERS = {
    Connected: Bootstrap._on_connected,
    ConnectFailed: Bootstrap._on_connect_failed,
    Disconnected: Bootstrap._on_disconnected,
    Subscribed: Bootstrap._on_subscribed,
    Message: Bootstrap._on_message,
}
