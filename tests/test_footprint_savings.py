"""The per-process savings of issue 18, checked on real processes.

- With TLS off no process of the agent maps OpenSSL's libssl (`_ssl`): paho is imported with
  stand-ins for ssl, hashlib and urllib.request (transport.py); nor its libcrypto
  (`_hashlib`): no module of the agent imports hashlib (test_imports);
- the transport still publishes without TLS and connects with TLS, on the paho in the venv
  (2.x) and on Debian's python3 with its paho 1.6 when that is installed;
- the status app is built on its first request (`DeferredApp`), and answers it;
- the warm-up before the forks leaves no thread, descriptor or file behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from certs import PASSWORD, USERNAME, Pki, TlsBroker, pki  # noqa: F401 (fixture)
from conftest import REPO, children_of, free_port, write_config

OPENSSL_MAPS = ("libssl", "libcrypto", "/_ssl.", "/_hashlib.")
ONLINE_TIMEOUT_S = 30
DEBIAN_PYTHON = "/usr/bin/python3"


def openssl_mappings(pid: int, names=OPENSSL_MAPS) -> list[str]:
    text = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in text.splitlines()
                   if any(name in line for name in names)})


def wait_status(sock: socket.socket, wanted: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536).decode(errors="replace")
        except socket.timeout:
            return False
        if any(line.startswith("STATUS=" + wanted) for line in data.splitlines()):
            return True
    return False


def test_without_tls_no_process_loads_openssl_and_the_page_is_built_on_request(
        tmp_path, mosquitto, agent_factory):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    status_port = free_port()
    agent = agent_factory(write_config(tmp_path, mosquitto.port, status_port), status_port,
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        agent.log = open(agent.log_path, "ab")
        agent.proc = subprocess.Popen(
            [sys.executable, "-m", "c8ysim", "run", "--config", str(agent.config)], cwd=REPO,
            env=agent.env, stdout=agent.log, stderr=subprocess.STDOUT, start_new_session=True)
        # online, told the way systemd is told: no request to the status page yet
        assert wait_status(notify, "3/3 devices online", ONLINE_TIMEOUT_S), agent.log_text()
        children = children_of(agent.proc.pid)
        assert len(children) == 3
        # no TLS library at all, nor libcrypto (hashlib)
        for pid in [agent.proc.pid, *children]:
            assert openssl_mappings(pid) == [], pid
        # the first request builds the app (bottle comes with it) and is answered
        assert agent.get("/healthz") == 200
        assert {d["name"] for d in json.loads(agent.get("/api/status"))["devices"]} == {
            "pv-roof", "heatpump", "grid-meter"}
        for pid in children:  # the children never import it
            assert openssl_mappings(pid) == [], pid
    finally:
        notify.close()


TRANSPORT_SCRIPT = textwrap.dedent("""
    import queue, sys, time
    import c8ysim.uplink.transport as t
    deferred = ("ssl", "_ssl", "hashlib", "_hashlib", "urllib.request")
    loaded = [m for m in deferred if m in sys.modules]
    assert not loaded, loaded

    def exchange(endpoint):
        events = queue.SimpleQueue()
        connection = t.Connection(endpoint, events, 1, 24)
        connection.start()
        deadline = time.monotonic() + 10
        mid = None
        while time.monotonic() < deadline:
            event = events.get(timeout=deadline - time.monotonic())
            if isinstance(event, t.Connected):
                assert event.ok, event
                mid = connection.publish("s/us", b"400,c8y_Test,hi")
            elif isinstance(event, t.Published) and event.mid == mid:
                connection.close()
                return
            elif not isinstance(event, t.Published):
                raise AssertionError(event)
        raise AssertionError("no PUBACK")

    plain_port, tls_port, ca, user, password = sys.argv[1:6]
    exchange(t.Endpoint("127.0.0.1", int(plain_port), "plain", user, password, 30))
    loaded = [m for m in ("ssl", "_ssl") if m in sys.modules]
    assert not loaded, loaded
    exchange(t.Endpoint("localhost", int(tls_port), "tls", user, password, 30, ca_file=ca,
                        tls=True))
    assert "ssl" in sys.modules
    print(t.mqtt.__name__, "PAHO_2" if t.PAHO_2 else "paho 1")
""")


def interpreters() -> list:
    found = [pytest.param([sys.executable], id="venv")]
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import paho.mqtt.client"],
                           capture_output=True) if os.path.exists(DEBIAN_PYTHON) else None
    if probe is not None and probe.returncode == 0:
        found.append(pytest.param([DEBIAN_PYTHON, "-s"], id="debian-python3"))
    return found


@pytest.mark.parametrize("python", interpreters())
def test_the_transport_publishes_without_openssl_and_connects_with_tls(tmp_path, pki,  # noqa: F811
                                                                       python):
    broker = TlsBroker(tmp_path, pki).start()
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if python[0] == DEBIAN_PYTHON:
            env.pop("VIRTUAL_ENV", None)
        done = subprocess.run(
            [*python, "-c", TRANSPORT_SCRIPT, str(broker.port), str(broker.tls_port),
             str(pki.ca.cert), USERNAME, PASSWORD], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr + broker.log_text()
    finally:
        broker.stop()


def test_the_deferred_app_is_built_by_its_first_request():
    from c8ysim.status.deferred import DeferredApp

    app = DeferredApp(lambda: {"agent": {}, "devices": []}, lambda: True)
    assert not app.built
    answers = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "QUERY_STRING": "",
                         "SERVER_NAME": "x", "SERVER_PORT": "1", "wsgi.url_scheme": "http"},
                        lambda status, headers, exc_info=None: answers.append(status)))
    assert app.built and answers == ["200 OK"] and body == b"ok\n"


WARM_UP_SCRIPT = textwrap.dedent("""
    import os, sys, tempfile, threading
    from c8ysim import config, warmup
    cfg = config.load(sys.argv[1])
    before = sorted(os.listdir("/proc/self/fd"))
    scratch = set(os.listdir(tempfile.gettempdir()))
    warmup.warm_up(cfg)
    assert threading.active_count() == 1, threading.enumerate()
    assert sorted(os.listdir("/proc/self/fd")) == before
    left = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("c8ysim-warmup-")}
    assert not left - scratch, left
    assert not os.path.exists(cfg.storage.path), "the warm-up wrote into the state directory"
    print("ok")
""")


def test_the_warm_up_leaves_nothing_open_behind(tmp_path):
    config = write_config(tmp_path, free_port(), free_port())
    done = subprocess.run([sys.executable, "-c", WARM_UP_SCRIPT, str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
