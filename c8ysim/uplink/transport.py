"""One MQTT connection attempt over paho-mqtt, for paho 1.6 (Debian 12) and 2.x alike.

This is the only module that imports paho. paho's network thread does nothing but I/O: each
callback turns into an event on the caller's queue, and the device's main loop makes every
decision. A `Connection` lives for one attempt only: when it ends (refused, failed or lost),
the session throws it away and later opens a fresh one. That way paho never re-sends old
messages on its own (the buffer does that) and never reconnects behind our back.

paho imports `ssl` (OpenSSL), `hashlib` (OpenSSL's libcrypto) and `urllib.request` (with
http.client and the email package) at import time, though it only needs them for TLS,
websockets and proxies. A device with TLS off needs none of them, and every process of the
agent would carry them (issue 18: ~4 MB of OpenSSL alone). So paho is imported with
`_Deferred` stand-ins for those not yet imported: each imports the real module on first
use. paho reads `ssl.SSLWantReadError` (and ...WriteError) in `except` clauses around every
socket read and write; as long as no code has imported `ssl` there is no TLS socket that
could raise them, and the stand-in answers with an exception class nobody raises.
`tls_context` imports the real `ssl` before the first TLS connection.
"""

from __future__ import annotations

import importlib
import queue
import re
import socket
import sys
import types
from functools import lru_cache
from typing import NamedTuple

from c8ysim import logs

# Standard modules paho imports but uses only for TLS, websockets or proxies.
DEFERRED_MODULES = ("ssl", "hashlib", "urllib.request")


class _NeverRaised(Exception):
    """Stands for an ssl exception class while no TLS socket can exist."""


class _Deferred(types.ModuleType):
    """A stand-in for a module not imported yet: imports it on the first attribute read."""

    def __getattr__(self, name: str):
        real = sys.modules.get(self.__name__)
        if real is None or real is self:
            if self.__name__ == "ssl" and name in ("SSLWantReadError", "SSLWantWriteError"):
                return _NeverRaised  # no ssl module, so no TLS socket raised this
            if real is self:  # read while paho is being imported
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
        return getattr(real, name)


def _import_paho():
    """paho.mqtt.client, imported with stand-ins for the DEFERRED_MODULES not yet loaded."""
    import urllib

    placed = [name for name in DEFERRED_MODULES if name not in sys.modules]
    for name in placed:
        sys.modules[name] = _Deferred(name)
    if "urllib.request" in placed and not hasattr(urllib, "request"):
        # paho 2 reads it through the package; importing the real one replaces this
        urllib.request = sys.modules["urllib.request"]
    try:
        import paho.mqtt.client as client
    finally:
        for name in placed:
            if isinstance(sys.modules.get(name), _Deferred):
                del sys.modules[name]
    return client


mqtt = _import_paho()

PAHO_2 = hasattr(mqtt, "CallbackAPIVersion")
SUBACK_FAILURE = 0x80
# paho sleeps in 1 s steps between its own reconnect attempts; we never let it get there.
NEVER_S = 24 * 3600
MAX_TOPIC_BYTES = 65535  # MQTT's UTF-8 string length field
CACHED_TOPIC_CHARS = 256  # invalid_topic remembers its answer for topics up to this long
# What brokers refuse in a topic name (MQTT 3.1.1 §1.5.3, §4.7; mosquitto closes the
# connection on it): NUL and the other control characters, non-characters, wildcards.
_BAD_TOPIC_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff+#]")


class Connected(NamedTuple):
    """CONNACK arrived. `ok` False means refused; `auth_failed` for bad credentials."""

    generation: int
    ok: bool
    reason: str
    auth_failed: bool = False


class ConnectFailed(NamedTuple):
    """TCP or TLS could not be set up (refused, unreachable, certificate rejected)."""

    generation: int
    reason: str


class Disconnected(NamedTuple):
    generation: int
    reason: str
    timed_out: bool = False  # paho gave up waiting (keepalive); else the socket was closed


