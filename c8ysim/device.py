"""One device's child process: model -> buffer -> session, and its tick loop.

The composition root of a device. Every `interval_s` the model computes a reading; the
reading, its alarm transitions and the model's state (energy registers) are stored in one
transaction. The session drains the buffer whenever it is online. Once per loop turn the
child sends its heartbeat to the supervisor. It never raises: failures become an exit code
and a log line.

With `cumulocity.bootstrap` the device logs in with the credentials Cumulocity issued it
(stored in the state directory), else with the config's, else it registers first
(`uplink.bootstrap`) while the loop goes on reading and buffering; a stored login the broker
refuses for good (`RefusalWatch`) is deleted and the device registers again.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import signal
import socket
import time

from c8ysim import __version__, exits, logs, sim
from c8ysim.config import Config, DeviceConfig
from c8ysim.control import Control
from c8ysim.heartbeat import Heartbeat, Link
from c8ysim.kinds import KINDS
from c8ysim.storage import Buffer, StorageConfigError, open_buffer
from c8ysim.uplink import credentials, smartrest
from c8ysim.uplink.bootstrap import Bootstrap, RefusalWatch
from c8ysim.uplink.credentials import Credentials
from c8ysim.uplink.session import Registration, Session
from c8ysim.uplink.transport import Endpoint

# A device beats every BEAT_BUSY_S while it has something moving to show (a queue, a link
# not online, a fault), at once when its link changes, and every BEAT_STEADY_S otherwise (at
# most a quarter of supervisor.heartbeat_timeout_s), readings or not: at the sample's 10 s
# interval a beat a second made ten wake-ups per reading, and at 1 s a beat with every
# reading cost the device and the supervisor more than the status page, which refreshes
# and keeps a reading every 5 s, can show (issue 18).
BEAT_BUSY_S = 1.0
BEAT_STEADY_S = 5.0
# A beat goes out in the turn that follows a reading's acknowledgement when it is due
# within BEAT_LATE_S either way: it waits for a reading due just after it, and goes early
# after one read just before it. One wake-up of the loop for both, whatever the phase.
BEAT_LATE_S = 0.5
BEAT_EARLY_S = 0.1  # in any other turn, a beat this close to due goes out
JUST_READ_S = 0.25  # a turn this soon after a reading follows it (its PUBACK)
# Longest sleep of the loop: the parent check (the kernel's PDEATHSIG comes first) and the
# look for rows another process queued; events (SIGTERM, PUBACKs, operations) wake it at once.
MAX_WAIT_S = 5.0
AUTH_RETRY_WITH_FALLBACK_S = 30.0  # refused logins retried within this: ~1 min to fall back
MODEL_STATE_KEY = "model.state"
SAVE_RETRY_S = 60.0  # issued credentials not yet stored: try again this often
OUTAGE_GRACE_S = 5.0  # a comms_loss waits this long at most for operation answers in flight
# Heartbeat counters that go on across the uplinks of one child (bootstrap, sessions).
CARRIED_COUNTERS = ("sent", "reconnects", "attempts", "inbound_dropped", "inbound_ignored",
                    "rejected")

log = logging.getLogger(__name__)


class _Stop:
    """Queued by the SIGTERM handler (SimpleQueue.put is safe in a signal handler)."""


class Device:
    """One device: its model, buffer, Control and uplink, and the steps of its loop.

    Alone in its process, `run()` is the loop. In a group process (`c8ysim.group`) the
    group's loop calls `schedule()`, `turn()`, `wake_in()` and `dispatch()` instead, and
    hands in `events`: the device's `Inbox` on the group's shared queue, and `beat_fields`:
    what the group adds to each heartbeat (the device's name and lifecycle).
    """

    def __init__(self, config: Config, device: DeviceConfig, buffer: Buffer,
                 heartbeat: socket.socket | None, parent_pid: int, events=None,
                 beat_fields=None):
        self.config, self.device, self.buffer = config, device, buffer
        self.heartbeat, self.parent_pid = heartbeat, parent_pid
        # what the uplink's paho thread puts its events on: our own queue, or an Inbox
        self.events = queue.SimpleQueue() if events is None else events
        self.beat_fields = beat_fields  # () -> dict, or None
        self.next_tick = self.next_heartbeat = 0.0
        self.beat_steady_s = min(BEAT_STEADY_S, config.supervisor.heartbeat_timeout_s / 4)
        self.beat_link = None  # the uplink's state the last beat showed
        self.read_at = -1e9  # monotonic time of the last reading the loop took
        self.control = Control(config, device, self.reading_now, self.status_text)
        self.model = sim.build_model(self.control.site, device.name)
        self.configuration = self.control.configuration()
        self.outage_until: float | None = None  # a comms_loss has the uplink down until then
        self.outage_seen_at: float | None = None
        self.model_state = load_model_state(buffer) or self.model.initial_state()
        self.credentials_path = credentials.path_for(config.storage.path, device.name)
        self.session: Session | None = None
        self.bootstrap: Bootstrap | None = None
        self.login_source: str | None = None  # "stored" or "config": where the session's is from
        self.unsaved: Credentials | None = None  # issued, not yet on disk
        self.save_at = 0.0
        self.refusals = RefusalWatch()
        self.carried: dict[str, int] = {}  # counters of the uplinks closed before
        self.last_reading: dict | None = None
        self.units: dict | None = None
        self.running = True
        self._start_uplink()

    # -- the uplink: a session, or the registration before it ---------------------------

    def _start_uplink(self) -> None:
        c8y = self.config.cumulocity
        if c8y is None:
            log.warning("no 'cumulocity' section: simulating and buffering only")
            return
        if c8y.bootstrap is None:
            self.session = self._build_session(c8y.username, c8y.password)
            return
        stored = self._stored_credentials()
        if stored is not None:
            self.login_source = "stored"
            self.session = self._build_session(stored.username, stored.password)
        elif c8y.username and c8y.password:
            self.login_source = "config"
            self.session = self._build_session(c8y.username, c8y.password)
        else:
            self.bootstrap = self._build_bootstrap()

    def _stored_credentials(self) -> Credentials | None:
        try:
            return credentials.load(self.credentials_path)
        except credentials.CredentialsError as exc:
            log.error("stored credentials unusable (%s): registering again; the file is "
                      "replaced once Cumulocity issues new ones", exc)
            return None

    def _endpoint(self, username: str | None, password: str | None) -> Endpoint:
        c8y = self.config.cumulocity
        tls = c8y.tls.for_device(self.device.external_id) if c8y.tls else None
        return Endpoint(
            host=c8y.host, port=c8y.port, client_id=self.device.external_id,
            username=None if tls and tls.cert_file else username, password=password,
            keepalive_s=c8y.keepalive_s, tls=tls is not None,
            ca_file=tls.ca_file if tls else None, cert_file=tls.cert_file if tls else None,
            key_file=tls.key_file if tls else None)

    def _build_bootstrap(self) -> Bootstrap:
        c8y = self.config.cumulocity
        endpoint = self._endpoint(c8y.bootstrap.username, c8y.bootstrap.password)
        return Bootstrap(endpoint, self.events, c8y.reconnect_max_s, random.Random())

    def _build_session(self, username: str | None, password: str | None) -> Session:
        c8y = self.config.cumulocity
        endpoint = self._endpoint(username, password)
        registration = Registration(
            name=self.device.name, type=KINDS[self.device.type].c8y_type,
            serial=self.device.external_id, model=f"c8ysim {self.device.type}",
            revision=__version__,
            supported_operations=("c8y_Restart", *self.control.actions()),
            required_interval_min=c8y.required_interval_min,
            position=self.config.position(self.device.name), configuration=self.configuration)
        return Session(endpoint, registration, self.buffer, self.events, c8y.reconnect_max_s,
                       random.Random(), drain_share(self.config),
                       # with a registration to fall back to, refusals are counted sooner
                       auth_retry_max_s=AUTH_RETRY_WITH_FALLBACK_S if self.login_source
                       else None, actions=self.control.actions())

    @property
    def uplink(self) -> Session | Bootstrap | None:
        return self.session or self.bootstrap

    def _poll_uplink(self, now: float) -> None:
        if self.bootstrap:
            self.bootstrap.poll(now)
            if self.bootstrap.credentials:
                self._registered(self.bootstrap.credentials, now)
        elif self.session:
            self.session.poll(now)
            if self.login_source and self.refusals.observe(
                    self.session.auth_failed, self.session.state == Link.DISCONNECTED,
                    self.session.attempts, now):
                self._register_again(now)
        if self.unsaved and now >= self.save_at:
            self._save(now)

    def _registered(self, issued: Credentials, now: float) -> None:
        """Cumulocity issued this device's login: store it, and log in with it."""
        self._retire(self.bootstrap)
        self.bootstrap = None
        self.unsaved = issued
        self._save(now)
        self.login_source = "stored"
        self.refusals = RefusalWatch()
        self.session = self._build_session(issued.username, issued.password)

    def _save(self, now: float) -> None:
        try:
            credentials.save(self.credentials_path, self.unsaved)
        except credentials.CredentialsError as exc:
            self.save_at = now + SAVE_RETRY_S
            log.error("cannot store the credentials Cumulocity issued (%s): using them from "
                      "memory, retrying in %.0f s; if the device restarts first it has to "
                      "be registered again", exc, SAVE_RETRY_S)
            return
        self.unsaved = None
        log.info("stored the credentials in %s", self.credentials_path)

    def _register_again(self, now: float) -> None:
        """The broker refuses the login for good (the device was deleted): register anew."""
        refused_s = self.refusals.refused_for_s(now)
        self._retire(self.session)
        self.session = None
        if self.login_source == "stored":
            try:
                credentials.delete(self.credentials_path)
            except credentials.CredentialsError as exc:
                log.error("%s", exc)
        self.unsaved = None
        log.warning("Cumulocity has refused the %s credentials of %s for %.0f s: %s; "
                    "registering again", self.login_source, self.device.external_id,
                    refused_s, "deleted them" if self.login_source == "stored"
                    else "no longer using them until the next start")
        self.login_source = None
        self.bootstrap = self._build_bootstrap()

    def _retire(self, uplink: Session | Bootstrap) -> None:
        """Close an uplink for good: keep its counters, forget its queued events."""
        status = uplink.status()
        for key in CARRIED_COUNTERS:
            if isinstance(status.get(key), int):
                self.carried[key] = self.carried.get(key, 0) + status[key]
        uplink.close()  # joins paho's thread: no event of it arrives after this
        if not isinstance(self.events, queue.SimpleQueue):  # an Inbox on the group's queue:
            self.events = self.events.fresh()  # what the old one still holds is dropped
            return
        pending = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, _Stop):
                pending.append(event)
        for event in pending:
            self.events.put(event)

    def _uplink_status(self) -> dict:
        uplink = self.uplink
        if uplink is None:
            return {"connection": Link.OUTAGE, **self.carried} if self.outage_until else {}
        status = uplink.status()
        for key, value in self.carried.items():
            if isinstance(status.get(key), int):
                status[key] += value
        return status

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.events.put(_Stop()))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor too
        self.schedule(time.monotonic())
        while self.running:
            if self.turn(time.monotonic()):
                self.close()
                return exits.RESTART
            self._wait(self.wake_in(time.monotonic()))
            if os.getppid() != self.parent_pid:
                log.error("the supervisor is gone; exiting")
                self.running = False
        self.close()
        return exits.OK

    def schedule(self, now: float) -> None:
        """Plan the first reading (at the next slot) and a heartbeat right away."""
        self.next_tick = now + _until_next_slot_s(self.control.interval_s)
        self.next_heartbeat = 0.0

    def turn(self, now: float) -> bool:
        """One turn of the loop's work; True when a c8y_Restart asks for a restart."""
        if self._follow_control():  # a new interval: its next slot, unless one is due
            self.next_tick = min(self.next_tick,
                                 now + _until_next_slot_s(self.control.interval_s))
        if now >= self.next_tick:
            read = self.tick()
            self.read_at = now
            # Scheduled on the monotonic clock, aimed at the wall-clock multiple of the
            # interval after the slot just read: all devices read at the same timestamps,
            # a loop woken a little early does not wake again for the same slot, and a jump
            # of the wall clock never stalls (at most an interval) or bursts the loop.
            self.next_tick = now + _until_slot_after(read, self.control.interval_s)
        self._follow_outage(time.time(), now)
        self._poll_uplink(time.monotonic())
        if self.session and self.session.operations.restart_requested:
            log.info("restarting the device for its c8y_Restart operation")
            return True
        link = self._link()
        if self._beat_due(now) or link != self.beat_link:
            steady = self.send_heartbeat()
            self.beat_link = link
            self.next_heartbeat = now + (self.beat_steady_s if steady else BEAT_BUSY_S)
        return False

    def _link(self):
        """The uplink's state (a beat goes out when it changes)."""
        uplink = self.uplink
        return uplink.state if uplink else self.outage_until is not None

    def _beat_due(self, now: float) -> bool:
        """Whether the beat goes out now: when it is due, or in the turn after a reading's
        acknowledgement if it is due within BEAT_LATE_S of it (either way)."""
        if now >= self.next_heartbeat + BEAT_LATE_S:
            return True
        if self._beat_waits():
            return False
        after_reading = (now - self.read_at < JUST_READ_S
                         and self.next_tick - now >= BEAT_LATE_S)  # not readings faster
        return now >= self.next_heartbeat - (BEAT_LATE_S if after_reading else BEAT_EARLY_S)

    def _beat_waits(self) -> bool:
        """A reading is due within BEAT_LATE_S after the beat and none was taken in the
        BEAT_LATE_S before it (readings faster than that: the beat has a fresh one), or a
        reading is not acknowledged yet (its PUBACK wakes the loop)."""
        reading_soon = (0.0 <= self.next_tick - self.next_heartbeat < BEAT_LATE_S
                        and self.next_heartbeat - self.read_at > BEAT_LATE_S)
        return reading_soon or (self.session is not None and bool(self.session.inflight))

    def wake_in(self, now: float) -> float:
        """Seconds until this device has work to do (at most MAX_WAIT_S)."""
        beat_at = self.next_heartbeat + (BEAT_LATE_S if self._beat_waits() else 0.0)
        timeout = min(max(min(self.next_tick, beat_at) - now, 0.0), MAX_WAIT_S)
        if self.uplink and (wake := self.uplink.wakeup_in(now)) is not None:
            timeout = min(timeout, wake)
        return timeout

    def _wait(self, timeout: float) -> None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self.dispatch(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def dispatch(self, event) -> None:
        if isinstance(event, _Stop):
            log.info("stopping")
            self.running = False
        elif self.uplink:
            self.uplink.handle(event, time.monotonic())

    # -- what the schedule and Cumulocity change ------------------------------------------

    def _follow_control(self) -> bool:
        """Apply a change of the live files: the model (faults, weather, parameters), the
        113 text. True when the interval changed."""
        interval = self.control.interval_s
        if not self.control.refresh():
            return False
        self.model = sim.build_model(self.control.site, self.device.name)
        configuration = self.control.configuration()
        if configuration != self.configuration:
            self.configuration = configuration
            log.info("settings now: %s", self.control.overrides or "as in the YAML file")
            if self.session:
                self.session.report_configuration(configuration)
        return self.control.interval_s != interval

    def _follow_outage(self, now: float, monotonic_now: float) -> None:
        """Take the uplink down for a comms_loss window of this device, and up after it."""
        until = self.control.outage_until(now)
        if self.outage_until is not None:
            if until is None:
                log.log(logs.NOTICE, "comms_loss over: reconnecting, delivering what was "
                        "buffered meanwhile")
                self.outage_until = self.outage_seen_at = None
                self._start_uplink()
            else:
                self.outage_until = until
            return
        if until is None or self.uplink is None:
            self.outage_seen_at = None
            return
        self.outage_seen_at = self.outage_seen_at or monotonic_now
        busy = self.session is not None and not self.session.operations.idle
        if busy and monotonic_now - self.outage_seen_at < OUTAGE_GRACE_S:
            return  # answer the operation (maybe the very command) first
        self._retire(self.uplink)
        self.session = self.bootstrap = None
        self.outage_until = until
        log.log(logs.NOTICE, "comms_loss: uplink down until %s, buffering meanwhile",
                time.strftime("%H:%M:%S UTC", time.gmtime(until)))

    def reading_now(self) -> str:
        """Take a reading at this very moment (a measurement request); its summary."""
        t = round(time.time(), 3)
        self.tick(t)
        return f"reading of {len(self.units or ())} values at {smartrest.iso_time(t)}"

    def status_text(self) -> str:
        stats = self.buffer.stats(time.time())
        link = self._uplink_status().get("connection", Link.NOT_CONFIGURED)
        faults = ", ".join(f"{name}{' on ' + device if device else ''} until "
                           f"{smartrest.iso_time(end)}"
                           for name, device, end in self.control.faults(time.time())) or "none"
        overrides = ", ".join(f"{k}={v:g}" for k, v in self.control.overrides.items()) or "none"
        return (f"{self.device.name} ({self.device.type}, {self.device.external_id}): "
                f"link {link}, {stats.depth} readings queued, every "
                f"{self.control.interval_s:g} s; faults: {faults}; set from Cumulocity: "
                f"{overrides}")

    # -- readings ---------------------------------------------------------------------------

    def tick(self, t: float | None = None) -> float:
        """Read the model at `t` (default: the slot nearest to now); the time read."""
        t = _slot(time.time(), self.control.interval_s) if t is None else t
        last_t = self.model_state.get("t")
        if t == last_t:
            return t  # this slot was already read (the loop woke a little early)
        dt = max(0.0, t - last_t) if last_t is not None else 0.0
        state, reading = self.model.step(self.model_state, t, dt)
        self.model_state = {**state, "t": t}
        rows = [(smartrest.UPSTREAM_TOPIC, line.encode(), t) for line in smartrest.reading_lines(reading)]
        self.buffer.put_many(rows, meta={MODEL_STATE_KEY: json.dumps(self.model_state)})
        self.last_reading = _summary(reading)
        self.units = {f"{s.fragment}.{s.series}": s.unit for s in reading.series}
        return t

    def send_heartbeat(self) -> bool:
        """Beat; True when it shows nothing moving: online, nothing queued, no fault."""
        if self.heartbeat is None:
            return False
        stats = self.buffer.stats(time.time())
        beat = Heartbeat(
            pid=os.getpid(), time=time.time(), queued=stats.depth,
            oldest_queued_age_s=stats.oldest_age_s, dropped=stats.dropped,
            quarantined=stats.quarantined, lost=stats.lost, degraded=stats.degraded,
            buffer_backend=stats.backend, last_reading=self.last_reading, units=self.units,
            faults=self.control.faults(time.time()), overrides=self.control.overrides or None,
            **self._uplink_status(), **(self.beat_fields() if self.beat_fields else {}))
        try:
            self.heartbeat.send(beat.encode())
        except (BlockingIOError, ConnectionRefusedError, BrokenPipeError):
            pass  # the supervisor is busy or gone; the next beat or the ppid check covers it
        return beat.connection == Link.ONLINE and not beat.queued and not beat.faults

    def close(self) -> None:
        if self.uplink:
            self.uplink.close()
        self.buffer.close()


def load_model_state(buffer: Buffer) -> dict | None:
    """The model state (energy registers) the device last stored; None if there is none."""
    saved = buffer.get_meta(MODEL_STATE_KEY)
    if not saved:
        return None
    try:
        return json.loads(saved)
    except ValueError:
        log.error("stored model state is unreadable; energy registers restart at 0")
        return None


def drain_share(config: Config) -> float:
    """This device's part of the site's drain budget (`cumulocity.max_lines_per_s` is the
    tenant's limit as the whole site may use it, split evenly across the devices)."""
    return config.cumulocity.max_lines_per_s / max(1, len(config.devices))


def _slot(t: float, interval_s: float) -> float:
    """The wall-clock multiple of the interval nearest to t (readings share timestamps)."""
    return round(round(t / interval_s) * interval_s, 3)


def _until_next_slot_s(interval_s: float) -> float:
    return interval_s - time.time() % interval_s


def _until_slot_after(read: float, interval_s: float) -> float:
    """Seconds until the slot after the one read: between 0 (late, or the wall clock jumped
    ahead) and one interval (the wall clock jumped back)."""
    return min(interval_s, max(0.0, read + interval_s - time.time()))


def _summary(reading: sim.Reading) -> dict:
    """The few values the status page shows."""
    return {"time": reading.time,
            **{f"{s.fragment}.{s.series}": s.value for s in reading.series}}


def run_child(config: Config, device_name: str, heartbeat: socket.socket | None,
              parent_pid: int) -> int:
    """Entry point in the forked child; returns the process exit code."""
    device = config.device(device_name)
    try:
        buffer = open_buffer(config.storage, device.name)
    except StorageConfigError as exc:  # e.g. psycopg2 missing: retrying cannot help
        log.error("%s", exc)
        return exits.CONFIG
    except Exception as exc:  # noqa: BLE001 - any failure to open the store ends the child
        log.error("cannot open the buffer: %s", exc)
        return exits.FAILURE
    try:
        return Device(config, device, buffer, heartbeat, parent_pid).run()
    except Exception:  # noqa: BLE001
        log.exception("device loop failed")
        return exits.FAILURE
