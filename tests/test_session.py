"""The session in-process against a real mosquitto: backoff bounds, reconnect after cuts,
no leaked threads, sockets or memory over many cuts, nothing lost or reordered."""

from __future__ import annotations

import gc
import os
import queue
import subprocess
import random
import threading
import time
import tracemalloc

import pytest

from agent import backoff
from agent.config import StorageConfig
from agent.storage import open_buffer
from agent.uplink.pacing import TokenBucket
from agent.uplink.session import Registration, Session
from agent.uplink.transport import Endpoint
from conftest import wait_until
from fault_proxy import FaultProxy

NOT_OURS = [tracemalloc.Filter(False, pattern) for pattern in (
    "*/tests/*", "*/_pytest/*", "*/logging/*", "*/threading.py", "*/tracemalloc.py")]
REGISTRATION = Registration("dev", "c8ysim_Test", "dev-1", "test", "0", ("c8y_Restart",), 10)


@pytest.mark.parametrize("failures", range(1, 15))
def test_full_jitter_stays_within_its_ceiling_and_cap(failures):
    rng = random.Random(failures)
    ceiling = min(300.0, 2.0 ** (failures - 1))
    delays = [backoff.full_jitter(failures, 1.0, 300.0, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # really jittered


def test_auth_backoff_is_near_the_cap():
    rng = random.Random(1)
    delays = [backoff.near_cap(300.0, rng) for _ in range(1000)]
    assert all(150.0 <= d <= 300.0 for d in delays)


class Driver:
    """Runs a Session the way the device loop does, in this thread."""

    def __init__(self, tmp_path, port: int, cap_s: float = 0.05):
        self.buffer = open_buffer(StorageConfig(path=str(tmp_path)), "dev")
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        endpoint = Endpoint("127.0.0.1", port, "dev-1", "t/u", "p", 10)
        self.session = Session(endpoint, REGISTRATION, self.buffer, self.events, cap_s,
                               random.Random(7))

    def run_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.session.poll(time.monotonic())
            try:
                event = self.events.get(timeout=0.01)
                self.session.handle(event, time.monotonic())
            except queue.Empty:
                pass
            if predicate():
                return
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        self.session.close()
        self.buffer.close()


def agent_threads() -> int:
    """Threads not belonging to the test's own proxy and recorder."""
    return sum(1 for t in threading.enumerate()
               if "_pump" not in t.name and "_accept_loop" not in t.name
               and "recorder" not in t.name)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_200_cuts_reconnect_every_time_without_leaks_or_loss(tmp_path, mosquitto):
    # The subscriber runs as its own process so that only the agent's side is measured.
    received = tmp_path / "received.txt"
    recorder = subprocess.Popen(["mosquitto_sub", "-p", str(mosquitto.port), "-t", "s/us",
                                 "-q", "1"], stdout=open(received, "wb"))
    proxy = FaultProxy(mosquitto.port)
    driver = Driver(tmp_path, proxy.port)
    try:
        time.sleep(0.3)
        online = lambda: driver.session.state == "online"  # noqa: E731
        driver.run_until(online, 10, "first connection")
        gc.collect()
        threads, fds = agent_threads(), open_fds()
        tracemalloc.start()
        baseline = tracemalloc.take_snapshot()
        for cut in range(200):
            driver.buffer.put_many([("s/us", f"211,{cut}".encode(), time.time())])
            assert proxy.cut() >= 1
            driver.run_until(lambda: driver.session.state == "disconnected", 5, "the cut")
            driver.run_until(online, 10, f"reconnect #{cut + 1}")
        driver.run_until(lambda: driver.buffer.stats(time.time()).depth == 0, 10, "drain")
        gc.collect()
        diffs = tracemalloc.take_snapshot().filter_traces(NOT_OURS).compare_to(
            baseline.filter_traces(NOT_OURS), "filename")
        grown = sum(s.size_diff for s in diffs)
        tracemalloc.stop()
        assert agent_threads() == threads, threading.enumerate()
        time.sleep(0.2)  # let the proxy's pumps close their sockets
        assert open_fds() <= fds + 4
        assert grown < 200_000, f"{grown} bytes more after 200 reconnects: {diffs[:5]}"
        assert driver.session.reconnects == 200
        lines = lambda: [l for l in received.read_text().splitlines() if l.startswith("211,")]  # noqa: E731
        wait_until(lambda: len(lines()) >= 200, 10, what="every reading at the subscriber")
        values = [int(line.split(",")[1]) for line in lines()]
        assert sorted(set(values)) == list(range(200))  # none lost (duplicates allowed)
        first_seen = list(dict.fromkeys(values))
        assert first_seen == sorted(first_seen)  # in order
    finally:
        driver.close()
        proxy.close()
        recorder.terminate()
        recorder.wait(5)


def test_blackholed_connection_is_given_up_and_retried(tmp_path, mosquitto):
    proxy = FaultProxy(mosquitto.port)
    driver = Driver(tmp_path, proxy.port)
    driver.session.endpoint = Endpoint("127.0.0.1", proxy.port, "dev-1", "t/u", "p", 5)
    try:
        driver.run_until(lambda: driver.session.state == "online", 10, "online")
        proxy.blackhole(True)
        started = time.monotonic()
        driver.run_until(lambda: driver.session.state == "disconnected", 15, "keepalive timeout")
        assert time.monotonic() - started < 12  # 1.5 x keepalive, plus slack
        proxy.blackhole(False)
        driver.run_until(lambda: driver.session.state == "online", 15, "back online")
    finally:
        driver.close()
        proxy.close()


def test_oversized_record_is_quarantined_and_the_rest_flows(tmp_path, mosquitto):
    received = tmp_path / "received.txt"
    subscriber = subprocess.Popen(["mosquitto_sub", "-p", str(mosquitto.port), "-t", "s/us",
                                   "-q", "1"], stdout=open(received, "wb"))
    driver = Driver(tmp_path, mosquitto.port)
    try:
        time.sleep(0.3)
        now = time.time()
        driver.buffer.put_many([("s/us", b"211,1", now), ("s/us", b"x" * 17000, now),
                                ("s/us", b"211,2", now)])
        driver.run_until(lambda: driver.buffer.stats(time.time()).depth == 0, 10, "drain")
        stats = driver.buffer.stats(time.time())
        assert stats.quarantined == 1
        wait_until(lambda: "211,2" in received.read_text(), 5, what="the row after it")
        assert "xxxx" not in received.read_text()
    finally:
        driver.close()
        subscriber.terminate()
        subscriber.wait(5)


def test_token_bucket_paces_lines():
    bucket = TokenBucket(100.0, now=0.0)
    assert bucket.available(0.0) == 100
    bucket.take(100, 0.0)
    assert bucket.available(0.0) == 0 and bucket.wait_s(0.0) == pytest.approx(0.01)
    assert bucket.available(0.5) == 50
    assert bucket.available(10.0) == 100  # the burst never exceeds one second's worth


def test_drain_keeps_to_max_lines_per_s(tmp_path, mosquitto):
    driver = Driver(tmp_path, mosquitto.port)
    driver.session.pace = TokenBucket(100.0, time.monotonic())
    try:
        driver.run_until(lambda: driver.session.state == "online", 10, "online")
        driver.buffer.put_many([("s/us", f"211,{i}".encode(), time.time()) for i in range(300)])
        started = time.monotonic()
        driver.run_until(lambda: driver.buffer.stats(time.time()).depth == 0, 20, "drain")
        assert time.monotonic() - started >= 1.5  # 300 lines, 100 of them as the burst
    finally:
        driver.close()
