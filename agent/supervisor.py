"""The supervisor: one process, one `selectors` loop, no threads, no DB, no MQTT.

Each loop turn it dispatches signals (TERM/INT stop, HUP reload, CHLD reap), reads the
children's heartbeat datagrams, serves the status page, reaps exited children, kills children
whose heartbeat went stale (TERM, then KILL), starts children whose backoff is due, and pets
systemd. It forks one child per device; what a child runs comes in as `run_child`, so this
module imports nothing that opens a connection (fork safety by construction).
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import random
import selectors
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from agent import __version__, logs
from agent.config import EX_CONFIG, Config, ConfigError
from agent.notify import Notifier
from agent.status_server import StatusServer

LOOP_TIMEOUT_S = 0.5
RESTART_BASE_S = 1.0
RESTART_CAP_S = 60.0
STABLE_RUN_S = 60.0  # a child that ran this long starts its backoff afresh
STATUS_EVERY_S = 2.0
MAX_DATAGRAM_BYTES = 65536
HISTORY_SPAN_S = 3600.0  # recent readings kept per device for the status page
HISTORY_MIN_STEP_S = 5.0  # at most one kept reading per this many seconds
HISTORY_MAX_ENTRIES = int(HISTORY_SPAN_S / HISTORY_MIN_STEP_S)
PR_SET_NAME = 15

log = logging.getLogger(__name__)


@dataclass
class Child:
    """What the supervisor knows about one device's process."""

    name: str
    pid: int | None = None
    sock: socket.socket | None = None
    state: str = "backoff"  # starting, running, backoff, stopping, fatal
    started_at: float = 0.0
    last_beat_at: float = 0.0
    term_sent_at: float | None = None
    next_start_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    last_exit: str | None = None
    then: str | None = None  # after this process exits: "respawn" or "remove"
    beat: dict = field(default_factory=dict)
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_MAX_ENTRIES))

    def remember(self, reading: dict | None) -> None:
        """Keep `reading` in the bounded history if it is new enough to be worth a point."""
        if not reading or "time" not in reading:
            return
        if self.history and reading["time"] - self.history[-1]["time"] < HISTORY_MIN_STEP_S:
            if reading["time"] >= self.history[-1]["time"]:
                return
            self.history.clear()  # the wall clock went back: start the history afresh
        self.history.append(reading)


