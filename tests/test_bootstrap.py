"""Device registration with the bootstrap user (issue 15, ref §1.5).

The fake tenant as the platform (only s/ucr and s/dcr for the bootstrap user, credentials
only after an operator accepted the device, revoked logins refused with CONNACK 4); the
credentials store (atomic, 0600, never through a link); the parts of the flow; and the real
agent end to end: registering while buffering -> accepted -> online with the issued login,
the buffer delivered -> restarted without registering again -> the login revoked -> back to
registering -> accepted again -> online; the issued passwords nowhere to be read.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from c8ysim.heartbeat import Link
from c8ysim.uplink import bootstrap, credentials
from c8ysim.uplink.bootstrap import Bootstrap, RefusalWatch, parse_credentials
from c8ysim.uplink.credentials import Credentials, CredentialsError
from c8ysim.uplink.transport import Endpoint, Message
from conftest import REPO, free_port, wait_until
from fake_tenant import FakeTenant

BOOTSTRAP_USER = "management/devicebootstrap"
BOOTSTRAP_PASSWORD = "boot-Pw-7f3a"
TIMEOUT_S = 5.0


@pytest.fixture
def tenant():
    with FakeTenant({"t1/u": "secret"}, bootstrap_password=BOOTSTRAP_PASSWORD) as fake:
        yield fake


# -- the fake tenant as the platform ---------------------------------------------------------

class Client:
    """A paho client (1.6 or 2.x) that keeps what it receives. `accepted`: the CONNACK's
    verdict (the code itself: `tenant.records()`, paho 2 shows 4 as 134)."""

    def __init__(self, port: int, client_id: str, username: str, password: str):
        args = dict(client_id=client_id, clean_session=True, reconnect_on_failure=False)
        self.client = (mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **args)
                       if hasattr(mqtt, "CallbackAPIVersion") else mqtt.Client(**args))
        self.client.username_pw_set(username, password)
        self.accepted = None
        self.connected = threading.Event()
        self.messages: queue.Queue = queue.Queue()
        self.subacks: dict[int, list[int]] = {}
        self.acked: set[int] = set()
        self.client.on_connect = lambda _c, _u, _f, rc, *_: self._on_connect(rc)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(
            (msg.topic, msg.payload.decode()))
        self.client.on_subscribe = lambda _c, _u, mid, codes, *_: self.subacks.__setitem__(
            mid, [getattr(code, "value", code) for code in codes])
        self.client.on_publish = lambda _c, _u, mid, *_: self.acked.add(mid)
        self.client.connect("127.0.0.1", port, 60)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT_S), "no CONNACK"

    def _on_connect(self, reason_code) -> None:
        self.accepted = getattr(reason_code, "value", reason_code) == 0
        self.connected.set()

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.client.subscribe(topic, 1)
        wait_until(lambda: mid in self.subacks, TIMEOUT_S, what="SUBACK")
        return self.subacks[mid]

    def publish(self, topic: str, payload: str = "") -> None:
        mid = self.client.publish(topic, payload, 1).mid
        wait_until(lambda: mid in self.acked, TIMEOUT_S, what="PUBACK")

    def received(self, timeout: float) -> list[tuple[str, str]]:
        found, deadline = [], time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                found.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients():
    made: list[Client] = []

    def make(*args) -> Client:
        made.append(Client(*args))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_tenant_issues_credentials_only_after_accept(tenant, clients):
    device = clients(tenant.port, "dev-1", BOOTSTRAP_USER, BOOTSTRAP_PASSWORD)
    assert device.accepted
    assert device.subscribe("s/dcr") == [1]
    device.publish("s/ucr")
    assert device.received(0.5) == []  # nobody accepted it: the platform just waits
    tenant.accept_registration("dev-1")
    device.publish("s/ucr")
    [(topic, line)] = device.received(1.0)
    issued = tenant.issued_credentials("dev-1")
    assert topic == "s/dcr" and line == "70,t1,device_dev-1,{}".format(issued[2])
    assert issued[:2] == ("t1", "device_dev-1") and len(issued[2]) >= 12
    device.publish("s/ucr")  # issued once
    assert device.received(0.5) == []
    assert tenant.registration_requests("dev-1") == 3
    device.close()

    login = clients(tenant.port, "dev-1", "t1/device_dev-1", issued[2])
    assert login.accepted
    login.publish("s/us", "100,dev-1,c8y_Test")
    assert tenant.device("dev-1") is not None
    assert tenant.violations == [] and tenant.internal_errors == []


def test_revoked_credentials_are_refused_with_connack_4(tenant, clients):
    tenant.accept_registration("dev-2")
    device = clients(tenant.port, "dev-2", BOOTSTRAP_USER, BOOTSTRAP_PASSWORD)
    device.subscribe("s/dcr")
    device.publish("s/ucr")
    assert device.received(1.0)
    _tenant, user, password = tenant.issued_credentials("dev-2")
    device.close()
    login = clients(tenant.port, "dev-2", f"t1/{user}", password)
    login.publish("s/us", "100,dev-2,c8y_Test")
    assert tenant.revoke_credentials("dev-2") is not None
    wait_until(lambda: not tenant.is_connected("dev-2"), TIMEOUT_S, what="the session dropped")
    assert tenant.device("dev-2") is None  # deleted with its user
    assert not clients(tenant.port, "dev-2", f"t1/{user}", password).accepted
    assert connack_codes(tenant, "dev-2")[-1] == 4
    assert tenant.issued_credentials("dev-2") is None


def connack_codes(tenant, client_id: str) -> list[int]:
    return [r.rc for r in tenant.records(client_id) if r.kind == "connect"]


def test_wrong_bootstrap_password_is_connack_4(tenant, clients):
    assert not clients(tenant.port, "dev-3", BOOTSTRAP_USER, "not-it").accepted
    assert connack_codes(tenant, "dev-3") == [4]
    with FakeTenant({"t1/u": "secret"}) as no_bootstrap:  # no bootstrap user at all
        assert not clients(no_bootstrap.port, "dev-3", BOOTSTRAP_USER, "x").accepted
        assert connack_codes(no_bootstrap, "dev-3") == [4]


def test_bootstrap_user_may_only_use_s_ucr_and_s_dcr(tenant, clients):
    device = clients(tenant.port, "dev-4", BOOTSTRAP_USER, BOOTSTRAP_PASSWORD)
    assert device.subscribe("s/e") == [0x80]
    assert device.subscribe("s/ds") == [0x80]
    device.publish("s/us", "100,dev-4,c8y_Test")
    device.publish("s/ucr", "not empty")
    assert tenant.device("dev-4") is None  # not applied
    violations = tenant.violations
    assert len(violations) == 4, violations
    assert all(v.startswith("dev-4: ") for v in violations)
    assert "subscribed 's/e'" in violations[0] and "subscribed 's/ds'" in violations[1]
    assert "published to 's/us'" in violations[2] and "payload" in violations[3]


# -- the credentials store ---------------------------------------------------------------------

def test_credentials_are_stored_owner_only_and_read_back(tmp_path):
    path = credentials.path_for(tmp_path / "state", "pv")
    assert credentials.load(path) is None and not credentials.exists(path)
    issued = Credentials("t1", "device_x", "pw,with \"quotes\"\n")
    credentials.save(path, issued)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert credentials.load(path) == issued and credentials.exists(path)
    assert "pw,with" not in repr(issued)
    assert sorted(os.listdir(path.parent)) == ["pv.credentials"]  # no temp file left
    credentials.save(path, Credentials("t1", "device_x", "second"))
    assert credentials.load(path).password == "second"
    assert credentials.delete(path) and not credentials.delete(path)
    assert credentials.load(path) is None


def test_credentials_file_is_0600_from_creation_whatever_the_umask(tmp_path, monkeypatch):
    created = []
    real_open = os.open

    def spy(name, flags, mode=0o777, **kwargs):
        if flags & os.O_CREAT:
            created.append((flags, mode))
        return real_open(name, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(0)
    try:
        credentials.save(tmp_path / "pv.credentials", Credentials("t", "u", "p"))
    finally:
        os.umask(old)
    [(flags, mode)] = created
    assert mode == 0o600 and flags & os.O_EXCL and flags & os.O_NOFOLLOW
    assert stat.S_IMODE(os.stat(tmp_path / "pv.credentials").st_mode) == 0o600


def test_a_link_in_place_of_the_file_is_replaced_never_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    path = tmp_path / "pv.credentials"
    path.symlink_to(target)
    with pytest.raises(CredentialsError):
        credentials.load(path)  # never read through a link
    credentials.save(path, Credentials("t", "u", "p"))
    assert target.read_text() == "untouched" and not path.is_symlink()
    assert credentials.load(path) == Credentials("t", "u", "p")


def test_stale_temp_files_are_cleaned_and_group_readable_files_tightened(tmp_path):
    path = tmp_path / "pv.credentials"
    stale = tmp_path / ".pv.credentials.tmp-1-abcd"
    stale.write_text("half")
    credentials.save(path, Credentials("t", "u", "p"))
    assert not stale.exists()
    path.chmod(0o644)
    assert credentials.load(path) == Credentials("t", "u", "p")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'{"tenant": "t", "user": "u"}',
    b'{"tenant": "t/x", "user": "u", "password": "p"}',
    b'{"tenant": "t", "user": "u", "password": ""}', b"\xff\xfe"])
def test_unusable_credentials_files_are_errors_that_show_no_content(tmp_path, content):
    path = tmp_path / "pv.credentials"
    path.write_bytes(content)
    with pytest.raises(CredentialsError) as error:
        credentials.load(path)
    assert str(path) in str(error.value)
    assert "not json" not in str(error.value)


# -- the flow's parts --------------------------------------------------------------------------

def test_parse_credentials_takes_the_first_valid_70_line():
    found, ignored = parse_credentials(b'70,t9,device_x,"p,w"\n70,t8,other,pw2')
    assert found == Credentials("t9", "device_x", "p,w") and ignored == []


@pytest.mark.parametrize("payload, reason", [
    (b"70,t9,device_x", "with 2 fields"),
    (b"70,t9,device_x,pw-secret,extra", "with 4 fields"),
    (b"70,,device_x,pw-secret", "tenant is missing"),
    (b"70,t9,device_x,", "password is missing"),
    (b"70,t/9,device_x,pw-secret", "contains '/'"),
    (b" 70,t9,device_x,pw-secret", "not a credentials line"),
    (b"71,pw-secret\x1b[31m", "not a credentials line"),
])
def test_malformed_s_dcr_lines_are_ignored_and_described_without_their_fields(payload,
                                                                              reason):
    found, ignored = parse_credentials(payload)
    assert found is None and len(ignored) == 1 and reason in ignored[0], ignored
    assert "pw-secret" not in ignored[0] and "\x1b" not in ignored[0]


def test_bootstrap_ignores_malformed_lines_and_stops_at_the_credentials(caplog):
    events: queue.SimpleQueue = queue.SimpleQueue()
    endpoint = Endpoint("127.0.0.1", 1, "dev-x", BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, 60)
    flow = Bootstrap(endpoint, events, 2.0, random.Random(1))

    class Stub:
        def close(self):
            pass

    flow.connection, flow.generation, flow.state = Stub(), 1, Link.REGISTERING
    flow.handle(Message(1, "s/dcr", b"70,t1\n42,\x1b[2Jhi"), 0.0)
    assert flow.credentials is None and flow.status()["inbound_ignored"] == 2
    assert flow.status()["connection"] == Link.REGISTERING
    assert all("\x1b" not in r.getMessage() for r in caplog.records)
    flow.handle(Message(1, "s/dcr", b"x" * (bootstrap.MAX_INBOUND_BYTES + 1)), 0.0)
    assert flow.status()["inbound_dropped"] == 1
    flow.handle(Message(2, "s/dcr", b"70,t1,u,pw"), 0.0)  # another connection's: ignored
    assert flow.credentials is None
    flow.handle(Message(1, "s/dcr", b"70,t1,device_dev-x,pw-99"), 0.0)
    assert flow.credentials == Credentials("t1", "device_dev-x", "pw-99")
    assert flow.state == Link.STOPPED and flow.connection is None
    assert not any("pw-99" in r.getMessage() for r in caplog.records)


def drive(flow: Bootstrap, events: queue.SimpleQueue, until, timeout: float) -> None:
    """The device loop's part for the flow: poll, then wait for events."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; status {flow.status()}"
        flow.poll(time.monotonic())
        wait = flow.wakeup_in(time.monotonic())
        try:
            event = events.get(timeout=min(0.05 if wait is None else wait, 0.05))
        except queue.Empty:
            continue
        flow.handle(event, time.monotonic())


