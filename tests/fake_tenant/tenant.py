"""``FakeTenant``: the object tests hold, and the thread the server runs in.

Owns the life cycle (an asyncio loop in a daemon thread, started and stopped
from synchronous test code), the thread hand-over (every query and control
runs in the server thread via ``_call``), and the public API: queries on what
clients did and fault injection.  The state itself lives in ``journal``,
``inventory``, ``operations``, ``admission`` and ``broker``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import threading
import time
import traceback
from typing import Any, Callable

from .admission import Admission
from .inventory import Device, Inventory
from .journal import Journal, Record
from .limits import DEFAULT_PASSWORD, DEFAULT_USERNAME
from .measurements import measurement_from_fields
from .mqtt import client_key
from .operations import Operation, OperationBook
from .registration import RegisteringBroker, Registration
from .smartrest import parse_smartrest
from .throttle import StreamStats


class FakeTenant:
    """Cumulocity-like MQTT server for tests; see the package docstring."""

    def __init__(self, credentials: dict[str, str] | None = None, *,
                 host: str = "127.0.0.1", create_delay: float = 0.0,
                 connect_timeout: float = 10.0,
                 bootstrap_password: str | None = None) -> None:
        """``credentials`` maps ``"<tenant>/<user>"`` to the password.

        ``create_delay`` (s) makes device creation by ``100`` take effect
        (and its PUBACK be sent) only after that delay, to expose agents that
        do not wait for the PUBACK before subscribing to ``s/ds``.

        ``bootstrap_password``: the password of the bootstrap user
        ``management/devicebootstrap`` (None: it cannot log in); see
        ``accept_registration``.  Issued logins are in the first tenant of
        ``credentials``.
        """
        self.host = host
        self.port = 0
        self._journal = Journal()
        self._inventory = Inventory()
        self._operations = OperationBook(self._journal, self._inventory.new_id)
        self._admission = Admission(
            dict(credentials or {DEFAULT_USERNAME: DEFAULT_PASSWORD}))
        self._registration = Registration(
            self._journal, self._admission,
            next(iter(self._admission.credentials), "t100/").partition("/")[0],
            bootstrap_password)
        self._admission.registration = self._registration
        self._broker = RegisteringBroker(self._journal, self._admission, self._inventory,
                                         self._operations, create_delay=create_delay,
                                         connect_timeout=connect_timeout,
                                         registration=self._registration)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None

    @property
    def credentials(self) -> dict[str, str]:
        """The live ``"<tenant>/<user>"`` -> password map (may be changed)."""
        return self._admission.credentials

    @credentials.setter
    def credentials(self, value: dict[str, str]) -> None:
        self._admission.credentials = value

    @property
    def create_delay(self) -> float:
        return self._broker.upstream.create_delay

    @property
    def connect_timeout(self) -> float:
        return self._broker.connect_timeout

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 5.0) -> "FakeTenant":
        """Start the server thread; returns when the port is listening."""
        if self._thread is not None:
            raise RuntimeError("FakeTenant already started")
        self._thread = threading.Thread(target=self._run, name="FakeTenant",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("FakeTenant did not start in time")
        if self._startup_error is not None:
            raise RuntimeError("FakeTenant failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and the listener, join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            self._loop = None
            return
        try:
            loop.call_soon_threadsafe(self._stop_event.set)  # type: ignore[union-attr]
        except RuntimeError:
            pass
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("FakeTenant thread did not stop in time")
        self._loop = None

    def __enter__(self) -> "FakeTenant":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._startup_error = exc
            self._journal.internal_errors.append(traceback.format_exc())
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._broker.serve, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_event.wait()
        await self._broker.shutdown(server)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the server thread (all state lives there)."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return fn(*args)
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - re-raised in caller
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:           # loop already closed
            return fn(*args)
        return future.result(timeout=5.0)

    # ------------------------------------------------------------------ queries

    @staticmethod
    def key(client_id: str) -> str:
        """Normalise a client ID to its device part (``d:abc`` -> ``abc``)."""
        return client_key(client_id)

    def records(self, client_id: str) -> list[Record]:
        """Every recorded packet/event of that client, in order."""
        return self._call(self._journal.records, self.key(client_id))

    def sent(self, client_id: str) -> list[Record]:
        """Every PUBLISH the tenant sent to that client (kind ``sent``)."""
        return self._call(self._journal.sent, self.key(client_id))

    def lines(self, client_id: str, topic: str = "s/us") -> list[list[str]]:
        """Fields of every SmartREST line published on ``topic``, in order.

        Includes lines of executed last wills; excludes messages the tenant
        rejected (oversize, rate-limited).  Fields are as sent (unquoted).
        """
        out = []
        for rec in self.records(client_id):
            if rec.kind in ("publish", "will") and rec.accepted and rec.topic == topic:
                out.extend(line.fields for line in parse_smartrest(rec.text))
        return out

    def measurements(self, client_id: str, topic: str = "s/us") -> list[dict[str, Any]]:
        """Valid 200/201/210/211/212 lines as dicts.

        ``{"template", "type", "time" (str or None), "series": [{"fragment",
        "series", "value" (float), "unit"}]}``
        """
        found = (measurement_from_fields(f) for f in self.lines(client_id, topic))
        return [meas for meas in found if meas is not None]

    @property
    def violations(self) -> list[str]:
        """Checker-rule and protocol violations, ``"<client>: <text>"``."""
        return self._call(lambda: list(self._journal.violations))

    @property
    def warnings(self) -> list[str]:
        return self._call(lambda: list(self._journal.warnings))

    @property
    def internal_errors(self) -> list[str]:
        """Unexpected exceptions inside the fake itself (should stay empty)."""
        return self._call(lambda: list(self._journal.internal_errors))

    def device(self, client_id: str) -> Device | None:
        return self._call(lambda: copy.deepcopy(self._inventory.get(self.key(client_id))))

    def operations(self, client_id: str) -> list[Operation]:
        return self._call(lambda: copy.deepcopy(self._operations.of(self.key(client_id))))

    def subscriptions(self, client_id: str) -> dict[str, int]:
        """Granted subscriptions (filter -> QoS) of the live session."""
        def get() -> dict[str, int]:
            conn = self._broker.active.get(self.key(client_id))
            return dict(conn.subs) if conn else {}
        return self._call(get)

    def is_connected(self, client_id: str) -> bool:
        return self._call(lambda: self.key(client_id) in self._broker.active)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0,
                 interval: float = 0.01) -> bool:
        """Poll ``predicate`` until it is truthy; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # ------------------------------------------------------------------ control

    def send_operation(self, client_id: str, line: str) -> Operation:
        """Create an operation (PENDING) and publish ``line`` on ``s/ds``.

        The line is delivered only if the client is connected and subscribed
        to ``s/ds`` (at the granted QoS); otherwise it waits for a ``500``.
        """
        return self._call(self._send_operation, self.key(client_id), line)

    def _send_operation(self, key: str, line: str) -> Operation:
        op = self._operations.create(key, line)
        if self._broker.deliver(self._broker.active.get(key), "s/ds", line.encode()):
            op.deliveries += 1
        return copy.deepcopy(op)

    def drop(self, client_id: str) -> bool:
        """Abort the client's TCP connection (no DISCONNECT, will fires)."""
        def do() -> bool:
            conn = self._broker.active.get(self.key(client_id))
            if conn is None:
                return False
            self._broker.close(conn, "dropped by tenant.drop()")
            return True
        return self._call(do)

    def refuse_connects(self, code: int, count: int | None = None) -> None:
        """Answer the next ``count`` connects (None: all) with CONNACK ``code``."""
        if code not in (1, 2, 3, 4, 5):
            raise ValueError("CONNACK refusal codes are 1..5")
        self._call(self._admission.refuse, code, count)

    def accept_connects(self) -> None:
        """Undo ``refuse_connects``."""
        self._call(self._admission.accept)

    # ------------------------------------------------------------------ registration

    def accept_registration(self, external_id: str) -> None:
        """The operator accepts the device in Device management > Registration:
        its next ``s/ucr`` poll gets ``70,<tenant>,device_<id>,<password>``."""
        self._call(self._registration.accept, self.key(external_id))

    def issued_credentials(self, external_id: str) -> tuple[str, str, str] | None:
        """(tenant, user, password) issued to that device and not revoked."""
        return self._call(lambda: self._registration.issued.get(self.key(external_id)))

    def registration_requests(self, external_id: str) -> int:
        """How many ``s/ucr`` polls that client made as the bootstrap user."""
        return self._call(lambda: self._registration.requests.get(self.key(external_id), 0))

    def revoke_credentials(self, external_id: str) -> tuple[str, str, str] | None:
        """The device was deleted with its user: its login stops working (CONNACK
        4, ref §1.9), its live session is dropped, the inventory forgets it."""
        return self._call(self._revoke, self.key(external_id))

    def _revoke(self, key: str) -> tuple[str, str, str] | None:
        issued = self._registration.revoke(key)
        self._inventory.devices.pop(key, None)
        conn = self._broker.active.get(key)
        if conn is not None:
            self._broker.close(conn, "device deleted (revoke_credentials)")
        return issued

    def withhold_puback(self, client_id: str, on: bool) -> None:
        """Receive but do not PUBACK/PUBREC; switching off sends held acks."""
        self._call(self._broker.set_withhold, self.key(client_id), on)

    def disconnect_after_first_message(self, client_id: str,
                                       sessions: int | None = 1) -> None:
        """Rate-limit symptom: the next ``sessions`` sessions (None: all, 0:
        disarm) are closed on their first PUBLISH, which is rejected unacked."""
        self._call(self._admission.arm_rate_limit, self.key(client_id), sessions)

    # ------------------------------------------------------------------ PUBACK is not acceptance

    def reject_lines(self, predicate: Callable[[str, list[str]], bool],
                     answer: str | Callable[[list[str]], str] | None = None,
                     count: int | None = None) -> None:
        """Acknowledge, then refuse, the next ``count`` (None: all) SmartREST lines
        for which ``predicate(client key, fields)`` holds: not applied, answered on
        ``s/e`` (ref §3.4).  ``answer``: the line, ``{template}`` filled in, or a
        callable of the fields; None: ``40,<template>,No static template ...``."""
        self._call(self._broker.upstream.rejections.add, predicate, answer, count)

    def stop_rejecting(self) -> None:
        self._call(self._broker.upstream.rejections.clear)

    def rejected_lines(self, client_id: str) -> list[str]:
        """The lines of that client ``reject_lines`` refused, in order."""
        return self._call(lambda: list(
            self._broker.upstream.rejections.rejected.get(self.key(client_id), [])))

    # ------------------------------------------------------------------ stream limit

    def limit_stream(self, lines_per_s: float | None, queue_lines: int = 0) -> None:
        """Tenant-wide "Limit stream requests" / "Limit stream queue" (ref §5):
        ``lines_per_s`` over all devices, excess queued up to ``queue_lines``
        lines, beyond that the publish is rejected and its session disconnected
        (None: no limit; see ``throttle``)."""
        self._call(self._broker.stream_limit.configure, lines_per_s, queue_lines)

    def stream_stats(self) -> StreamStats:
        return self._call(lambda: copy.deepcopy(self._broker.stream_limit.stats))