class Published(NamedTuple):
    generation: int
    mid: int


class Subscribed(NamedTuple):
    generation: int
    mid: int
    granted: tuple[bool, ...]  # per filter: True when the broker granted it


class Message(NamedTuple):
    generation: int
    topic: str
    payload: bytes


class Endpoint(NamedTuple):
    """Where and how to connect: the MQTT side of the Cumulocity config."""

    host: str
    port: int
    client_id: str
    username: str | None
    password: str | None  # never in its repr
    keepalive_s: int
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls: bool = False

    __repr__ = logs.repr_without


class NotConnected(Exception):
    pass


class TlsSetupError(Exception):
    """The CA, certificate or key file cannot be used (missing, unreadable, not PEM)."""


class Connection:
    """One connection attempt; events go to `events` tagged with `generation`."""

    def __init__(self, endpoint: Endpoint, events: queue.SimpleQueue, generation: int,
                 max_inflight: int):
        self.endpoint, self.events, self.generation = endpoint, events, generation
        self.client = _new_client(endpoint.client_id)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.reconnect_delay_set(NEVER_S, NEVER_S)
        if endpoint.username:
            self.client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            self.client.tls_set_context(tls_context(endpoint))
        self._install_callbacks()

    def start(self) -> None:
        """Connect in paho's network thread; the outcome arrives as an event."""
        self.client.connect_async(self.endpoint.host, self.endpoint.port,
                                  self.endpoint.keepalive_s)
        self.client.loop_start()

    def close(self) -> None:
        """Disconnect (if connected) and join paho's thread; safe to call twice."""
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnected(mqtt.error_string(info.rc))
        return info.mid

    def subscribe(self, topic: str, qos: int = 1) -> int:
        rc, mid = self.client.subscribe(topic, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnected(mqtt.error_string(rc))
        return mid

    def _post(self, event_type, *args) -> None:
        self.events.put(event_type(self.generation, *args))

    def _install_callbacks(self) -> None:
        client = self.client
        client.on_connect_fail = self._on_connect_fail
        client.on_message = lambda _c, _u, msg: self._post(Message, msg.topic, msg.payload)
        if PAHO_2:
            client.on_connect = lambda _c, _u, _f, rc, _p=None: self._on_connack(rc)
            client.on_disconnect = lambda _c, _u, _f, rc, _p=None: self._post(
                Disconnected, str(rc), str(rc) == "Keep alive timeout")
            client.on_publish = lambda _c, _u, mid, _rc=None, _p=None: self._post(
                Published, mid)
            client.on_subscribe = lambda _c, _u, mid, codes, _p=None: self._post(
                Subscribed, mid, tuple(not code.is_failure for code in codes))
        else:
            client.on_connect = lambda _c, _u, _f, rc: self._on_connack(rc)
            client.on_disconnect = lambda _c, _u, rc: self._post(
                Disconnected, mqtt.error_string(rc), rc == getattr(mqtt, "MQTT_ERR_KEEPALIVE", 16))
            client.on_publish = lambda _c, _u, mid: self._post(Published, mid)
            client.on_subscribe = lambda _c, _u, mid, granted: self._post(
                Subscribed, mid, tuple(q != SUBACK_FAILURE for q in granted))

    def _on_connect_fail(self, client, _userdata) -> None:
        # paho calls this from inside its `except OSError` around the connect (1.6 and 2.x
        # alike), so the exception that ended the attempt is still being handled.
        reason = describe_connect_error(sys.exc_info()[1])
        # Without this paho's thread sleeps in 1 s steps before its own retry, and close()
        # (in the device loop) would wait for it: no readings while the broker is away.
        client.disconnect()
        self._post(ConnectFailed, reason)

    def _on_connack(self, rc) -> None:
        ok, reason, auth_failed = _describe_connack(rc)
        if ok:
            _set_nodelay(self.client.socket())
        self._post(Connected, ok, reason, auth_failed)


def _new_client(client_id: str):
    kwargs = dict(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311,
                  reconnect_on_failure=False)
    if PAHO_2:
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    return mqtt.Client(**kwargs)


def _describe_connack(rc) -> tuple[bool, str, bool]:
    """(accepted, human reason, credentials refused) for either paho's CONNACK code."""
    if PAHO_2:
        # paho 2 reports MQTT 3.1.1 refusals as MQTT 5 reason codes (4 -> 134, 5 -> 135).
        auth = rc in ("Bad user name or password", "Not authorized")
        return not rc.is_failure, str(rc), auth
    # Same words as paho 2 (paho 1.6 says "Connection Refused: not authorised.").
    auth_reasons = {mqtt.CONNACK_REFUSED_BAD_USERNAME_PASSWORD: "Bad user name or password",
                    mqtt.CONNACK_REFUSED_NOT_AUTHORIZED: "Not authorized"}
    reason = auth_reasons.get(rc) or mqtt.connack_string(rc)
    return rc == mqtt.CONNACK_ACCEPTED, reason, rc in auth_reasons


def invalid_topic(topic) -> str | None:
    """Why `topic` can never be published (None: it can), checked before paho sees it:
    paho raises on some of these and sends others, and the broker then drops the
    connection, again on every reconnect. The session asks for every row it drains, and
    nearly every row has one of a few topics: the answers for text topics are cached."""
    if not isinstance(topic, str):
        return f"the topic is {type(topic).__name__}, not text"
    if len(topic) <= CACHED_TOPIC_CHARS:
        return _cached_check(topic)
    return _check_topic(topic)


@lru_cache(maxsize=64)
def _cached_check(topic: str) -> str | None:
    return _check_topic(topic)


def _check_topic(topic: str) -> str | None:
    if not topic:
        return "the topic is empty"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "the topic is not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"the topic is {size} bytes long (MQTT allows {MAX_TOPIC_BYTES})"
    bad = _BAD_TOPIC_CHAR.search(topic)
    if bad:
        return f"the topic contains {bad[0]!r} at position {bad.start()}"
    if any(0xFFFE <= ord(c) & 0xFFFF for c in topic if ord(c) > 0xFFFF):
        return "the topic contains a Unicode non-character"
    return None


def describe_connect_error(exc: BaseException | None) -> str:
    """Why TCP/TLS setup failed, in words that point at the fix."""
    ssl = sys.modules.get("ssl")  # not imported: no TLS, so no TLS error either
    if ssl is None or isinstance(ssl, _Deferred):
        ssl = _NO_SSL
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate verification failed: {exc.verify_message or exc.reason} "
                "(check cumulocity.host and tls.ca_file)")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) if exc else "connection failed"


