"""The session in-process against a real mosquitto: backoff bounds, reconnect after cuts,
no leaked threads, sockets or memory over many cuts, nothing lost or reordered; poison rows
(also in the real agent, planted in its SQLite file) quarantined while the drain goes on;
what a broker that never answers CONNECT is reported as."""

from __future__ import annotations

import dataclasses
import gc
import os
import queue
import subprocess
import random
import re
import socket
import sqlite3
import threading
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c8ysim import backoff
from c8ysim.config import StorageConfig
from c8ysim.storage import open_buffer
from c8ysim.uplink.pacing import TokenBucket
from c8ysim.uplink.session import Registration, Session
from c8ysim.uplink import session, transport
from c8ysim.uplink.transport import Endpoint
from conftest import free_port, wait_until, write_config
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


def test_a_live_reading_is_published_after_one_read_of_the_buffer(tmp_path, mosquitto):
    # The turn that publishes a reading reads the buffer once: a read that found every row
    # is not repeated in the same turn (the next turn's read sees what others added). Its
    # PUBACK deletes the rows without a read: the poll after the events fills the window.
    driver = Driver(tmp_path, mosquitto.port)
    peeks = []
    real_peek = driver.buffer.peek
    driver.buffer.peek = lambda limit, after_id=0: peeks.append(after_id) or real_peek(
        limit, after_id)
    try:
        driver.run_until(lambda: driver.session.state == "online", 10, "the connection")
        driver.run_until(lambda: not driver.session.inflight, 5, "the registration's PUBACKs")
        for value in range(3):
            driver.buffer.put_many([("s/us", f"211,{value}".encode(), time.time())])
            peeks.clear()
            driver.session.poll(time.monotonic())
            assert len(peeks) == 1 and driver.session.inflight, (value, peeks)
            peeks.clear()
            while driver.session.inflight:
                driver.session.handle(driver.events.get(timeout=5), time.monotonic())
            assert driver.buffer.stats(time.time()).depth == 0 and not peeks, (value, peeks)
        peeks.clear()
        driver.session.poll(time.monotonic())
        assert len(peeks) == 1  # nothing in flight, nothing known: it still looks
    finally:
        driver.close()


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


def _subscribe(tmp_path, port: int):
    """mosquitto_sub on s/us writing to a file: (the file, the process)."""
    received = tmp_path / "received.txt"
    return received, subprocess.Popen(["mosquitto_sub", "-p", str(port), "-t", "s/us",
                                       "-q", "1"], stdout=open(received, "wb"))


def test_oversized_record_is_quarantined_and_the_rest_flows(tmp_path, mosquitto):
    received, subscriber = _subscribe(tmp_path, mosquitto.port)
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
    driver.session = Session(Endpoint("127.0.0.1", mosquitto.port, "dev-1", "t/u", "p", 10),
                             REGISTRATION, driver.buffer, driver.events, 0.05,
                             random.Random(7), max_lines_per_s=100.0, start_lines_per_s=100.0)
    try:
        driver.run_until(lambda: driver.session.state == "online", 10, "online")
        driver.buffer.put_many([("s/us", f"211,{i}".encode(), time.time()) for i in range(300)])
        started = time.monotonic()
        driver.run_until(lambda: driver.buffer.stats(time.time()).depth == 0, 20, "drain")
        assert time.monotonic() - started >= 1.5  # 300 lines, 100 of them as the burst
    finally:
        driver.close()


# --- poison rows ------------------------------------------------------------------------------

POISON = [  # (topic, payload) that no broker will ever take, as a careless tool could queue
    ("s/" + "x" * 70_000, b"211,long-topic"),  # paho: ValueError (over 65535 bytes)
    (b"s/\xff", b"211,bytes-topic"),  # not text (a BLOB in SQLite); not UTF-8 either
    ("s/us/+", b"211,wildcard"),
    ("s/us\x00", b"211,nul"),
    ("s/\x1b[31m", b"211,control"),  # mosquitto would close the connection on it
    ("", b"211,empty-topic"),
]


