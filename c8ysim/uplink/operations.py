"""Device operations arriving on `s/ds`: `c8y_Restart` (510) is carried out, so are the
operations the device hands in as `actions` (c8y_Command, c8y_Configuration,
c8y_MeasurementRequestOperation: `c8ysim.control`), every other operation addressed to the
device is refused; either way each one ends (SUCCESSFUL or FAILED).

The restart's progress lives in the device's durable store, so it survives the restart it
causes (and any crash on the way):

    510 -> marker "accepted" -> 501 -> (PUBACK) marker "executing" -> the child exits
    new child, online -> 503 -> (PUBACK) marker cleared

A child that comes up with the marker still "accepted" cannot know whether the platform saw
its 501, so it reports 502 with a reason; any restart still PENDING is re-sent after the
following 500. Either way no operation is left stuck in EXECUTING. Static `510` lines carry
no operation ID, so while a restart is in progress a repeated 510 is ignored.

Restarts are rate-limited (`RESTART_MIN_INTERVAL_S`, measured from the last accepted one,
kept durably so that it survives the restart): a 510 that comes too soon is refused with
501 then 502 and a reason, under the same marker, so it too ends FAILED and never stuck.

Every other operation of the static templates (`OPERATION_FRAGMENTS`) is answered in turn
from a durable FIFO in the store (`OWED_KEY`), one at a time in arrival order, each step
after the previous one's PUBACK, like the restart. An action the device supports is carried
out when the platform has acknowledged its 501 (so it is EXECUTING), and its answer is
stored before it is sent; an unsupported one is answered
`502,<fragment>,"<fragment> is not supported by c8ysim"`:

    delivery -> owed "new" -> (its turn) "sent", 501 -> (PUBACK) action, answer stored
             -> 503 (or 502 with the action's reason) -> (PUBACK) done

A restart waits for the answer step in flight (the child exits between two answers), and
from its acknowledged 501 on nothing new is taken on: the 500 after it delivers again.

After a lost connection or a restart of the child, `resume()` finishes the head: "sent"
with a stored answer sends that answer; "sent" without one (its 501 may have gone out, its
action may not have run) sends 502 "interrupted" (it fails it, or, when the 501 never
arrived, is refused on `s/e` while the operation stays PENDING and is delivered again). The
entries still "new" are forgotten: nothing was sent or done for them, they are still
PENDING, and the 500 that follows every connect delivers them again (answering them now as
well would answer them twice). At most `MAX_OWED_ANSWERS` are owed; beyond that a delivery
is ignored (counted) and waits, PENDING, for the next 500. A line of a template without an
operation fragment (unknown, or not an operation) is ignored and counted.

Everything logged about a payload is external text: escaped and truncated, and one payload
yields at most a few lines (the first line of each kind, then a count of the rest).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Mapping

from c8ysim import logs
from c8ysim.storage import Buffer
from c8ysim.uplink import smartrest

RESTART_FRAGMENT = "c8y_Restart"
RESTART_TEMPLATE = 510
RESTART_MARKER_KEY = "operation.c8y_Restart"
ACCEPTED, EXECUTING = "accepted", "executing"
RESTART_ACCEPTED_AT_KEY = "operation.c8y_Restart.accepted_at"  # wall clock, epoch s
RESTART_MIN_INTERVAL_S = 60.0
INTERRUPTED_REASON = "Agent restarted before the restart could start"
TOO_SOON_REASON = ("Restart refused: the device restarted {ago:.0f} s ago "
                   "(at most one restart per {limit:.0f} s)")

# The operation templates on s/ds and the fragment each stands for (reference §3.3); 510
# (c8y_Restart) is the one c8ysim supports.
OPERATION_FRAGMENTS = {
    511: "c8y_Command", 513: "c8y_Configuration", 515: "c8y_Firmware",
    516: "c8y_SoftwareList", 517: "c8y_MeasurementRequestOperation", 518: "c8y_Relay",
    519: "c8y_RelayArray", 522: "c8y_LogfileRequest", 523: "c8y_CommunicationMode",
    524: "c8y_DownloadConfigFile", 526: "c8y_UploadConfigFile", 527: "c8y_DeviceProfile",
    528: "c8y_SoftwareUpdate", 530: "c8y_RemoteAccessConnect",
}
# JSON [[fragment, "new"|"sent", argument, answer], ...], oldest first; answer: null (the
# action has not run) or [true, result] or [false, reason]
OWED_KEY = "operation.unsupported"  # its name from when it held only refusals
NEW, SENT = "new", "sent"
MAX_OWED_ANSWERS = 50
MAX_ARGUMENT_CHARS = 4096  # an operation's text (the command, the configuration) kept
NOT_SUPPORTED_REASON = "{fragment} is not supported by c8ysim"
INTERRUPTED_ACTION_REASON = "Interrupted: the connection or the agent restarted while it ran"

log = logging.getLogger(__name__)

# publish(SmartREST line, called once the broker acknowledged it)
Publish = Callable[[str, Callable[[], None]], None]
# note(level, message, *args): log one line about external input (maybe rate-limited)
Note = Callable[..., object]
# an action: the operation's text (its first field, "" if none) -> (succeeded, result/reason)
Action = Callable[[str], tuple[bool, str]]


class Operations:
    def __init__(self, external_id: str, buffer: Buffer, note: Note | None = None,
                 clock: Callable[[], float] = time.time,
                 actions: Mapping[str, Action] | None = None):
        self.external_id, self.buffer = external_id, buffer
        self.actions = dict(actions or {})
        self.note = note or log.log
        self.clock = clock
        self.restart_requested = False  # the device loop exits the child when set
        self.ignored_lines = 0  # lines of s/ds payloads ignored (malformed, not ours, ...)
        self.refused_restarts = 0
        self.refused_unsupported = 0  # deliveries of unsupported operations answered FAILED
        self.owed: list[list] | None = None  # OWED_KEY, read at first use
        self.answering = False  # an answer's step awaits its PUBACK on this connection
        self.restart_pending = False  # restart acknowledged, waiting for that step's PUBACK

    def resume(self, publish: Publish) -> None:
        """Finish a restart and an answer that were in flight; call once s/ds is subscribed
        on a new connection (before its 500)."""
        if self.restart_pending:  # the link dropped before the answer in flight ended:
            self.restart_requested = True  # restart now; the next child finishes both
            return
        self._resume_restart(publish)
        owed = self._owed()
        started = [entry for entry in owed if entry[1] == SENT]
        if len(started) != len(owed):
            log.info("%d unsupported operation(s) not answered yet: the 500 delivers them "
                     "again", len(owed) - len(started))
            self._save_owed(started)
        self.answering = False  # what was in flight went with the old connection
        self._answer_next(publish)

    def _resume_restart(self, publish: Publish) -> None:
        marker = self.buffer.get_meta(RESTART_MARKER_KEY)
        if marker == EXECUTING:
            log.info("restart done; reporting c8y_Restart successful")
            publish(smartrest.operation_successful(RESTART_FRAGMENT), self._clear)
        elif marker == ACCEPTED:
            log.warning("a restart was interrupted before it started; reporting it failed")
            publish(smartrest.operation_failed(RESTART_FRAGMENT, INTERRUPTED_REASON),
                    self._clear)

    def handle(self, payload: bytes, publish: Publish) -> None:
        """Act on one `s/ds` message (several lines possible); never raises on bad input.

        Logs at most one line per kind of ignored line, plus one count of the rest. Once
        the child is about to restart, nothing more is taken on: what is PENDING is
        delivered again after the restart (the 500)."""
        if self.restart_requested or self.restart_pending:
            return
        operations, rejected = smartrest.split_operations(payload)
        ignored, refused = _Ignored(self.note), _Ignored(self.note, "refused")
        for fields in rejected:
            ignored.add("malformed", logging.WARNING, "ignoring malformed operation line: %s",
                        logs.external(",".join(fields)))
        for operation in operations:
            if operation.external_id != self.external_id:
                ignored.add("other", logging.INFO,
                            "ignoring operation %d for another device (%s)",
                            operation.template, logs.external(operation.external_id, 80))
            elif operation.template == RESTART_TEMPLATE:
                self._start_restart(publish)
            elif operation.template not in OPERATION_FRAGMENTS:
                ignored.add("unsupported", logging.WARNING, "ignoring unsupported operation %d "
                            "(no operation fragment known for it)", operation.template)
            elif len(self._owed()) >= MAX_OWED_ANSWERS:
                ignored.add("owed", logging.WARNING, "not answering operation %d now: %d "
                            "answers owed already (it stays PENDING until the next 500)",
                            operation.template, MAX_OWED_ANSWERS)
            else:
                self.owed.append(self._owe(operation, refused))
                self._save_owed(self.owed)
        ignored.summarize()
        refused.summarize()
        self.ignored_lines += ignored.count
        self.refused_unsupported += refused.count
        self._answer_next(publish)

    def _owe(self, operation: smartrest.Operation, refused: "_Ignored") -> list:
        """The owed entry for one delivered operation: its action's, or a refusal."""
        fragment = OPERATION_FRAGMENTS[operation.template]
        argument = operation.fields[0] if operation.fields else ""
        if fragment not in self.actions:
            refused.add(fragment, logging.WARNING, "refusing operation %d (%s): not "
                        "supported by c8ysim", operation.template, fragment)
            return [fragment, NEW, "", [False, NOT_SUPPORTED_REASON.format(fragment=fragment)]]
        self.note(logging.INFO, "operation %s: %s", fragment, logs.external(argument, 200))
        if len(argument) > MAX_ARGUMENT_CHARS:
            return [fragment, NEW, "", [False, f"{fragment} text longer than "
                                              f"{MAX_ARGUMENT_CHARS} characters"]]
        return [fragment, NEW, argument, None]

    @property
    def idle(self) -> bool:
        """Nothing owed and nothing in flight: the link may go down without leaving an
        operation half answered."""
        return not self._owed() and not self.answering and not self.restart_pending

    def _start_restart(self, publish: Publish) -> None:
        if self.restart_requested or self.buffer.get_meta(RESTART_MARKER_KEY):
            self.note(logging.INFO, "a restart is already in progress; ignoring the repeated 510")
            return
        too_soon = self._too_soon()
        self.buffer.set_meta(RESTART_MARKER_KEY, ACCEPTED)
        if too_soon:
            self.refused_restarts += 1
            self.note(logging.WARNING, "refusing c8y_Restart: %s", too_soon)
            publish(smartrest.operation_executing(RESTART_FRAGMENT),
                    lambda: publish(smartrest.operation_failed(RESTART_FRAGMENT, too_soon),
                                    self._clear))
            return
        log.info("restart requested; reporting c8y_Restart executing")
        self.buffer.set_meta(RESTART_ACCEPTED_AT_KEY, repr(self.clock()))
        publish(smartrest.operation_executing(RESTART_FRAGMENT), self._executing)

    def _too_soon(self) -> str | None:
        """The reason to refuse a restart now, or None."""
        try:
            ago = self.clock() - float(self.buffer.get_meta(RESTART_ACCEPTED_AT_KEY) or "nan")
        except ValueError:
            return None
        if 0 <= ago < RESTART_MIN_INTERVAL_S:  # NaN (none yet) and a clock stepped back: allow
            return TOO_SOON_REASON.format(ago=ago, limit=RESTART_MIN_INTERVAL_S)
        return None

    def _executing(self) -> None:
        self.buffer.set_meta(RESTART_MARKER_KEY, EXECUTING)
        if self.answering:  # exit between two answers, not in the middle of one
            self.restart_pending = True
        else:
            self.restart_requested = True

    def _clear(self) -> None:
        self.buffer.set_meta(RESTART_MARKER_KEY, None)

    # -- answering the other operations ----------------------------------------------------

    def _owed(self) -> list[list]:
        if self.owed is None:
            self.owed = _decode_owed(self.buffer.get_meta(OWED_KEY), self.actions)
        return self.owed

    def _save_owed(self, owed: list[list]) -> None:
        self.owed = owed
        self.buffer.set_meta(OWED_KEY, json.dumps(owed) if owed else None)

    def _answer_next(self, publish: Publish) -> None:
        """Start the oldest owed answer, unless one is under way."""
        owed = self._owed()
        if self.answering or not owed or self.restart_pending or self.restart_requested:
            return
        self.answering = True
        head = owed[0]
        done = lambda: self._answered(publish)  # noqa: E731
        if head[1] == SENT:  # resumed: its 501 may have gone out already
            publish(self._final(head), done)
            return
        head[1] = SENT
        self._save_owed(owed)
        publish(smartrest.operation_executing(head[0]),
                lambda: self._carry_out(head, publish, done))

    def _carry_out(self, head: list, publish: Publish, done: Callable[[], None]) -> None:
        """The platform has the operation EXECUTING: run its action, store, then answer."""
        if head[3] is None:
            head[3] = self._run(head[0], head[2])
            self._save_owed(self._owed())
        publish(self._final(head), done)

    def _run(self, fragment: str, argument: str) -> list:
        try:
            ok, text = self.actions[fragment](argument)
        except Exception as exc:  # noqa: BLE001 - an action's bug fails its operation only
            log.exception("operation %s failed", fragment)
            ok, text = False, f"internal error: {type(exc).__name__}"
        self.note(logging.INFO if ok else logging.WARNING, "operation %s %s: %s", fragment,
                  "done" if ok else "failed", logs.external(str(text), 200))
        return [bool(ok), str(text)]

    @staticmethod
    def _final(head: list) -> str:
        """The 503 or 502 that ends the owed operation `head`."""
        if head[3] is None:
            return smartrest.operation_failed(head[0], INTERRUPTED_ACTION_REASON)
        ok, text = head[3]
        if not ok:
            return smartrest.operation_failed(head[0], text)
        return smartrest.operation_successful(head[0], *([text] if text else []))

    def _answered(self, publish: Publish) -> None:
        self._save_owed(self._owed()[1:])
        self.answering = False
        if self.restart_pending:
            self.restart_pending, self.restart_requested = False, True
            return
        self._answer_next(publish)