def _set_nodelay(sock) -> None:
    # paho leaves Nagle on; with small QoS 1 publishes it costs ~40 % throughput at 10 ms RTT.
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


_NO_SSL = types.SimpleNamespace(SSLCertVerificationError=_NeverRaised, SSLError=_NeverRaised)


def tls_context(endpoint: Endpoint) -> "ssl.SSLContext":  # noqa: F821
    """A verifying TLS context: system store or `ca_file`, optional client certificate.

    The files are read again for every connection (so renewed certificates are picked up);
    a file that cannot be used raises TlsSetupError naming it.
    """
    import ssl  # here, not at the top: a device without TLS never loads OpenSSL

    try:
        context = ssl.create_default_context(cafile=endpoint.ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TlsSetupError(f"cannot use tls.ca_file '{endpoint.ca_file}': "
                            f"{describe_connect_error(exc)}") from exc
    if endpoint.cert_file:
        try:
            context.load_cert_chain(endpoint.cert_file, endpoint.key_file,
                                    password=lambda: b"")  # never prompt on a TTY
        except (OSError, ValueError) as exc:
            raise TlsSetupError(
                f"cannot use tls.cert_file '{endpoint.cert_file}' with key_file "
                f"'{endpoint.key_file}': {describe_connect_error(exc)}") from exc
    return context