def test_poison_rows_planted_in_the_file_are_quarantined_and_the_rest_flows(
        tmp_path, mosquitto, recorder, agent_factory):
    state = tmp_path / "state"
    state.mkdir()
    buffer = open_buffer(StorageConfig(path=str(state)), "pv-roof")
    buffer.put_many([("s/us", b"211,before", time.time())])
    buffer.close()
    db = sqlite3.connect(state / "pv-roof.sqlite3")
    for topic, payload in [*POISON, ("s/us", b"211,after")]:
        db.execute("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                   (topic, payload, time.time()))
    db.commit()
    db.close()
    status_port = free_port()
    config = write_config(tmp_path, mosquitto.port, status_port, devices=[("pv-roof", "pv")],
                          extra="supervisor: {heartbeat_timeout_s: 3.0, kill_grace_s: 0.5}\n")
    agent = agent_factory(config, status_port).start()
    wait_until(lambda: "211,after" in recorder.lines(), 15, what="the row after the poison")
    wait_until(lambda: sum(l.startswith("201,") for l in recorder.lines()) >= 2, 10,  # noqa: E741
               what="live readings")
    lines = recorder.lines()
    assert lines.index("211,before") < lines.index("211,after")
    assert not [l for l in lines if l.split(",")[-1] in  # noqa: E741
                {p.decode().split(",")[1] for _t, p in POISON}]
    pv = lambda: {d["name"]: d for d in agent.status()["devices"]}["pv-roof"]  # noqa: E731
    wait_until(lambda: pv()["quarantined"] == len(POISON) and pv()["queued"] <= 1, 5,
               what=f"{len(POISON)} quarantined on /api/status")
    device = pv()
    assert device["restarts"] == 0 and device["state"] == "running", device
    log = agent.log_text().splitlines()
    assert all(re.match(r"<[0-7]>", line) for line in log), log
    assert any("quarantined 1 buffered record(s)" in line and "70002 bytes long" in line
               for line in log), log
    assert "Traceback" not in agent.log_text()
    assert agent.stop() == 0


def test_any_publish_error_quarantines_only_the_row_at_fault(tmp_path, mosquitto, monkeypatch):
    real_publish = transport.Connection.publish

    def publish(self, topic, payload, qos=1):
        if b"boom" in payload:
            raise RuntimeError("paho does not like this one")
        return real_publish(self, topic, payload, qos)

    monkeypatch.setattr(transport.Connection, "publish", publish)
    received, subscriber = _subscribe(tmp_path, mosquitto.port)
    driver = Driver(tmp_path, mosquitto.port)
    try:
        time.sleep(0.3)
        now = time.time()
        driver.buffer.put_many([("s/us", b"211,1", now), ("s/us", b"211,boom", now),
                                ("s/us", b"211,2", now)])  # one batch: split to find it
        driver.run_until(lambda: driver.buffer.stats(time.time()).depth == 0, 10, "drain")
        assert driver.buffer.stats(time.time()).quarantined == 1
        wait_until(lambda: "211,2" in received.read_text(), 5, what="the row after it")
        assert "211,1" in received.read_text() and "boom" not in received.read_text()
        assert driver.session.state == "online"
    finally:
        driver.close()
        subscriber.terminate()
        subscriber.wait(5)


# --- a broker that never answers CONNECT ------------------------------------------------------

class MuteServer:
    """Accepts TCP connections; then either says nothing or closes at once."""

    def __init__(self, close_at_once: bool):
        self.close_at_once = close_at_once
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="_accept_loop").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.close_at_once:
                conn.close()
            else:
                self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_no_connack_is_reported_as_a_timeout_not_as_tls(tmp_path):
    server = MuteServer(close_at_once=False)
    driver = Driver(tmp_path, server.port)
    driver.session.endpoint = Endpoint("127.0.0.1", server.port, "dev-1", "t/u", "p", 2)
    try:
        driver.run_until(lambda: driver.session.last_error, 10, "the attempt to fail")
        assert re.fullmatch(r"no CONNACK within [23] s \(.*\)", driver.session.last_error), \
            driver.session.last_error
        assert "TLS" not in driver.session.last_error
    finally:
        driver.close()
        server.close()


def test_connection_closed_right_after_connect_hints_at_tls(tmp_path):
    server = MuteServer(close_at_once=True)
    driver = Driver(tmp_path, server.port)
    try:
        driver.run_until(lambda: driver.session.last_error, 10, "the attempt to fail")
        assert "closed the connection right after connect" in driver.session.last_error
        assert "plain MQTT to a TLS port?" in driver.session.last_error
    finally:
        driver.close()
        server.close()


# --- packing publishes (pure) ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Row:
    id: int
    topic: str
    payload: bytes


def test_pack_is_greedy_keeps_order_and_splits_on_topic():
    rows = [Row(1, "s/us", b"aaaa"), Row(2, "s/us", b"bbb"), Row(3, "s/us", b"cc"),
            Row(4, "s/us", b"d" * 12), Row(5, "other", b"e"), Row(6, "s/us", b"f")]
    packed = [(topic, [r.id for r in batch]) for topic, batch in session.pack(rows, limit=8)]
    assert packed == [("s/us", [1, 2]), ("s/us", [3]), ("s/us", [4]), ("other", [5]),
                      ("s/us", [6])]
    assert list(session.pack([])) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["s/us", "t"]), st.binary(max_size=40)), max_size=40),
       st.integers(1, 120))
def test_pack_respects_the_limit_order_and_greed(items, limit):
    rows = [Row(i, topic, payload) for i, (topic, payload) in enumerate(items)]
    result = list(session.pack(rows, limit))
    assert [r for _, batch in result for r in batch] == rows
    for topic, batch in result:
        assert batch and all(r.topic == topic for r in batch)
        joined = b"\n".join(r.payload for r in batch)
        assert len(joined) <= limit or (len(batch) == 1 and len(batch[0].payload) > limit)
    for (topic, before), (next_topic, after) in zip(result, result[1:]):
        if topic == next_topic:  # greedy: the next row did not fit
            assert len(b"\n".join(r.payload for r in [*before, after[0]])) > limit


