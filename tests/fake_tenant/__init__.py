"""A strict, Cumulocity-like fake tenant for testing c8ysim over real MQTT.

``FakeTenant`` is a small MQTT 3.1.1 server (standard-library asyncio, running
in a background thread) that behaves like Cumulocity IoT *Core MQTT* as
described in the protocol reference, cumulocity-mqtt-reference.md in the
shared docs (cited as "ref §n" below), and records everything each client
does, so tests can assert on what the agent published and on a list of
protocol/checker violations.

It deliberately shares no code with ``c8ysim/``: the SmartREST parser and the
MQTT codec here are independent so that a bug in the agent's implementation
is not mirrored by the checker.

Usage from synchronous pytest code::

    with FakeTenant() as tenant:            # listens on 127.0.0.1:<tenant.port>
        ...run the agent / a paho client against it...
        assert tenant.wait_for(lambda: tenant.lines("pv-1"))
        assert tenant.violations == []

Connection rules (ref §1):

* protocol level must be 4 / "MQTT" (3.1.1); anything else -> CONNACK 1
  (paho's ``MQTTv31`` included, although real Core MQTT also takes 3.1);
* client ID ``<dev>``, ``d:<dev>`` or ``d:<dev>:<xid>``; empty IDs, other
  prefixes or extra colons -> CONNACK 2.  Everything is keyed by the device
  part, so ``records("d:abc")`` and ``records("abc")`` are the same client;
* clean session must be 1.  The doc gives no code for Core; the fake answers
  CONNACK 2 (3.1.1 ties 0x02 to client-ID/session rejection) and records a
  violation, so an agent that sets clean_session=False fails loudly;
* username ``<tenant>/<user>`` and password must match ``credentials``
  (else CONNACK 4); no username or no/empty password -> CONNACK 5 ("not for
  empty password", ref §1.9);
* a second connection with the same device ID knocks the first one off;
* keepalive is enforced: no packet for 1.5 x keepalive closes the connection.

Everything arriving on ``s/us`` (also ``t/``, ``q/``, ``c/`` and child
topics) is parsed and validated; see ``TEMPLATE_SPECS``.  Errors are answered
on ``s/e`` like the platform (40 unknown template, 41 device exists, 42
malformed line, 45 bad arguments) and appended to ``tenant.violations``.

QoS: 0, 1 and 2 are supported in both directions (inbound QoS 2 is processed
on PUBLISH and de-duplicated by packet id until PUBREL).  Downstream messages
go out at the granted subscription QoS.  Subscriptions are only granted for
exact Cumulocity downstream topics (no wildcards).

Device registration (ref §1.5): with ``FakeTenant(bootstrap_password=...)``
the bootstrap user may log in and poll ``s/ucr``; ``accept_registration``
makes the next poll get its credentials on ``s/dcr``, ``revoke_credentials``
takes them away (see ``registration``).

Not implemented: TLS/WebSocket, certificate auth, JWT on ``s/dat``, custom templates (``s/uc``/``s/ut`` publishes are
only recorded), retained messages, persistent sessions, and redelivery of
PENDING operations on subscribe (only ``500`` re-sends them, which is the
strict reading of ref §6.4).

Modules (each says what it owns):

* ``tenant``: ``FakeTenant``, its server thread, queries and fault injection;
* ``broker``: connections, sessions and the MQTT packet flow;
* ``admission``: the CONNACK decision, credentials, connect-time faults;
* ``registration``: the bootstrap user, accepted registrations, issued logins;
* ``upstream``: what a published message means (checker rules, ``s/e``);
* ``rejections``: lines the platform takes, PUBACKs and then rejects on ``s/e``
  (``tenant.reject_lines``), as it does for a template an old platform lacks;
* ``throttle``: the tenant-wide stream limit (``tenant.limit_stream``): lines
  over the rate queue, and the session that overflows the queue is disconnected;
* ``inventory``, ``operations``: device and operation state;
* ``journal``: the records and verdicts tests assert on;
* ``connection``: per-connection state;
* ``mqtt``, ``smartrest``, ``templates``, ``measurements``, ``topics``,
  ``limits``: codecs, rules and constants without state.
"""

from .inventory import Device
from .journal import Record
from .limits import (
    DEFAULT_PASSWORD, DEFAULT_USERNAME, ERR_ARGS, ERR_DEVICE_EXISTS, ERR_MALFORMED,
    ERR_NO_TEMPLATE, MAX_MESSAGE_BYTES, MAX_PACKET_BYTES, MAX_WRITE_BUFFER,
    PLATFORM_VERSION, WARN_PAYLOAD_BYTES,
)
from .mqtt import (
    CONNACK, CONNECT, DISCONNECT, PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC,
    PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE, Malformed, device_identifier,
)
from .operations import OPERATION_FRAGMENTS, Operation
from .smartrest import SrLine, parse_smartrest, quoting_problems
from .templates import (
    BOOL, FRAG, INT, NUM, OPID, SEVERITY, TEMPLATE_SPECS, TEXT, TIME, FieldSpec,
    TemplateSpec, check_arguments, is_iso_time,
)
from .tenant import FakeTenant
from .topics import FREE_TOPICS, JSON_UP, NEEDS_DEVICE_TOPICS, OTHER_UP, SMARTREST_UP

__all__ = [
    "BOOL", "CONNACK", "CONNECT", "DEFAULT_PASSWORD", "DEFAULT_USERNAME", "DISCONNECT",
    "Device", "ERR_ARGS", "ERR_DEVICE_EXISTS", "ERR_MALFORMED", "ERR_NO_TEMPLATE",
    "FRAG", "FREE_TOPICS", "FakeTenant", "FieldSpec", "INT", "JSON_UP",
    "MAX_MESSAGE_BYTES", "MAX_PACKET_BYTES", "MAX_WRITE_BUFFER", "Malformed",
    "NEEDS_DEVICE_TOPICS", "NUM", "OPERATION_FRAGMENTS", "OPID", "OTHER_UP",
    "Operation", "PINGREQ", "PINGRESP", "PLATFORM_VERSION", "PUBACK", "PUBCOMP",
    "PUBLISH", "PUBREC", "PUBREL", "Record", "SEVERITY", "SMARTREST_UP", "SUBACK",
    "SUBSCRIBE", "SrLine", "TEMPLATE_SPECS", "TEXT", "TIME", "TemplateSpec",
    "UNSUBACK", "UNSUBSCRIBE", "WARN_PAYLOAD_BYTES", "check_arguments",
    "device_identifier", "is_iso_time", "parse_smartrest", "quoting_problems",
]