def test_bootstrap_retries_failed_connections_then_registers(tenant):
    events: queue.SimpleQueue = queue.SimpleQueue()
    endpoint = Endpoint("127.0.0.1", tenant.port, "dev-r", BOOTSTRAP_USER, BOOTSTRAP_PASSWORD,
                        60)
    flow = Bootstrap(endpoint, events, 2.0, random.Random(3))
    tenant.refuse_connects(3, count=2)  # server unavailable, twice
    try:
        drive(flow, events, lambda: flow.status()["connection"] == Link.REGISTERING, 10)
        assert flow.status()["attempts"] == 3 and flow.status()["last_error"] is None
        assert tenant.subscriptions("dev-r") == {"s/dcr": 1}
        # asked at once (the publish may still be on its way when the state changes)
        drive(flow, events, lambda: tenant.registration_requests("dev-r") >= 1, 5)
        assert tenant.registration_requests("dev-r") == 1
        tenant.accept_registration("dev-r")
        drive(flow, events, lambda: flow.credentials is not None,
              bootstrap.POLL_INTERVAL_S + 3)
    finally:
        flow.close()
    issued = tenant.issued_credentials("dev-r")
    assert flow.credentials == Credentials(*issued)
    assert tenant.registration_requests("dev-r") == 2  # the next poll, 5 s later
    assert tenant.violations == [] and tenant.internal_errors == []
    wait_until(lambda: not tenant.is_connected("dev-r"), TIMEOUT_S, what="disconnected")
    assert tenant.records("dev-r")[-1].kind == "disconnect"  # a clean DISCONNECT


def test_a_wrong_bootstrap_password_shows_auth_failed_and_retries_near_the_cap(tenant):
    events: queue.SimpleQueue = queue.SimpleQueue()
    endpoint = Endpoint("127.0.0.1", tenant.port, "dev-w", BOOTSTRAP_USER, "wrong", 60)
    flow = Bootstrap(endpoint, events, 2.0, random.Random(3))
    try:
        drive(flow, events, lambda: flow.status()["attempts"] >= 3, 10)
    finally:
        flow.close()
    assert flow.status()["connection"] == Link.AUTH_FAILED
    assert "cumulocity.bootstrap" in flow.status()["last_error"]
    assert connack_codes(tenant, "dev-w")[:2] == [4, 4]
    assert 1.0 <= flow.retry_at - flow.state_since <= 2.0  # near the cap (2 s)


def test_bootstrap_status_is_a_heartbeat_like_the_sessions():
    from c8ysim.heartbeat import Heartbeat
    endpoint = Endpoint("127.0.0.1", 1, "dev-x", BOOTSTRAP_USER, BOOTSTRAP_PASSWORD, 60)
    status = Bootstrap(endpoint, queue.SimpleQueue(), 2.0, random.Random(1)).status()
    assert Heartbeat.decode(Heartbeat(**status).encode()).connection == Link.DISCONNECTED
    assert {"connection", "connected", "sent", "attempts", "last_error"} <= set(status)