# --- the drain rate under throttling (reference §5) --------------------------------------------

def test_token_bucket_takes_a_new_rate_and_its_burst_at_once():
    bucket = TokenBucket(100.0, now=0.0)
    bucket.set_rate(10.0, 0.0)
    assert bucket.available(0.0) == 10  # the burst shrank with the rate
    bucket.take(10, 0.0)
    assert bucket.wait_s(0.0) == pytest.approx(0.1)
    bucket.set_rate(40.0, 0.5)
    assert bucket.available(0.5) == 5 and bucket.available(1.0) == 25


def test_a_cut_while_draining_halves_the_rate_a_cut_when_idle_does_not(tmp_path, mosquitto):
    """The disconnect halving (the backstop of pacing.DrainRate): a connection lost while a
    backlog drains halves the rate; on the next connection the PUBACK latency stays flat
    (a plain mosquitto), so the rate grows back to the ceiling; a cut with no backlog
    changes nothing."""
    proxy = FaultProxy(mosquitto.port)
    driver = Driver(tmp_path, proxy.port)
    driver.session = Session(Endpoint("127.0.0.1", proxy.port, "dev-1", "t/u", "p", 10),
                             REGISTRATION, driver.buffer, driver.events, 0.05,
                             random.Random(7), max_lines_per_s=200.0, start_lines_per_s=200.0)
    rate = lambda: driver.session.status()["drain_rate"]  # noqa: E731
    try:
        driver.run_until(lambda: driver.session.state == "online", 10, "online")
        driver.buffer.put_many([("s/us", f"211,{i}".encode(), time.time())
                                for i in range(3000)])
        driver.run_until(lambda: driver.session.sent >= 300, 10, "draining")
        assert driver.session.backlogged and rate() == 200.0
        proxy.cut()
        driver.run_until(lambda: driver.session.state == "disconnected", 5, "the cut")
        assert rate() == 100.0
        driver.run_until(lambda: driver.session.state == "online", 10, "back online")
        driver.run_until(lambda: rate() > 100.0, 5, "latency flat: growing again")
        driver.run_until(lambda: rate() == 200.0, 15, "back at the ceiling")
        driver.run_until(lambda: not driver.session.backlogged, 20, "caught up")
        proxy.cut()  # live traffic only: not the rate's fault
        driver.run_until(lambda: driver.session.state == "disconnected", 5, "the cut")
        assert rate() == 200.0
    finally:
        driver.close()
        proxy.close()


# --- s/e: a PUBACK is not acceptance (reference §3.4) -------------------------------------------

def test_error_lines_on_s_e_are_counted_but_41_100(tmp_path, mosquitto):
    import paho.mqtt.publish as publish
    driver = Driver(tmp_path, mosquitto.port)
    try:
        driver.run_until(lambda: driver.session.state == "online", 10, "online")
        for payload in ("41,100,Device already existing",
                        "40,999,No static template for this message id\n45,201,\"a, b\"",
                        "", "50,100,Error on device creation, message: Error on identity "
                        "creation"):
            publish.single("s/e", payload, qos=1, hostname="127.0.0.1", port=mosquitto.port)
        driver.run_until(lambda: driver.session.rejected == 3, 5, "three rejections")
        status = driver.session.status()
        assert [line for _when, line in status["rejections"]] == [
            "40,999,No static template for this message id", "45,201,a, b",
            "50,100,Error on device creation, message: Error on identity creation"]
        for payload in [f"40,{i},x" for i in range(10)]:
            publish.single("s/e", payload, qos=1, hostname="127.0.0.1", port=mosquitto.port)
        driver.run_until(lambda: driver.session.rejected == 13, 5, "ten more")
        assert [line for _w, line in driver.session.status()["rejections"]] == \
            [f"40,{i},x" for i in range(5, 10)]  # the last five
    finally:
        driver.close()


@pytest.mark.parametrize("auth_retry_max_s, low, high", [(None, 150.0, 300.0), (30.0, 15.0, 30.0)])
def test_refused_credentials_are_retried_near_the_auth_cap(tmp_path, auth_retry_max_s, low,
                                                           high):
    """Bad credentials wait near reconnect_max_s, or near auth_retry_max_s when the device
    has a registration to fall back to (it must see a few refusals within about a minute)."""
    from fake_tenant import FakeTenant

    with FakeTenant({"t/u": "p"}) as tenant:
        tenant.refuse_connects(4)
        driver = Driver(tmp_path, tenant.port)
        driver.session = Session(Endpoint("127.0.0.1", tenant.port, "dev-1", "t/u", "p", 10),
                                 REGISTRATION, driver.buffer, driver.events, 300.0,
                                 random.Random(7), auth_retry_max_s=auth_retry_max_s)
        driver.run_until(lambda: driver.session.auth_failed, 10, "the refusal")
        wait = driver.session.retry_at - time.monotonic()
        assert low - 1.0 <= wait <= high, wait
        driver.session.close()
        driver.buffer.close()
