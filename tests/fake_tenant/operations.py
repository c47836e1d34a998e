"""Operations: created by tests, driven by the client's 501-507 lines.

Owns each client's ``Operation`` list and its status machine
(PENDING -> EXECUTING -> SUCCESSFUL | FAILED), and checker rule 4:
a ``501,<fragment>`` is followed by exactly one 502/503 before the next 501.
Delivery on ``s/ds`` is the broker's; this module only decides.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Callable

from .journal import Journal

# operation templates on s/ds and the fragment they stand for (ref §3.3)
OPERATION_FRAGMENTS = {
    "510": "c8y_Restart", "511": "c8y_Command", "513": "c8y_Configuration",
    "515": "c8y_Firmware", "516": "c8y_SoftwareList",
    "517": "c8y_MeasurementRequestOperation", "518": "c8y_Relay",
    "519": "c8y_RelayArray", "522": "c8y_LogfileRequest",
    "523": "c8y_CommunicationMode", "524": "c8y_DownloadConfigFile",
    "526": "c8y_UploadConfigFile", "527": "c8y_DeviceProfile",
    "528": "c8y_SoftwareUpdate", "530": "c8y_RemoteAccessConnect",
}


@dataclasses.dataclass
class Operation:
    """An operation created with ``send_operation``.

    status: PENDING -> EXECUTING -> SUCCESSFUL | FAILED
    history: list of (status, time.monotonic()).
    """

    id: str
    client_id: str
    fragment: str | None
    line: str
    status: str = "PENDING"
    failure_reason: str | None = None
    result: list[str] = dataclasses.field(default_factory=list)
    deliveries: int = 0
    history: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    def set_status(self, status: str) -> None:
        self.status = status
        self.history.append((status, time.monotonic()))


class OperationBook:
    """Operations and open 501s by client key; lives in the server thread."""

    def __init__(self, journal: Journal, new_id: Callable[[], str]) -> None:
        self.journal = journal
        self.new_id = new_id
        self.ops: dict[str, list[Operation]] = collections.defaultdict(list)
        self._open_501: dict[str, set[str]] = collections.defaultdict(set)

    def create(self, key: str, line: str) -> Operation:
        """A PENDING operation for the ``s/ds`` line ``line``."""
        template = line.split(",", 1)[0]
        op = Operation(id=self.new_id(), client_id=key,
                       fragment=OPERATION_FRAGMENTS.get(template), line=line)
        op.set_status("PENDING")
        self.ops[key].append(op)
        return op

    def of(self, key: str) -> list[Operation]:
        return self.ops.get(key, [])

    def pending(self, key: str) -> list[Operation]:
        return [op for op in self.of(key) if op.status == "PENDING"]

    def update(self, key: str, tid: int, args: list[str]) -> str | None:
        """Apply a 501-507 line; returns an ``s/e`` answer if there is one."""
        if tid in (501, 502, 503, 507):
            self._check_pairing(key, tid, args[0] if args else "")
        if tid in (501, 502, 503):
            self._update_by_fragment(key, tid, args)
        elif tid in (504, 505, 506):
            return self._update_by_id(key, tid, args)
        else:
            self._fail_executing(key, args)
        return None

    def _check_pairing(self, key: str, tid: int, fragment: str) -> None:
        """Checker rule 4: 501 -> exactly one 502/503 before the next 501."""
        open_set = self._open_501[key]
        if tid == 501:
            if fragment in open_set:
                self.journal.violation(key, f"501,{fragment} while a previous "
                                       f"501,{fragment} has no 502/503 yet")
            open_set.add(fragment)
        elif tid in (502, 503):
            if fragment not in open_set:
                self.journal.violation(key, f"{tid},{fragment} without a preceding "
                                       f"open 501,{fragment}")
            open_set.discard(fragment)
        elif fragment:
            open_set.discard(fragment)
        else:
            open_set.clear()

    def _update_by_fragment(self, key: str, tid: int, args: list[str]) -> None:
        fragment = args[0]
        wanted = "PENDING" if tid == 501 else "EXECUTING"
        op = next((o for o in self.of(key)
                   if o.fragment == fragment and o.status == wanted), None)
        if op is None:
            self.journal.warning(key, f"{tid},{fragment}: no {wanted} operation")
            return
        _transition(op, tid, args[1:])

    def _update_by_id(self, key: str, tid: int, args: list[str]) -> str | None:
        op = next((o for o in self.of(key) if o.id == args[0]), None)
        if op is None:
            self.journal.violation(key, f"{tid},{args[0]}: no such operation for "
                                   "this device")
            return f"45,{tid},Operation with id {args[0]} for device id {key} not found"
        _transition(op, tid - 3, args[1:])
        return None

    def _fail_executing(self, key: str, args: list[str]) -> None:
        """507: every EXECUTING operation (of that fragment, if given) FAILED."""
        fragment = args[0] if args else ""
        for op in self.of(key):
            if op.status == "EXECUTING" and (not fragment or op.fragment == fragment):
                op.failure_reason = args[1] if len(args) > 1 else ""
                op.set_status("FAILED")


def _transition(op: Operation, tid: int, rest: list[str]) -> None:
    """501 EXECUTING, 502 FAILED with reason, 503 SUCCESSFUL with result."""
    if tid == 501:
        op.set_status("EXECUTING")
    elif tid == 502:
        op.failure_reason = rest[0] if rest else ""
        op.set_status("FAILED")
    else:
        op.result = rest
        op.set_status("SUCCESSFUL")