class Supervisor:
    def __init__(self, config: Config, run_child: Callable, build_app: Callable,
                 load_config: Callable[[str], Config], notifier: Notifier):
        self.config, self.run_child, self.build_app = config, run_child, build_app
        self.load_config, self.notifier = load_config, notifier
        self.selector = selectors.DefaultSelector()
        self.children: dict[str, Child] = {}
        self.pid = os.getpid()
        self.started = time.time()
        self.stopping_since: float | None = None
        self.last_turn = time.monotonic()
        self.rng = random.Random()
        self.server: StatusServer | None = None
        self._last_status = ""
        self._next_status_at = 0.0
        self._watchdog_s = _watchdog_interval_s()
        self._next_pet_at = 0.0

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self.server = self._bind_status()
        for device in self.config.devices:
            self.children[device.name] = Child(device.name)
            self._spawn(self.children[device.name])
        self.notifier.notify("READY=1")
        log.info("started %d devices; status page on http://%s:%d/", len(self.children),
                 self.server.host, self.server.port)
        while self.children or self.stopping_since is None:
            self._turn()
        self.server.close()
        log.info("stopped")
        return 0

    def _turn(self) -> None:
        for key, _mask in self.selector.select(LOOP_TIMEOUT_S):
            key.data()
        now = time.monotonic()
        self.last_turn = now
        self._reap()
        self._check_heartbeats(now)
        self._start_due(now)
        self.server.expire(now)
        self._pet(now)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, _record_only)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_signals)

    def _on_signals(self) -> None:
        try:
            received = self._wake_r.recv(256)
        except BlockingIOError:
            return
        for signum in received:
            {signal.SIGTERM: self.stop, signal.SIGINT: self.stop,
             signal.SIGHUP: self.reload, signal.SIGCHLD: self._reap}.get(signum, _ignore)()

    # -- children -------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        parent_end.setblocking(False)
        child_end.setblocking(False)
        gc.collect()
        gc.freeze()  # keep the shared pages shared: a child's GC won't touch frozen objects
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            self._become_child(child.name, child_end)
        gc.unfreeze()
        child_end.close()
        now = time.monotonic()
        child.pid, child.sock, child.state = pid, parent_end, "starting"
        child.started_at = child.last_beat_at = now
        child.term_sent_at, child.beat = None, {}
        self.selector.register(parent_end, selectors.EVENT_READ, lambda: self._read_beats(child))
        log.info("started %s (pid %d)", child.name, pid)

    def _become_child(self, name: str, heartbeat: socket.socket) -> None:
        """Runs in the forked child and never returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            self._close_inherited()
            logs.setup(self.config.log_level, name)
            _set_process_name(f"c8ysim:{name}")
            code = self.run_child(self.config, name, heartbeat, self.pid)
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

    def _read_beats(self, child: Child) -> None:
        while child.sock:
            try:
                data = child.sock.recv(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                child.beat = json.loads(data)
            except ValueError:
                log.warning("unreadable heartbeat from %s", child.name)
                continue
            child.last_beat_at = time.monotonic()
            child.remember(child.beat.get("last_reading"))
            if child.state == "starting":
                child.state = "running"

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
        now = time.monotonic()
        if child.sock:
            self.selector.unregister(child.sock)
            child.sock.close()
        child.pid, child.sock = None, None
        child.last_exit = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        then, child.then = child.then, None
        if self.stopping_since is not None or then == "remove":
            log.info("%s stopped (%s)", child.name, child.last_exit)
            del self.children[child.name]
        elif then == "respawn":
            self._spawn(child)
        elif code == EX_CONFIG:
            child.state = "fatal"
            log.error("%s exited with code 78 (configuration); not restarting until reload",
                      child.name)
        else:
            self._schedule_restart(child, now)

    def _schedule_restart(self, child: Child, now: float) -> None:
        if now - child.started_at >= STABLE_RUN_S:
            child.failures = 0
        child.failures += 1
        ceiling = min(RESTART_CAP_S, RESTART_BASE_S * 2 ** (child.failures - 1))
        delay = self.rng.uniform(ceiling / 2, ceiling)
        child.state, child.next_start_at = "backoff", now + delay
        child.restarts += 1
        log.warning("%s exited (%s); restarting in %.1f s", child.name, child.last_exit, delay)

    def _start_due(self, now: float) -> None:
        if self.stopping_since is not None:
            return
        for child in list(self.children.values()):
            if child.state == "backoff" and child.pid is None and now >= child.next_start_at:
                self._spawn(child)

    def _check_heartbeats(self, now: float) -> None:
        for child in self.children.values():
            if child.pid is None:
                continue
            if child.term_sent_at is not None:
                timeouts = self.config.supervisor
                grace = (timeouts.stop_timeout_s if self.stopping_since is not None
                         else timeouts.kill_grace_s)
                if now - child.term_sent_at > grace:
                    log.error("%s did not stop within %.0f s; killing it", child.name, grace)
                    _kill(child.pid, signal.SIGKILL)
            elif now - child.last_beat_at > self.config.supervisor.heartbeat_timeout_s:
                log.error("%s sent no heartbeat for %.0f s; terminating it", child.name,
                          now - child.last_beat_at)
                self._terminate(child)

    def _terminate(self, child: Child) -> None:
        if child.pid is not None and child.term_sent_at is None:
            child.term_sent_at = time.monotonic()
            child.state = "stopping"
            _kill(child.pid, signal.SIGTERM)

    # -- stop and reload ------------------------------------------------------------------------

    def stop(self) -> None:
        if self.stopping_since is not None:
            return
        log.info("stopping %d devices", len(self.children))
        self.notifier.notify("STOPPING=1")
        self.stopping_since = time.monotonic()
        for child in list(self.children.values()):
            if child.pid is None:
                del self.children[child.name]
            else:
                self._terminate(child)

    def reload(self) -> None:
        if self.stopping_since is not None:
            return
        self.notifier.notify("RELOADING=1")
        try:
            new = self.load_config(self.config.path)
        except ConfigError as exc:
            for line in str(exc).splitlines():
                log.error("reload refused, keeping the running configuration: %s", line)
            self.notifier.notify("READY=1")
            return
        self._apply(new)
        self.notifier.notify("READY=1")

    def _apply(self, new: Config) -> None:
        old, self.config = self.config, new
        shared_changed = (old.site != new.site or old.cumulocity != new.cumulocity or
                          old.storage != new.storage or old.log_level != new.log_level)
        if old.status != new.status:
            self.server.close()
            self.server = self._bind_status()
        logs.setup(new.log_level, "supervisor")
        old_devices = {d.name: d for d in old.devices}
        for name, child in list(self.children.items()):
            if name not in {d.name for d in new.devices}:
                self._retire(child, "remove")
            elif shared_changed or old_devices[name] != new.device(name):
                self._retire(child, "respawn")
        for device in new.devices:
            if device.name not in self.children:
                self.children[device.name] = Child(device.name)
                self._spawn(self.children[device.name])
        log.info("reloaded %s: %d devices", new.path, len(new.devices))

    def _retire(self, child: Child, then: str) -> None:
        if child.pid is None:
            if then == "remove":
                del self.children[child.name]
            else:
                child.failures, child.state, child.next_start_at = 0, "backoff", 0.0
            return
        child.then = then
        self._terminate(child)

    # -- status -------------------------------------------------------------------------------

    def _bind_status(self) -> StatusServer:
        app = self.build_app(self.status, self.healthy, self.history)
        return StatusServer(app, self.config.status.host, self.config.status.port,
                            self.selector)

    def history(self, name: str) -> list[dict] | None:
        """Recent readings of device `name`, oldest first (None: no such device)."""
        child = self.children.get(name)
        return None if child is None else list(child.history)

    def healthy(self) -> bool:
        return time.monotonic() - self.last_turn < 5 * LOOP_TIMEOUT_S

    def status(self) -> dict:
        c8y = self.config.cumulocity
        return {
            "agent": {"version": __version__, "pid": self.pid, "started": self.started,
                      "uptime_s": round(time.time() - self.started, 1),
                      "config": self.config.path,
                      "uplink": f"{c8y.host}:{c8y.port}" if c8y else "not configured"},
            "devices": [self._device_status(c) for c in self.children.values()],
        }

    def _device_status(self, child: Child) -> dict:
        device = next((d for d in self.config.devices if d.name == child.name), None)
        view = {"queued": None, "sent": 0, "connected": False, "last_reading": None,
                **child.beat,
                "name": child.name, "type": device.type if device else None,
                "external_id": device.external_id if device else None,
                "state": child.state, "pid": child.pid, "restarts": child.restarts,
                "last_exit": child.last_exit}
        if child.state == "backoff":
            view["retry_in_s"] = round(max(0.0, child.next_start_at - time.monotonic()), 1)
        if child.pid is None:
            view["connected"] = False
        return view

    def _pet(self, now: float) -> None:
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
        beats = [c.beat for c in self.children.values() if c.pid is not None]
        online = sum(1 for b in beats if b.get("connected"))
        queued = sum(b.get("queued") or 0 for b in beats)
        return f"{online}/{len(self.children)} devices online, {queued} queued"


def _record_only(signum, frame) -> None:
    """Signal handler: the wake-up fd already carries the signal number to the loop."""


def _ignore() -> None:
    pass


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _watchdog_interval_s() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6


def _set_process_name(name: str) -> None:
    """Set the kernel's comm name (shown by ps -o comm, top), best effort."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass
