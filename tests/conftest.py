"""Shared fixtures: a private mosquitto on a free loopback port, and the agent as a process.

Everything started here is stopped at teardown, also when a test fails or times out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """A private broker; `extra` lines are appended to its config (TLS, auth, ...)."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "",
                 persistent: bool = False):
        self.workdir, self.port = workdir, port or free_port()
        self.extra, self.persistent = extra, persistent
        self.proc: subprocess.Popen | None = None
        self.conf = workdir / f"mosquitto-{self.port}.conf"

    def start(self) -> "Mosquitto":
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.conf.write_text(textwrap.dedent(f"""\
            listener {self.port} 127.0.0.1
            allow_anonymous true
            max_queued_messages 0
            persistence {"true" if self.persistent else "false"}
            persistence_location {self.workdir}/
            user root
            log_dest stderr
            log_type error
            log_type warning
            """) + self.extra)
        self.log = open(self.workdir / f"mosquitto-{self.port}.log", "ab")
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_until(lambda: port_open(self.port) or self.proc.poll() is not None,
                   START_TIMEOUT_S, what="mosquitto to listen")
        assert self.proc.poll() is None, (self.workdir / f"mosquitto-{self.port}.log").read_text()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()


class Recorder:
    """A real MQTT subscriber that keeps every message it sees, in arrival order."""

    def __init__(self, port: int, topics=("s/us",), persistent: bool = False):
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        args = dict(client_id="recorder", clean_session=not persistent)
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **args)
        else:
            self.client = mqtt.Client(**args)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: [c.subscribe(t, 1) for t in topics]
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()

    def _on_message(self, _client, _userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload))

    def lines(self) -> list[str]:
        with self.lock:
            payloads = [p for _t, p in self.messages]
        return [line for p in payloads for line in p.decode().split("\n") if line]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def recorder(mosquitto):
    rec = Recorder(mosquitto.port)
    wait_until(lambda: rec.client.is_connected(), 5, what="recorder to connect")
    time.sleep(0.2)  # let the SUBACK arrive before the agent publishes
    yield rec
    rec.close()


def write_config(directory: Path, broker_port: int, status_port: int,
                 interval_s: float = 0.5, devices=None, extra: str = "") -> Path:
    devices = devices or [("pv-roof", "pv"), ("heatpump", "heatpump"), ("grid-meter", "grid")]
    device_lines = "".join(  # explicit IDs: the default ones carry this machine's ID
        f"  - {{name: {name}, type: {kind}, interval_s: {interval_s}, "
        f"external_id: c8ysim-{name}}}\n" for name, kind in devices)
    path = directory / "c8ysim.yaml"
    path.write_text(
        "site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin, seed: 1}\n"
        f"cumulocity: {{host: 127.0.0.1, port: {broker_port}, tenant: t1, user: u, "
        "password: secret, reconnect_max_s: 2}\n"
        f"storage: {{path: {directory / 'state'}}}\n"
        f"status: {{listen: '127.0.0.1:{status_port}'}}\n"
        f"{extra}"
        "devices:\n" + device_lines)
    path.chmod(0o600)  # as installed (0640 root:c8ysim): it holds a password
    return path


class Agent:
    """`python -m c8ysim run` as a real process tree, in its own session for cleanup."""

    def __init__(self, config: Path, status_port: int, env: dict | None = None):
        self.config, self.status_port = config, status_port
        self.log_path = config.parent / "agent.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Agent":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "c8ysim", "run", "--config", str(self.config)],
            cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_until(lambda: self.proc.poll() is not None or self.get("/healthz") == 200,
                   START_TIMEOUT_S, what="the status page")
        assert self.proc.poll() is None, self.log_text()
        return self

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}{path}",
                                        timeout=2) as response:
                return response.status if path == "/healthz" else response.read()
        except (urllib.error.URLError, OSError):
            return None

    def status(self) -> dict:
        body = self.get("/api/status")
        assert body is not None, "status page did not answer"
        return json.loads(body)

    def devices(self) -> dict:
        return {d["name"]: d for d in self.status()["devices"]}

    def child_pids(self) -> list[int]:
        return children_of(self.proc.pid)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@pytest.fixture
def agent_factory(tmp_path):
    agents: list[Agent] = []

    def make(config: Path, status_port: int, env: dict | None = None) -> Agent:
        agent = Agent(config, status_port, env)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.cleanup()


RUNTIME_MODULES = ("paho", "bottle", "yaml", "sdnotify")


@pytest.fixture(scope="session")
def other_user_python(tmp_path_factory):
    """(argv prefix, env) to run `python -m c8ysim` (or `-c`) as another user (nobody): the
    checkout and its venv may sit in a directory only root can enter (a CI clone in a 0700
    temp dir), so the agent and its runtime libraries are copied to a world-readable place
    and run by the real interpreter."""
    import importlib
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="c8ysim-foreign-"))
    base.chmod(0o755)
    shutil.copytree(REPO / "c8ysim", base / "c8ysim",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in RUNTIME_MODULES:
        origin = Path(importlib.import_module(name).__file__)
        source = origin.parent if origin.name == "__init__.py" else origin
        target = base / source.name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {**os.environ, "PYTHONPATH": str(base), "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"}
    yield [os.path.realpath(sys.executable), "-s"], env
    shutil.rmtree(base, ignore_errors=True)
