"""Scale mode: several devices in one child process, one loop over them all.

With `supervisor.devices_per_process: N` > 1 the supervisor forks one process per group of
N devices (in config order: `supervisor.groups`) and the process runs `Group.run`. With N = 1
`run_child` hands each process its one device (`device.run_child`), as before.

What the devices of a group share:

- the process: its interpreter and memory, its one loop (a turn does each device's work in
  turn, so a device whose work blocks, e.g. on a slow disk, delays its neighbours'), its
  heartbeat socket to the supervisor, the configuration it was forked with, and its fate:
  when the process dies, is killed or is stuck, every device in it restarts (see below);
- one event queue: each device's uplink puts its transport events on it through the
  device's own `Inbox`, so the loop waits once for all of them;
- the log stream: each line still names its device (`logs.speak_as`).

What each device keeps to itself: its `Device` object with its buffer (its own SQLite file),
model and model state, `Control` (live files, faults, overrides), its Session or Bootstrap
with its own paho client (its own MQTT connection and paho network thread), its
credentials, its restart operation's durable marker, and a heartbeat of its own every
second that carries its name (`Heartbeat.device`) and its lifecycle in the group
(`Heartbeat.member`), so the status page, /api/status and `c8ysim status` stay per device.

A device's lifecycle inside its group follows the pure state machine of `c8ysim.states`
(with the default policy), run by this loop instead of the supervisor:

- `c8y_Restart`: only that device is closed and built again in this process (its buffer is
  reopened, its session reconnects; the durable marker ends the operation with 503), counted
  as that device's restart; the other devices and the process go on.
- its buffer cannot be opened, or building it, its loop work or an event of its uplink
  raises: only that device stops and is retried after a backoff, FATAL after too many
  quick failures (at once for a storage configuration error: what exit code 78 is for a
  process); its neighbours go on. FATAL lasts until the next reload, which restarts the
  group (`Supervisor._apply`).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import signal
import socket
import time

from c8ysim import device as device_child
from c8ysim import exits, logs
from c8ysim.config import Config
from c8ysim.device import BEAT_BUSY_S, MAX_WAIT_S, Device
from c8ysim.heartbeat import Heartbeat, Link
from c8ysim.states import Action, ChildState, Event, Policy, next_state
from c8ysim.storage import StorageConfigError, open_buffer

log = logging.getLogger(__name__)


def run_child(config: Config, name: str | tuple[str, ...], heartbeat: socket.socket | None,
              parent_pid: int) -> int:
    """Entry point in a forked child: a tuple of device names is a group, a name one device."""
    if not isinstance(name, tuple):
        return device_child.run_child(config, name, heartbeat, parent_pid)
    try:
        return Group(config, name, heartbeat, parent_pid).run()
    except Exception:  # noqa: BLE001 - the group's own loop failed: the supervisor restarts it
        log.exception("group loop failed")
        return exits.FAILURE


class Inbox:
    """One device's side of the group's shared queue. What its uplink's paho thread puts
    here arrives at the loop tagged with this inbox; once the device has closed that uplink
    it takes a `fresh()` inbox, and what the old one still has queued is dropped."""

    __slots__ = ("shared", "name")

    def __init__(self, shared: queue.SimpleQueue, name: str):
        self.shared, self.name = shared, name

    def put(self, event) -> None:
        self.shared.put((self, event))

    def fresh(self) -> "Inbox":
        return Inbox(self.shared, self.name)


class Member:
    """One device of the group: its Device while it runs, and its lifecycle."""

    def __init__(self, name: str):
        self.name = name
        self.device: Device | None = None
        self.state = ChildState.EXITED
        self.deaths: tuple = ()
        self.restarts = 0
        self.last_exit: str | None = None
        self.started_at = 0.0
        self.next_start_at = 0.0
        self.next_beat_at = 0.0
        # its next turn: when its Device has timed work, or at once after an event of its own
        # (turning every device at every wake-up of the loop cost twice the CPU of a
        # process per device)
        self.due_at = 0.0

    def lifecycle(self, now: float) -> dict:
        """What its heartbeat tells the supervisor of it (`Heartbeat.member`)."""
        backoff = self.state is ChildState.BACKOFF
        return {"state": self.state.value, "restarts": self.restarts,
                "last_exit": self.last_exit,
                "retry_in_s": round(max(0.0, self.next_start_at - now), 1) if backoff else None}


class Group:
    def __init__(self, config: Config, names: tuple[str, ...],
                 heartbeat: socket.socket | None, parent_pid: int, policy: Policy = Policy()):
        self.config, self.heartbeat, self.parent_pid = config, heartbeat, parent_pid
        self.policy, self.rng = policy, random.Random()
        self.source = logs.current_source() or logs_source(names)  # "group-1", as forked
        self.shared: queue.SimpleQueue = queue.SimpleQueue()  # (Inbox or None: stop, event)
        self.members = {name: Member(name) for name in names}
        self.running = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.shared.put((None, None)))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor too
        for member in self.members.values():
            self._speak(member)
            self._fire(member, Event.START, time.monotonic())
        while self.running:
            for member in self.members.values():
                if time.monotonic() >= member.due_at:
                    self._turn(member, time.monotonic())
            self._wait(self._wake_in(time.monotonic()))
            if os.getppid() != self.parent_pid:
                self._speak(None)
                log.error("the supervisor is gone; exiting")
                self.running = False
        for member in self.members.values():
            self._close(member)
        return exits.OK

    # -- the loop ---------------------------------------------------------------------------

    def _turn(self, member: Member, now: float) -> None:
        self._speak(member)
        if member.state is ChildState.BACKOFF and now >= member.next_start_at:
            self._fire(member, Event.START, now)
        if member.device is None:
            if now >= member.next_beat_at:
                self._beat_idle(member, now)
            return
        try:
            restart = member.device.turn(now)
        except Exception:  # noqa: BLE001 - this device's failure, not its neighbours'
            log.exception("device loop failed")
            self._failed(member, exits.FAILURE, "its loop failed", now)
            return
        if restart:
            self._close(member)
            member.last_exit = "restarted for its c8y_Restart operation"
            self._fire(member, Event.DIED, now, code=exits.RESTART)
        if member.device is not None:
            member.due_at = time.monotonic() + member.device.wake_in(time.monotonic())

    def _wake_in(self, now: float) -> float:
        timeout = MAX_WAIT_S
        for member in self.members.values():
            if member.device is not None:
                timeout = min(timeout, max(0.0, member.due_at - now))
                continue
            due = member.next_beat_at
            if member.state is ChildState.BACKOFF:
                due = min(due, member.next_start_at)
            timeout = min(timeout, max(0.0, due - now))
        return timeout

    def _wait(self, timeout: float) -> None:
        try:
            inbox, event = self.shared.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._dispatch(inbox, event)
            try:
                inbox, event = self.shared.get_nowait()
            except queue.Empty:
                return

    def _dispatch(self, inbox: Inbox | None, event) -> None:
        if inbox is None:
            self._speak(None)
            log.info("stopping")
            self.running = False
            return
        member = self.members.get(inbox.name)
        if member is None or member.device is None or member.device.events is not inbox:
            return  # from an uplink its device has closed
        self._speak(member)
        member.due_at = 0.0  # its turn follows its events, as in a process of its own
        try:
            member.device.dispatch(event)
        except Exception:  # noqa: BLE001
            log.exception("device loop failed")
            self._failed(member, exits.FAILURE, "its loop failed", time.monotonic())

    # -- one device's lifecycle ---------------------------------------------------------------

    def _fire(self, member: Member, event: Event, now: float, code: int = 0) -> None:
        step = next_state(member.state, event, now, member.deaths, code=code,
                          ran_s=now - member.started_at, policy=self.policy, rng=self.rng)
        before, member.state, member.deaths = member.state, step.state, step.history
        if step.state is ChildState.FATAL and before is not ChildState.FATAL:
            log.error("FATAL after %s: %s; the group's other devices go on", member.last_exit,
                      step.reason)
        if step.action is Action.WAIT:
            member.next_start_at, member.restarts = now + step.delay_s, member.restarts + 1
            log.warning("stopped (%s); starting it again in %.1f s; the group's other "
                        "devices go on", member.last_exit, step.delay_s)
        elif step.action is Action.SPAWN:
            if event is Event.DIED:  # its c8y_Restart
                member.restarts += 1
                log.log(logs.NOTICE, "restarts for its restart operation (in its group's "
                        "process, which goes on)")
            self._build(member, now)

    def _build(self, member: Member, now: float) -> None:
        """Open its buffer, build its Device: RUNNING, or a failure like a dying process."""
        member.started_at = now
        try:
            buffer = open_buffer(self.config.storage, member.name)
        except StorageConfigError as exc:  # e.g. psycopg2 missing: retrying cannot help
            log.error("%s", exc)
            return self._failed(member, exits.CONFIG, "storage configuration", now)
        except Exception as exc:  # noqa: BLE001
            log.error("cannot open the buffer: %s", exc)
            return self._failed(member, exits.FAILURE, "cannot open the buffer", now)
        try:
            member.device = Device(
                self.config, self.config.device(member.name), buffer, self.heartbeat,
                self.parent_pid, events=Inbox(self.shared, member.name),
                beat_fields=lambda: {"device": member.name,
                                     "member": member.lifecycle(time.monotonic())})
            member.device.schedule(now)
        except Exception:  # noqa: BLE001
            log.exception("cannot start the device")
            _close_quietly(buffer)
            return self._failed(member, exits.FAILURE, "cannot start", now)
        self._fire(member, Event.BEAT, now)

    def _failed(self, member: Member, code: int, why: str, now: float) -> None:
        self._close(member)
        member.last_exit = f"{why} (exit code {code})"
        self._fire(member, Event.DIED, now, code=code)

    def _close(self, member: Member) -> None:
        if member.device is not None:
            device, member.device = member.device, None
            _close_quietly(device)

    def _beat_idle(self, member: Member, now: float) -> None:
        """The beat of a device that is not running (backoff, FATAL): the group is alive."""
        member.next_beat_at = now + BEAT_BUSY_S
        if self.heartbeat is None:
            return
        beat = Heartbeat(pid=os.getpid(), time=time.time(), connection=Link.STOPPED,
                         device=member.name, member=member.lifecycle(now))
        try:
            self.heartbeat.send(beat.encode())
        except (BlockingIOError, ConnectionRefusedError, BrokenPipeError):
            pass

    def _speak(self, member: Member | None) -> None:
        logs.speak_as(member.name if member else self.source)


def logs_source(names: tuple[str, ...]) -> str:
    """How the group's own lines (not a device's) name it in the journal."""
    return f"group of {', '.join(names)}" if len(names) <= 3 else \
        f"group of {names[0]} .. {names[-1]} ({len(names)} devices)"


def _close_quietly(closable) -> None:
    try:
        closable.close()
    except Exception:  # noqa: BLE001 - closing a failed device must not fail the group
        log.exception("closing failed")