def _decode_owed(text: str | None, actions: Mapping[str, Action]) -> list[list]:
    """The owed answers stored under OWED_KEY; what is not readable is dropped (those
    operations stay PENDING and the next 500 delivers them again). An entry of an older
    agent ([fragment, state]) is a refusal."""
    try:
        entries = json.loads(text) if text else []
    except ValueError:
        entries = None
    if not isinstance(entries, list):
        log.error("unreadable list of owed operation answers; starting afresh")
        return []
    fragments = set(OPERATION_FRAGMENTS.values())
    owed = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) in (2, 4) and entry[0] in fragments
                and entry[1] in (NEW, SENT)):
            continue
        if len(entry) == 2:
            entry = [*entry, "", [False, NOT_SUPPORTED_REASON.format(fragment=entry[0])]]
        argument, answer = entry[2], entry[3]
        readable = isinstance(argument, str) and (answer is None or (
            isinstance(answer, list) and len(answer) == 2 and isinstance(answer[0], bool)
            and isinstance(answer[1], str)))
        if readable and (answer is not None or entry[0] in actions):
            owed.append([entry[0], entry[1], argument, answer])
    return owed[:MAX_OWED_ANSWERS]


class _Ignored:
    """The ignored (or refused) lines of one payload: the first of each kind logged, the
    rest counted."""

    def __init__(self, note: Note, what: str = "ignored"):
        self.note, self.what, self.count, self.seen, self.quiet = note, what, 0, set(), 0

    def add(self, kind: str, level: int, message: str, *args) -> None:
        self.count += 1
        if kind in self.seen:
            self.quiet += 1
            return
        self.seen.add(kind)
        self.note(level, message, *args)

    def summarize(self) -> None:
        if self.quiet:
            self.note(logging.WARNING, "%s %d more lines of the same s/ds message",
                      self.what, self.quiet)
