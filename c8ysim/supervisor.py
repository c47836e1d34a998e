"""The supervisor: one process, one `selectors` loop, no threads, no DB, no MQTT.

Each loop turn it dispatches signals (TERM/INT stop, HUP reload, CHLD reap), reads the
children's heartbeat datagrams, serves the status page, reaps exited children, kills children
whose heartbeat went stale (TERM, then KILL), starts children whose backoff is due, and pets
systemd. It forks one child per device; what a child runs comes in as `run_child`, so this
module imports nothing that opens a connection (fork safety by construction). What happens to
a child on each event is decided by the pure state machine in `c8ysim.states`; this module
only carries the decisions out.

Scale mode (`supervisor.devices_per_process: N` > 1): a child is a group of N devices in
config order (`groups`), one process and one loop for them all (`c8ysim.group` says what
they share). The state machine then runs per process, and the group runs it per device
inside (a device's c8y_Restart, or its failure, stays in the group). Per device here: its
heartbeats (each carries its name), its view on the status page, its history and restarts,
and its watchdog: a device whose beats stop while its group process lives means the
group's loop is stuck, so the group (all its devices) is terminated and restarted, and the
journal says so. On reload a group restarts as a whole when one of its devices changed, is
FATAL, or when its list of devices changed (a device added or removed before or in it
regroups the devices after it); a new group is forked only once no process still running
holds one of its devices, so a device never runs twice.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import random
import selectors
import signal
import socket
import time
from collections import deque
from typing import Callable

from c8ysim import __version__, heartbeat, logs, processes, site, wallclock
from c8ysim.config import Config, ConfigError
from c8ysim.heartbeat import Heartbeat
from c8ysim.kinds import KINDS
from c8ysim.notify import Notifier
from c8ysim.states import IDLE, Action, ChildState, Death, Event, Policy, next_state
from c8ysim.status.server import StatusServer

LOOP_TIMEOUT_S = 1.0  # longest select() wait: the loop turns at least this often (signals,
# beats, requests and due restarts wake it sooner)
START_STAGGER_S = 0.1  # due restarts are forked at most one per this interval
STATUS_EVERY_S = 2.0  # STATUS= to systemd at most this often (and only on change)
HEALTHY_LOOP_LAG_S = 5 * LOOP_TIMEOUT_S  # /healthz fails when the loop lags this much
MAX_DATAGRAM_BYTES = 65536
HISTORY_SPAN_S = 3600.0  # recent readings kept per device for the status page
HISTORY_MIN_STEP_S = 5.0  # at most one kept reading per this many seconds
HISTORY_MAX_ENTRIES = int(HISTORY_SPAN_S / HISTORY_MIN_STEP_S)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
RESPAWN, REMOVE = "respawn", "remove"  # what follows a requested stop
REBIND_EVERY_S = 5.0  # a lost status socket is bound again at most this often

log = logging.getLogger(__name__)


class Member:
    """What the supervisor knows about one device of a group (scale mode)."""

    def __init__(self, name: str):
        self.name = name
        self.beat: Heartbeat | None = None  # the last one since its group's process started
        self.last_beat_at = 0.0
        self.restarts = 0  # its group's restarts, and its own within its group
        self.seen_restarts = 0  # its own restarts as its group's process last counted them
        self.history: deque = deque(maxlen=HISTORY_MAX_ENTRIES)
        self.history_keys: tuple = ()

    def remember(self, reading: dict | None) -> None:
        Child.remember(self, reading)  # the same bookkeeping: the same fields

    def recent_readings(self) -> list[dict]:
        return Child.recent_readings(self)


class Child:
    """What the supervisor knows about one child process: a device, or a group of them."""

    def __init__(self, name: str, state: ChildState = ChildState.EXITED, *,
                 pid: int | None = None, next_start_at: float = 0.0, restarts: int = 0,
                 last_exit: str | None = None, beat: Heartbeat | None = None):
        self.name, self.state, self.pid = name, state, pid
        self.sock: socket.socket | None = None
        self.started_at = 0.0
        self.last_beat_at = 0.0
        self.term_sent_at: float | None = None
        self.kill_sent = False
        self.next_start_at = next_start_at
        self.plan: str | None = None  # after a requested stop: RESPAWN or REMOVE
        self.deaths: tuple[Death, ...] = ()
        self.restarts = restarts
        self.last_exit = last_exit
        self.beat = beat  # the last one since the process started
        # (keys, values) pairs, oldest first. The keys tuple is shared by every entry with
        # the same series: a dict per entry, as the heartbeat decodes it, took ~1.3 kB; this
        # ~0.4 kB.
        self.history: deque = deque(maxlen=HISTORY_MAX_ENTRIES)
        self.history_keys: tuple = ()
        self.members: tuple[str, ...] = ()  # a group's devices (scale mode); () is `name`
        self.units: dict[str, Member] = {}  # a group's {device name: Member}
        self.forked_members: tuple[str, ...] = ()  # the devices its running process was given
        self.waiting = False  # to be forked once no other process holds one of its devices

    def remember(self, reading: dict | None) -> None:
        """Keep `reading` in the bounded history if it is new enough to be worth a point."""
        if not reading or "time" not in reading:
            return
        last_time = self.history[-1][1][0] if self.history else None  # values open with it
        if last_time is not None and reading["time"] - last_time < HISTORY_MIN_STEP_S:
            if reading["time"] >= last_time:
                return
            self.history.clear()  # the wall clock went back: start the history afresh
        keys = ("time", *(k for k in reading if k != "time"))
        if keys != self.history_keys:
            self.history_keys = keys
        self.history.append((self.history_keys, tuple(reading[k] for k in keys)))

    def recent_readings(self) -> list[dict]:
        """The history as reading dicts, oldest first."""
        return [dict(zip(keys, values)) for keys, values in self.history]


class Supervisor:
    def __init__(self, config: Config, run_child: Callable, build_app: Callable,
                 load_config: Callable[[str], Config], notifier: Notifier,
                 policy: Policy = Policy()):
        self.config = _anchored(config, time.time())
        self.run_child, self.build_app = run_child, build_app
        self.load_config, self.notifier, self.policy = load_config, notifier, policy
        self.selector = selectors.DefaultSelector()
        self.children: dict[str, Child] = {}
        self.pid = os.getpid()
        self.started, self.started_monotonic = time.time(), time.monotonic()
        self.clock = wallclock.StepWatch()
        self.stopping_since: float | None = None
        self.last_turn = time.monotonic()
        self.rng = random.Random()
        self.server: StatusServer | None = None
        self._last_status = ""
        self._next_status_at = 0.0
        self._watchdog_s = processes.watchdog_interval_s()
        self._next_pet_at = 0.0
        self._next_stagger_at = 0.0
        self._next_rebind_at = 0.0

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Start every device, tell systemd we are ready, loop until stopped; exit code."""
        self._install_signals()
        self.server = self._bind_status(self.config)
        for name, members in groups(self.config).items():
            self._add(name, members)
        self.notifier.notify("READY=1")
        log.log(logs.NOTICE, "started %d devices%s; status page on http://%s:%d/",
                self._device_count(), self._in_groups(), self.server.host, self.server.port)
        while self.children or self.stopping_since is None:
            self._turn()
        self._close_server()
        log.log(logs.NOTICE, "stopped in %.1f s", time.monotonic() - self.stopping_since)
        return 0

    def _turn(self) -> None:
        for key, _mask in self.selector.select(self._select_timeout(time.monotonic())):
            key.data()
        now = time.monotonic()
        self.last_turn = now
        self._reap()
        self._check_children(now)
        self._start_due(now)
        if step_s := self.clock.check():
            log.warning("%s", wallclock.describe(step_s))
        if self.server:
            self.server.expire(now)
        else:
            self._keep_status_up(now)
        self._pet(now)

    def _select_timeout(self, now: float) -> float:
        deadlines = [max(c.next_start_at, self._next_stagger_at)  # not a spin while staggered
                     for c in self.children.values() if c.state is ChildState.BACKOFF]
        if self._watchdog_s:
            deadlines.append(self._next_pet_at)
        return max(0.0, min([now + LOOP_TIMEOUT_S, *deadlines]) - now)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _record_only)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_signals)

    def _on_signals(self) -> None:
        try:
            received = self._wake_r.recv(256)
        except (BlockingIOError, InterruptedError):
            return
        dispatch = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop,
                    signal.SIGHUP: self.reload, signal.SIGCHLD: self._reap}
        for signum in received:
            dispatch.get(signum, _ignore)()

    # -- the state machine ----------------------------------------------------------------

    def _fire(self, child: Child, event: Event, code: int = 0, ran_s: float = 0.0) -> None:
        """Feed `event` to the child's state machine and carry out what it decides."""
        now = time.monotonic()
        step = next_state(child.state, event, now, child.deaths, code=code, ran_s=ran_s,
                          policy=self.policy, rng=self.rng)
        before, child.state, child.deaths = child.state, step.state, step.history
        if step.state is ChildState.FATAL and before is not ChildState.FATAL:
            log.error("%s is FATAL after %s: %s", child.name, child.last_exit, step.reason)
        if step.action is Action.SPAWN:
            if event is Event.DIED:  # its c8y_Restart: counted, but not a death (no FATAL)
                child.restarts += 1
                log.log(logs.NOTICE, "%s restarts for its restart operation", child.name)
            self._spawn(child)
        elif step.action is Action.TERM:
            self._send_term(child, now)
        elif step.action is Action.KILL:
            self._send_kill(child)
        elif step.action is Action.WAIT:
            child.next_start_at, child.restarts = now + step.delay_s, child.restarts + 1
            for unit in child.units.values():
                unit.restarts += 1
            log.warning("%s exited (%s); restarting in %.1f s", child.name, child.last_exit,
                        step.delay_s)

    def _add(self, name: str, members: tuple[str, ...] = ()) -> None:
        self.children[name] = Child(name)
        self._regroup(self.children[name], members)
        self._fire(self.children[name], Event.START)

    def _regroup(self, child: Child, members: tuple[str, ...]) -> None:
        """Give a group its devices (kept: the history and restarts of those it had)."""
        child.members = members
        child.units = {name: child.units.get(name) or Member(name) for name in members}

    def _retire(self, child: Child, plan: str) -> None:
        """Stop `child`, then respawn it (changed config) or forget it (removed, shutdown)."""
        child.plan = plan
        if child.waiting:  # never forked: nothing to stop
            child.waiting = False
            self._fire(child, Event.STOP)
            self._fire(child, Event.STOPPED)
            self._after_stop(child)
            return
        self._fire(child, Event.STOP)
        if child.state is ChildState.EXITED:  # it had no process to stop
            self._after_stop(child)

    def _after_stop(self, child: Child) -> None:
        plan, child.plan = child.plan, None
        if plan == RESPAWN and self.stopping_since is None:
            self._fire(child, Event.START)
        else:
            del self.children[child.name]

    # -- processes --------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        if self._held_elsewhere(child):
            child.waiting = True  # STARTING without a process until `_start_due` forks it
            return
        child.waiting = False
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        parent_end.setblocking(False)
        child_end.setblocking(False)
        pid = self._fork(child, parent_end, child_end)
        child_end.close()
        if pid is None:
            parent_end.close()
            child.last_exit = "fork failed"
            self._fire(child, Event.DIED, code=1)
            return
        now = time.monotonic()
        child.pid, child.sock, child.started_at, child.last_beat_at = pid, parent_end, now, now
        child.term_sent_at, child.kill_sent, child.beat = None, False, None
        child.forked_members = child.members
        for unit in child.units.values():
            unit.beat, unit.last_beat_at, unit.seen_restarts = None, now, 0
        self.selector.register(parent_end, selectors.EVENT_READ, lambda: self._read_beats(child))
        log.log(logs.NOTICE, "started %s (pid %d)", child.name, pid)

    def _held_elsewhere(self, child: Child) -> bool:
        """Whether another process still runs one of the devices of `child` (after a
        reload regrouped them: the old process may still be stopping)."""
        mine = set(child.members or (child.name,))
        return any(other.pid is not None and mine & set(other.forked_members
                                                                      or (other.name,))
                                  for other in self.children.values() if other is not child)

    def _fork(self, child: Child, parent_end: socket.socket,
              child_end: socket.socket) -> int | None:
        """fork(); the child runs `run_child` and never returns here. None: fork failed."""
        gc.collect()
        # Frozen objects are never touched by the cyclic GC, in the children nor here: the
        # pages they sit on stay shared. They stay frozen in the supervisor too (unfreezing
        # would let its next collection write to every one of those shared pages).
        gc.freeze()
        # Blocked across fork(): a signal landing in the child before it resets its handlers
        # would otherwise be written to the wake-up socket it shares with us.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:  # out of memory or of processes: a death like any other
            log.error("cannot fork %s: %s", child.name, exc)
            pid = None
        if pid == 0:
            parent_end.close()
            self._become_child(child, child_end, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid

    def _become_child(self, child: Child, heartbeat: socket.socket, mask) -> None:
        """Runs in the forked child and never returns."""
        code, name = 1, child.name
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for signum in (signal.SIGHUP, signal.SIGINT):  # the supervisor handles these
                signal.signal(signum, signal.SIG_IGN)
            processes.die_with_parent(self.pid)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._close_inherited()
            logs.setup(self.config.log_level, name)
            processes.set_process_name(f"c8ysim:{name}")
            code = self.run_child(self.config, child.members or name, heartbeat, self.pid)
        except BaseException:  # noqa: BLE001 - nothing may escape a forked child
            logging.getLogger(__name__).exception("child %s failed", name)
        finally:
            logging.shutdown()
            os._exit(code)

    def _close_inherited(self) -> None:
        for child in self.children.values():
            if child.sock:
                child.sock.close()
        if self.server:
            self.server.sock.close()
            for client in self.server.clients.values():
                client.sock.close()
        self._wake_r.close()
        self._wake_w.close()
        self.selector.close()
        self.notifier.close()

    def _read_beats(self, child: Child) -> None:
        while child.sock:
            try:
                data = child.sock.recv(MAX_DATAGRAM_BYTES)
            except OSError:  # BlockingIOError: drained
                return
            try:
                beat = Heartbeat.decode(data)
            except ValueError:
                log.warning("unreadable heartbeat from %s", child.name)
                continue
            child.last_beat_at = time.monotonic()
            if child.members:
                if not self._file_beat(child, beat):
                    continue
            else:
                child.beat = beat
                child.remember(beat.last_reading)
            if child.state is ChildState.STARTING:
                log.info("%s running (pid %s)", child.name, child.pid)
            self._fire(child, Event.BEAT)

    def _file_beat(self, child: Child, beat: Heartbeat) -> bool:
        """File a group's beat under its device; False when it names none of the group's."""
        unit = child.units.get(beat.device) if beat.device in child.forked_members else None
        if unit is None:
            return False
        unit.beat, unit.last_beat_at = beat, child.last_beat_at
        unit.remember(beat.last_reading)
        own = (beat.member or {}).get("restarts")
        if isinstance(own, int) and own > unit.seen_restarts:  # in its group: c8y_Restart, ...
            unit.restarts += own - unit.seen_restarts
            unit.seen_restarts = own
        return True

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self.children.values() if c.pid == pid), None)
            if child:
                self._exited(child, os.waitstatus_to_exitcode(status))

    def _exited(self, child: Child, code: int) -> None:
        if child.sock:
            self.selector.unregister(child.sock)
            child.sock.close()
        ran_s = time.monotonic() - child.started_at
        child.pid, child.sock = None, None
        child.last_exit = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        if child.plan is None:
            self._fire(child, Event.DIED, code=code, ran_s=ran_s)
            return
        log.log(logs.NOTICE, "%s stopped (%s)", child.name, child.last_exit)
        self._fire(child, Event.STOPPED)
        self._after_stop(child)

    def _start_due(self, now: float) -> None:
        if self.stopping_since is not None:
            return
        for child in list(self.children.values()):
            if now < self._next_stagger_at:
                return
            if child.state is ChildState.BACKOFF and now >= child.next_start_at:
                self._next_stagger_at = now + START_STAGGER_S
                self._fire(child, Event.START)
            elif child.waiting and not self._held_elsewhere(child):
                self._next_stagger_at = now + START_STAGGER_S
                self._spawn(child)

    def _check_children(self, now: float) -> None:
        """KILL children whose grace is over; TERM children whose heartbeat went stale."""
        timeouts = self.config.supervisor
        for child in list(self.children.values()):
            if child.state is ChildState.STOPPING and child.term_sent_at is not None:
                grace = timeouts.stop_timeout_s if child.plan else timeouts.kill_grace_s
                if not child.kill_sent and now - child.term_sent_at > grace:
                    log.error("%s did not stop within %.1f s; killing it", child.name, grace)
                    self._fire(child, Event.GRACE_OVER)
            elif child.pid and child.members:
                self._check_group(child, now, timeouts.heartbeat_timeout_s)
            elif child.pid and now - child.last_beat_at > timeouts.heartbeat_timeout_s:
                log.error("%s sent no heartbeat for %.1f s; terminating it", child.name,
                          now - child.last_beat_at)
                self._fire(child, Event.STALE)

    def _check_group(self, child: Child, now: float, timeout_s: float) -> None:
        """A device of a live group that stopped beating: the group's loop is stuck."""
        silent = [u for u in child.units.values() if now - u.last_beat_at > timeout_s]
        if not silent:
            return
        log.error("%s sent no heartbeat for %.1f s while its group's process %s (pid %d) "
                  "lives: the group is stuck; terminating it, with its devices %s",
                  silent[0].name, now - silent[0].last_beat_at, child.name, child.pid,
                  ", ".join(child.members))
        self._fire(child, Event.STALE)

    def _send_term(self, child: Child, now: float) -> None:
        if child.pid is not None and child.term_sent_at is None:
            child.term_sent_at = now
            processes.kill(child.pid, signal.SIGTERM)

    def _send_kill(self, child: Child) -> None:
        if child.pid is not None:
            child.kill_sent = True
            processes.kill(child.pid, signal.SIGKILL)

    # -- stop and reload ------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM/SIGINT: TERM every child, KILL what is left after stop_timeout_s, exit 0."""
        if self.stopping_since is not None:
            return
        log.log(logs.NOTICE, "stopping %d devices", self._device_count())
        self.notifier.notify("STOPPING=1")
        self.stopping_since = time.monotonic()
        for child in list(self.children.values()):
            self._retire(child, REMOVE)

    def reload(self) -> None:
        """SIGHUP: re-read the YAML; if valid, apply it by difference, else keep running."""
        if self.stopping_since is not None:
            return
        self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = self.load_config(self.config.path)
        except ConfigError as exc:
            for line in str(exc).splitlines():
                log.error("reload refused, keeping the running configuration: %s", line)
        else:
            self._apply(new)
        self.notifier.notify("READY=1")
        self._next_status_at = 0.0  # say how things stand right away

    def _apply(self, new: Config) -> None:
        """All or nothing: the new status socket is bound before anything else changes; if
        it cannot be, the running configuration, socket and children stay as they are."""
        if new.status != self.config.status and not self._switch_status(new):
            return
        old, self.config = self.config, _anchored(new, time.time(), self.config)
        new = self.config
        logs.setup(new.log_level, "supervisor")
        removed, changed, added = diff(old, new)
        wanted = groups(new)
        for name, child in list(self.children.items()):
            members = wanted.get(name)
            if members is None:
                self._retire(child, REMOVE)
            elif (members != child.members or set(changed) & set(members or (name,))
                  or self._has_fatal_unit(child)):
                self._regroup(child, members)
                self._retire(child, RESPAWN)
            elif child.plan == REMOVE:  # removed by an earlier reload, not yet gone
                child.plan = RESPAWN
        for child in list(self.children.values()):
            if child.state in IDLE:
                log.info("%s: retrying after the reload", child.name)
            self._fire(child, Event.RELOAD)
        for name, members in wanted.items():
            if name not in self.children:
                self._add(name, members)
        log.log(logs.NOTICE, "reloaded %s: %d devices (%d added, %d removed, %d changed)", new.path,
                 len(new.devices), len(added), len(removed), len(changed))

    # -- status -------------------------------------------------------------------------------

    def _status_app(self, config: Config):
        return self.build_app(self.status, self.healthy, self.history,
                              auth=config.status.auth)

    def _bind_status(self, config: Config) -> StatusServer:
        return StatusServer(self._status_app(config), config.status.host, config.status.port,
                            self.selector)

    def _switch_status(self, new: Config) -> bool:
        """Serve the status page as `new` says; False (and a log line saying so) when the new
        address cannot be bound, with the running socket kept."""
        old = self.config.status
        if self.server and (new.status.host, new.status.port) == (old.host, old.port):
            self.server.app = self._status_app(new)  # only the password changed
            return True
        try:
            server = self._bind_status(new)
        except OSError as exc:
            if not self._shares_port(new, exc):
                self._refuse_status(new, exc)
                return False
            server = self._rebind_in_place(new)  # the running socket is what is in the way
            if server is None:
                return False
        self._close_server()
        self.server = server
        log.log(logs.NOTICE, "status page now on http://%s:%d/", server.host, server.port)
        return True

    def _shares_port(self, new: Config, exc: OSError) -> bool:
        """Whether our own socket may be what makes binding `new` fail (0.0.0.0:8080 is in
        the way of 127.0.0.1:8080)."""
        return (exc.errno == errno.EADDRINUSE and self.server is not None
                and new.status.port == self.server.port)

    def _rebind_in_place(self, new: Config) -> StatusServer | None:
        """Close the running socket, bind the new one; on failure bind the old one again."""
        old = self.config
        self._close_server()
        try:
            return self._bind_status(new)
        except OSError as exc:
            failure = exc
        try:
            self.server = self._bind_status(old)
        except OSError as exc:
            log.error("the status page is down: cannot listen on %s:%d again (%s); retrying "
                      "every %.0f s", old.status.host, old.status.port, exc, REBIND_EVERY_S)
        self._refuse_status(new, failure)
        return None

    def _refuse_status(self, new: Config, exc: OSError) -> None:
        where = (f"on http://{self.server.host}:{self.server.port}/" if self.server
                 else "down")
        log.error("reload refused, keeping the running configuration: cannot listen on "
                  "%s:%d (%s); the status page stays %s", new.status.host, new.status.port,
                  exc.strerror or exc, where)

    def _keep_status_up(self, now: float) -> None:
        """After a failed in-place rebind: try the running address again now and then."""
        if self.server or self.stopping_since is not None or now < self._next_rebind_at:
            return
        self._next_rebind_at = now + REBIND_EVERY_S
        try:
            self.server = self._bind_status(self.config)
        except OSError:
            return
        log.log(logs.NOTICE, "status page back on http://%s:%d/", self.server.host,
                self.server.port)

    def _close_server(self) -> None:
        if self.server:
            self.server.close()
            self.server = None

    def history(self, name: str) -> list[dict] | None:
        """Recent readings of device `name`, oldest first (None: no such device)."""
        child = self.children.get(name)
        if child is not None and not child.members:
            return child.recent_readings()
        unit = next((c.units[name] for c in self.children.values() if name in c.units), None)
        return None if unit is None else unit.recent_readings()

    def healthy(self) -> bool:
        return time.monotonic() - self.last_turn < HEALTHY_LOOP_LAG_S

    def status(self) -> dict:
        c8y = self.config.cumulocity
        return {
            "agent": {"version": __version__, "pid": self.pid, "started": self.started,
                      "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
                      "config": self.config.path,
                      "uplink": f"{c8y.host}:{c8y.port}" if c8y else "not configured"},
            "devices": self._views(),
        }

    def _views(self) -> list[dict]:
        """One view per device, in config order (a group's devices in its place)."""
        return [view for child in self.children.values()
                for view in ([self._member_status(child, name) for name in child.members]
                             if child.members else [self._device_status(child)])]

    def _device_status(self, child: Child) -> dict:
        device = next((d for d in self.config.devices if d.name == child.name), None)
        view = {**(heartbeat.viewed(child.beat) if child.beat else heartbeat.UNKNOWN),
                "name": child.name, "type": device.type if device else None,
                "external_id": device.external_id if device else None,
                "state": child.state.value, "pid": child.pid, "restarts": child.restarts,
                "last_exit": child.last_exit}
        if child.state is ChildState.BACKOFF:
            view["retry_in_s"] = round(max(0.0, child.next_start_at - time.monotonic()), 1)
        if child.pid is None:
            view["connected"] = False
        return view

    def _member_status(self, child: Child, name: str) -> dict:
        """A group's device: its own beat; its state is its group's, or, while the group
        runs, its own in the group (starting until its first beat, backoff, fatal)."""
        unit = child.units[name]
        device = next((d for d in self.config.devices if d.name == name), None)
        life = (unit.beat.member if unit.beat else None) or {}
        state = child.state.value
        if child.state is ChildState.RUNNING:
            state = life.get("state") or ChildState.STARTING.value
        view = {**(heartbeat.viewed(unit.beat) if unit.beat else heartbeat.UNKNOWN),
                "name": name, "type": device.type if device else None,
                "external_id": device.external_id if device else None,
                "state": state, "pid": child.pid, "restarts": unit.restarts,
                "last_exit": life.get("last_exit") or child.last_exit}
        if child.state is ChildState.BACKOFF:
            view["retry_in_s"] = round(max(0.0, child.next_start_at - time.monotonic()), 1)
        elif life.get("retry_in_s") is not None:
            view["retry_in_s"] = life["retry_in_s"]
        if child.pid is None or state != ChildState.RUNNING.value:
            view["connected"] = False
        return view

    def _has_fatal_unit(self, child: Child) -> bool:
        return any((u.beat.member or {}).get("state") == ChildState.FATAL.value
                   for u in child.units.values() if u.beat)

    def _device_count(self) -> int:
        return sum(len(c.members) or 1 for c in self.children.values())

    def _in_groups(self) -> str:
        count = sum(1 for c in self.children.values() if c.members)
        return f" in {count} processes" if count else ""

    # -- systemd --------------------------------------------------------------------------

    def _pet(self, now: float) -> None:
        """WATCHDOG=1 at half the watchdog interval; STATUS= when it changed."""
        if self._watchdog_s and now >= self._next_pet_at:
            self.notifier.notify("WATCHDOG=1")
            self._next_pet_at = now + self._watchdog_s / 2
        if now >= self._next_status_at:
            self._next_status_at = now + STATUS_EVERY_S
            line = self._status_line()
            if line != self._last_status:
                self.notifier.notify(f"STATUS={line}")
                self._last_status = line

    def _status_line(self) -> str:
        if self.stopping_since is not None:
            return f"stopping, {self._device_count()} devices left"
        views = self._views()
        online = sum(1 for v in views if v["connected"])
        queued = sum(v["queued"] or 0 for v in views if v["pid"] is not None)
        fatal = sum(1 for v in views if v["state"] == ChildState.FATAL.value)
        line = f"{online}/{len(views)} devices online, {queued} queued"
        return line + (f", {fatal} fatal" if fatal else "")