def test_refusal_watch_needs_a_minute_and_several_refusals():
    watch = RefusalWatch(for_s=60.0, at_least=3)
    assert not watch.observe(True, True, 5, 0.0)  # first refusal (attempt 5)
    assert not watch.observe(True, False, 6, 30.0)  # attempt 6 under way
    assert not watch.observe(True, True, 6, 61.0)  # 2 refusals over a minute: not yet
    assert watch.observe(True, True, 7, 62.0)  # 3 refusals over a minute: give up
    assert not watch.observe(False, True, 8, 63.0)  # another failure ends the run
    assert not watch.observe(True, True, 9, 64.0) and watch.refused_for_s(70.0) == 6.0
    assert not watch.observe(True, True, 200, 100.0)  # many refusals, but < 60 s


# -- the agent, end to end ------------------------------------------------------------------------

DEVICES = (("pv", "pv", "c8ysim-bt-pv"), ("grid", "grid", "c8ysim-bt-grid"))


def agent_config(directory: Path, port: int, status_port: int) -> Path:
    path = directory / "c8ysim.yaml"
    lines = "".join(f"  - {{name: {name}, type: {kind}, interval_s: 0.3, external_id: {xid}}}\n"
                    for name, kind, xid in DEVICES)
    path.write_text(
        "site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin, seed: 1}\n"
        "cumulocity:\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        "  reconnect_max_s: 2\n"
        f"  bootstrap: {{password: \"{BOOTSTRAP_PASSWORD}\"}}\n"
        f"storage: {{path: {directory / 'state'}}}\n"
        f"status: {{listen: '127.0.0.1:{status_port}'}}\n"
        "devices:\n" + lines)
    path.chmod(0o600)
    return path


