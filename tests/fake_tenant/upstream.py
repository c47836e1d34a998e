"""What the tenant does with a message a client published (or its will).

Owns the checker rules on upstream content: topic routing, the
SmartREST line rules 2, 3 and 6 with their ``s/e`` answers (40, 41, 42, 45),
"nothing before 100", the platform's replies to 123, 500, 600 and 602, and
the JSON measurement rule.  MQTT-level handling (QoS, acks, size) is the
broker's; device and operation state live in ``inventory`` and
``operations``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .connection import Connection
from .inventory import Inventory
from .journal import Journal
from .limits import ERR_DEVICE_EXISTS, ERR_MALFORMED, ERR_NO_TEMPLATE, PLATFORM_VERSION
from .measurements import json_measurement_problems, measurement_from_fields, unit_problems
from .operations import OperationBook
from .rejections import LineRejections
from .smartrest import SrLine, parse_smartrest, quoting_problems, strip_trailing_empty
from .templates import TEMPLATE_SPECS, check_arguments, known_template
from .topics import JSON_UP, OTHER_UP, SMARTREST_UP

Deliver = Callable[[Connection, str, bytes], bool]


class Upstream:
    """Validates and applies upstream messages; lives in the server thread."""

    def __init__(self, journal: Journal, inventory: Inventory,
                 operations: OperationBook, deliver: Deliver,
                 create_delay: float) -> None:
        self.journal = journal
        self.inventory = inventory
        self.operations = operations
        self.deliver = deliver
        self.create_delay = create_delay
        self.rejections = LineRejections()  # lines a test makes the platform refuse
        self.registration: Any = None  # bootstrap sessions (registration.Registration)

    def handle(self, conn: Connection, topic: str, payload: bytes) -> float:
        """Validate/apply one upstream message; returns the PUBACK delay."""
        if self.registration is not None and self.registration.is_bootstrap(conn.key):
            self.registration.publish(conn, topic, payload, self.deliver)
            return 0.0
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self.journal.violation(conn.key, f"payload on {topic} is not UTF-8")
            return 0.0
        match = SMARTREST_UP.match(topic)
        if match:
            return self._smartrest(conn, text, main=match.group(2) is None)
        if JSON_UP.match(topic):
            self._json(conn, topic, text)
        elif not OTHER_UP.match(topic):
            self.journal.violation(conn.key, f"PUBLISH to unsupported topic {topic!r}")
        return 0.0

    # ------------------------------------------------------------------ JSON

    def _json(self, conn: Connection, topic: str, text: str) -> None:
        if not self.inventory.ready(conn.key):
            self.journal.violation(conn.key, f"JSON on {topic} before the device "
                                   "was created with 100")
        try:
            doc = json.loads(text)
        except ValueError:
            self.journal.violation(conn.key, f"invalid JSON on {topic}")
            return
        for problem in _json_problems(topic, doc):
            self.journal.violation(conn.key, f"{topic}: {problem}")

    # ------------------------------------------------------------------ SmartREST

    def _smartrest(self, conn: Connection, text: str, main: bool) -> float:
        """Every line is checked; only lines on ``s/us`` itself are applied."""
        delay = 0.0
        created_here = False
        for line in parse_smartrest(text):
            tid = self._validate_line(conn, line)
            if tid is not None:
                refused = self.rejections.check(conn.key, line.fields, line.raw)
                if refused is not None:  # acknowledged, not applied, reported on s/e
                    self._send_error(conn, refused)
                    continue
            if tid is None or not main:
                continue
            args = strip_trailing_empty(line.fields)[1:]
            if tid == 100:
                if self._device_100(conn, args):
                    created_here = True
                    delay = self.create_delay
                continue
            if not created_here and not self.inventory.ready(conn.key):
                self.journal.violation(conn.key, f"{line.raw!r} before the device "
                                       "was created with 100 (line dropped)")
                continue
            self._apply_line(conn, tid, args)
        return delay

    def _validate_line(self, conn: Connection, line: SrLine) -> int | None:
        """Checker rules 2, 3, 6; answers on s/e.  Returns the template ID."""
        tpl = line.template
        if line.error:
            self.journal.violation(conn.key, f"{line.raw!r}: {line.error}")
            self._send_error(conn, f"42,{tpl if tpl.isdigit() else ''},{ERR_MALFORMED}")
            return None
        if not tpl.isdigit() or line.quoted[0] or not known_template(int(tpl)):
            self.journal.violation(conn.key, f"{line.raw!r}: unknown template {tpl!r}")
            self._send_error(conn, f"40,{tpl},{ERR_NO_TEMPLATE}")
            return None
        for problem in quoting_problems(line):
            self.journal.violation(conn.key, f"{line.raw!r}: {problem}")
        tid = int(tpl)
        problem = check_arguments(tid, strip_trailing_empty(line.fields)[1:])
        if problem:
            answer, detail = problem
            self.journal.violation(conn.key, f"{line.raw!r}: {answer} ({detail})")
            self._send_error(conn, f"45,{tid},{answer}")
            return None
        if tid == 201:  # not the platform's rule but c8ysim's: a chart needs one unit each
            measurement = measurement_from_fields(strip_trailing_empty(line.fields))
            for problem in unit_problems(measurement) if measurement else ():
                self.journal.violation(conn.key, f"{line.raw[:80]!r}...: {problem}")
        return tid

    def _device_100(self, conn: Connection, args: list[str]) -> bool:
        """Handle ``100``; True if it created the device."""
        if self.inventory.get(conn.key) is not None:
            self._send_error(conn, f"41,100,{ERR_DEVICE_EXISTS}")
            return False
        name = args[0] if args else ""
        dtype = args[1] if len(args) > 1 else ""
        self.inventory.create(conn.key, name, dtype, self.create_delay)
        return True

    def _apply_line(self, conn: Connection, tid: int, args: list[str]) -> None:
        if tid in (110, 112, 113, 114, 117, 122):
            self.inventory.apply(conn.key, tid, args)
        elif tid in (123, 600, 602):
            self.deliver(conn, "s/ds", self._reply(conn.key, tid).encode())
        elif tid == 500:
            self._on_500(conn)
        elif 501 <= tid <= 507:
            answer = self.operations.update(conn.key, tid, args)
            if answer is not None:
                self._send_error(conn, answer)

    def _reply(self, key: str, tid: int) -> str:
        """The platform's ``s/ds`` answer to 123, 600 and 602."""
        if tid == 123:
            return f"124,{self.inventory.devices[key].mo_id}"
        if tid == 600:
            return f"601,{PLATFORM_VERSION}"
        return "603," + ",".join(map(str, sorted(TEMPLATE_SPECS)))

    def _on_500(self, conn: Connection) -> None:
        """Checker rule 5, then re-send every PENDING operation."""
        if not conn.ds_acked:
            self.journal.violation(conn.key, "500 published before the s/ds "
                                   "subscription was acknowledged in this session")
        conn.sent_500 = True
        for op in self.operations.pending(conn.key):
            if self.deliver(conn, "s/ds", op.line.encode()):
                op.deliveries += 1

    def _send_error(self, conn: Connection, line: str) -> None:
        self.deliver(conn, "s/e", line.encode())


def _json_problems(topic: str, doc: object) -> list[str]:
    """Checker rule 9 for ``measurement/measurements/create[Bulk]``."""
    if topic.endswith("measurement/measurements/create"):
        return json_measurement_problems(doc)
    if topic.endswith("measurement/measurements/createBulk"):
        items = doc.get("measurements") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            return ["createBulk without measurements list"]
        return [p for m in items for p in json_measurement_problems(m)]
    return []