def diff(old: Config, new: Config) -> tuple[list[str], list[str], list[str]]:
    """Device names (removed, changed, added) from `old` to `new`, compared by value.

    A device changed when its own settings did, when what every child shares did (site,
    uplink, storage, log level), or, for a household-wide device, when the household's other
    devices did. The status listener and the supervisor's own timeouts change no child.
    """
    old_devices = {d.name: d for d in old.devices}
    new_devices = {d.name: d for d in new.devices}
    shared = _shared_settings(old) != _shared_settings(new)
    household = old.site.devices != new.site.devices

    def changed(name: str) -> bool:
        return (shared or old_devices[name] != new_devices[name]
                or (household and KINDS[new_devices[name].type].site_wide))

    removed = [n for n in old_devices if n not in new_devices]
    changed_names = [n for n in old_devices if n in new_devices and changed(n)]
    added = [n for n in new_devices if n not in old_devices]
    return removed, changed_names, added


def groups(config: Config) -> dict[str, tuple[str, ...]]:
    """{child name: its devices}: with `devices_per_process` 1 a child per device, named
    after it, with () (the device is the name); else groups of N devices in config order,
    "group-1", "group-2", ... (the last one may be smaller)."""
    size = config.supervisor.devices_per_process
    names = [d.name for d in config.devices]
    if size <= 1:
        return dict.fromkeys(names, ())
    return {f"group-{i // size + 1}": tuple(names[i:i + size])
            for i in range(0, len(names), size)}


def _shared_settings(config: Config) -> tuple:
    """What every child reads besides its own device entry (the site without its devices)."""
    return (config.site._replace(devices=()), config.cumulocity, config.storage,
            config.log_level)


def _anchored(config: Config, now: float, running: Config | None = None) -> Config:
    """`config` with its `after:` scenarios timed from now, or, kept across a reload, from
    when the running configuration first had them (every child shares these starts)."""
    scenarios = site.anchor(config.site.scenarios, now,
                            running.site.scenarios if running else ())
    return config._replace(site=config.site._replace(scenarios=scenarios))


def _record_only(signum, frame) -> None:
    """Signal handler: the wake-up fd already carries the signal number to the loop."""


def _ignore() -> None:
    pass