def connection(agent, name: str):
    return agent.devices()[name].get("connection")


def measurement_times(tenant, xid: str) -> list[float]:
    from datetime import datetime
    return [datetime.fromisoformat(m["time"]).timestamp() for m in tenant.measurements(xid)]


def registering_and_buffering(agent, tenant, name: str, xid: str) -> int:
    wait_until(lambda: connection(agent, name) == "registering", 15,
               what=f"{name}: connection registering")
    wait_until(lambda: agent.devices()[name]["queued"] >= 5, 10, what=f"{name} buffering")
    assert not agent.devices()[name]["connected"]
    wait_until(lambda: tenant.registration_requests(xid) >= 2, 12,
               what=f"{name} polling s/ucr again")
    return agent.devices()[name]["queued"]


def accepted_and_online(agent, tenant, name: str, xid: str, queued: int) -> tuple:
    accepted_at = time.time()
    tenant.accept_registration(xid)
    wait_until(lambda: agent.devices()[name]["connected"], 15, what=f"{name} online")
    issued = tenant.issued_credentials(xid)
    stored = json.loads(Path(agent.config.parent, "state", f"{name}.credentials").read_text())
    assert (stored["tenant"], stored["user"], stored["password"]) == issued
    wait_until(lambda: len(tenant.measurements(xid)) >= queued, 15,
               what=f"the {queued} readings {name} buffered while registering")
    assert min(measurement_times(tenant, xid)) < accepted_at - 1.0  # from before the accept
    return issued


@pytest.mark.timeout(300)
def test_register_accept_restart_revoke_register_again(tmp_path, tenant, agent_factory):
    status_port = free_port()
    config = agent_config(tmp_path, tenant.port, status_port)
    state = tmp_path / "state"
    agent = agent_factory(config, status_port).start()
    pv_xid, grid_xid = DEVICES[0][2], DEVICES[1][2]

    queued = registering_and_buffering(agent, tenant, "pv", pv_xid)
    assert connection(agent, "grid") == "registering"
    assert tenant.lines(pv_xid) == [] and not (state / "pv.credentials").exists()
    notices = re.findall(rf"^<5>pv: not registered yet: .*external ID {pv_xid} under Device "
                         r"management > Registration", agent.log_text(), re.MULTILINE)
    assert len(notices) == 1, agent.log_text()

    first = accepted_and_online(agent, tenant, "pv", pv_xid, queued)
    assert stat.S_IMODE(os.stat(state / "pv.credentials").st_mode) == 0o600
    assert connection(agent, "grid") == "registering"  # each device is accepted on its own
    grid = accepted_and_online(agent, tenant, "grid", grid_xid,
                               agent.devices()["grid"]["queued"])
    assert tenant.violations == [] and tenant.internal_errors == []

    # Restarted: both log in with their stored credentials, no registration again.
    requests = [tenant.registration_requests(xid) for _n, _k, xid in DEVICES]
    assert agent.stop() == 0
    agent = agent_factory(config, status_port).start()
    wait_until(lambda: all(d["connected"] for d in agent.devices().values()), 15,
               what="both devices online after the restart")
    time.sleep(1.0)
    assert [tenant.registration_requests(xid) for _n, _k, xid in DEVICES] == requests
    assert all(d["connection"] == "online" for d in agent.devices().values())

    # The device is deleted with its user: refused for a minute, then it registers again.
    tenant.revoke_credentials(pv_xid)
    wait_until(lambda: connection(agent, "pv") == "auth_failed", 10, what="pv auth_failed")
    wait_until(lambda: connection(agent, "pv") == "registering",
               bootstrap.REFUSED_FOR_S + 30, what="pv registering again")
    assert not (state / "pv.credentials").exists()
    assert re.search(r"^<4>pv: Cumulocity has refused the stored credentials of "
                     rf"{pv_xid} for \d+ s: deleted them; registering again$",
                     agent.log_text(), re.MULTILINE), agent.log_text()
    assert connection(agent, "grid") == "online"
    again = accepted_and_online(agent, tenant, "pv", pv_xid, 1)
    assert again[2] != first[2]
    assert tenant.violations == [] and tenant.internal_errors == []

    assert_nowhere(agent, config, tmp_path, [first[2], grid[2], again[2]])
    assert agent.stop() == 0


def assert_nowhere(agent, config: Path, tmp_path: Path, passwords: list[str]) -> None:
    """The issued passwords are in no journal line, page, metric or support bundle."""
    pages = {path: agent.get(path) for path in ("/", "/api/status", "/metrics")}
    assert all(pages.values()), pages
    bundle = tmp_path / "diag.tar.gz"
    diag = subprocess.run([sys.executable, "-m", "c8ysim", "diag", "--config", str(config),
                           "-o", str(bundle)], cwd=REPO, capture_output=True, timeout=60)
    assert diag.returncode == 0, diag.stderr
    with tarfile.open(bundle) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert any(name.endswith("state-dir.txt") for name in members)
    texts = {"journal": agent.log_text().encode(), **pages, **members,
             "diag output": diag.stdout + diag.stderr}
    for password in passwords:
        leaks = [name for name, text in texts.items() if password.encode() in text]
        assert not leaks, f"an issued password is in {leaks}"


# -- c8ysim register ---------------------------------------------------------------------------

def c8ysim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "c8ysim", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_register_lists_external_ids_and_stored_credentials(tmp_path):
    config = agent_config(tmp_path, 1883, free_port())
    credentials.save(credentials.path_for(tmp_path / "state", "grid"),
                     Credentials("t1", "device_c8ysim-bt-grid", "pw-not-shown"))
    result = c8ysim("register", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Device management > Registration" in lines[0]
    assert re.fullmatch(r"pv +c8ysim-bt-pv +none: not registered yet", lines[2]), lines
    assert re.fullmatch(r"grid +c8ysim-bt-grid +stored", lines[3]), lines
    assert "pw-not-shown" not in result.stdout + result.stderr


def test_register_without_bootstrap_says_so_and_a_bad_config_is_78(tmp_path):
    config = tmp_path / "c8ysim.yaml"
    config.write_text("site: {latitude: 52.52, longitude: 13.40}\n"
                      "devices:\n  - {name: pv, type: pv, external_id: xid-pv}\n")
    result = c8ysim("register", "--config", str(config))
    assert result.returncode == 0 and "cumulocity.bootstrap is not set" in result.stderr
    assert re.search(r"^pv +xid-pv +not used", result.stdout, re.MULTILINE), result.stdout
    config.write_text("site: {latitude: 520}\n")
    assert c8ysim("register", "--config", str(config)).returncode == 78


def test_diag_scrubs_the_bootstrap_password_also_from_a_password_file(tmp_path):
    from c8ysim import config, diag
    secret = tmp_path / "boot-password"
    secret.write_text("hunter2-from-file\n")
    secret.chmod(0o600)
    path = tmp_path / "c8ysim.yaml"
    path.write_text("site: {latitude: 52.52, longitude: 13.40}\n"
                    f"cumulocity: {{host: h, bootstrap: {{password_file: {secret}}}}}\n"
                    "devices:\n  - {name: pv, type: pv, external_id: xid-pv}\n")
    path.chmod(0o600)
    assert "hunter2-from-file" in diag.secrets_of(config.load(str(path)))
