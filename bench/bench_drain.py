"""Drain benchmark: how fast a backlog leaves the buffer through the real Session.

Fills a buffer with N SmartREST 201 lines of ~200 bytes, drains it with
`c8ysim.uplink.session.Session` to a private mosquitto (rows leave the store on PUBACK only),
and in the same run measures a bare paho QoS 1 publisher sending the same lines one per
message with an in-flight window of 20. Prints rows/s for both and the ratio, per backend
(SQLite, PostgreSQL). `--rtt-ms 50` puts a delay proxy in front of the broker, as far away
as a real tenant. Figures only, no asserts: the machine is shared.

    .venv/bin/python bench/bench_drain.py [--rows 100000] [--backends sqlite,postgres]
                                          [--rtt-ms 0] [--repeat 1] [--verify]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import paho.mqtt.client as mqtt  # noqa: E402

from c8ysim.config import StorageConfig  # noqa: E402
from c8ysim.storage import open_buffer  # noqa: E402
from c8ysim.uplink.session import Registration, Session  # noqa: E402
from c8ysim.uplink.transport import Endpoint  # noqa: E402
from conftest import Mosquitto, Recorder, wait_until  # noqa: E402
from delay_proxy import DelayProxy  # noqa: E402
from storage_support import PG_DSN_ENV, ExternalPg, PgCluster, pg_bindir  # noqa: E402

LINE_BYTES = 200
WINDOW_PUBLISHES = 20  # the bare publisher's in-flight window (the Session's is the same)
FILL_ROWS_PER_PUT = 1_000
DRAIN_TIMEOUT_S = 900.0
EVENT_WAIT_S = 0.05
BARE_ROWS_WITH_RTT = 5_000  # one publish per row at 50 ms RTT is slow: fewer rows suffice


def smartrest_line(i: int) -> bytes:
    line = (f"201,c8y_PvInverter,2025-06-01T12:{i // 60 % 60:02d}:{i % 60:02d}.000Z,"
            f"c8y_ACPower,P,{1000 + i % 500}.5,W,c8y_Energy,E,{i}.25,kWh,"
            f"c8y_Voltage,L1,230.{i % 10},V,c8y_Frequency,f,50.0{i % 9},Hz,c8y_Pad,p,")
    return line.ljust(LINE_BYTES, "0").encode()


def fill(buffer, rows: int) -> float:
    """Put `rows` lines in; returns rows/s (batches of FILL_ROWS_PER_PUT per transaction)."""
    start = time.perf_counter()
    for first in range(0, rows, FILL_ROWS_PER_PUT):
        now = time.time()
        buffer.put_many([("s/us", smartrest_line(i), now)
                         for i in range(first, min(rows, first + FILL_ROWS_PER_PUT))])
    return rows / (time.perf_counter() - start)


def drain_with_session(buffer, port: int, rows: int) -> float:
    """Rows/s from the moment the session is online until every row was acknowledged."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    endpoint = Endpoint(host="127.0.0.1", port=port, client_id=f"bench-{os.getpid()}",
                        username=None, password=None, keepalive_s=60)
    registration = Registration(name="bench", type="c8ysim_Bench", serial="bench",
                                model="bench", revision="0",
                                supported_operations=("c8y_Restart",), required_interval_min=10)
    session = Session(endpoint, registration, buffer, events, 5.0, random.Random(1))
    online_at, deadline = None, time.monotonic() + DRAIN_TIMEOUT_S
    while session.sent < rows and time.monotonic() < deadline:
        session.poll(time.monotonic())
        try:
            session.handle(events.get(timeout=EVENT_WAIT_S), time.monotonic())
        except queue.Empty:
            continue
        if online_at is None and session.state == "online":
            online_at = time.perf_counter()
    elapsed = time.perf_counter() - online_at
    session.close()
    assert buffer.stats(time.time()).depth == 0, "the drain did not finish"
    return rows / elapsed


def bare_paho(port: int, rows: int) -> float:
    """One row per QoS 1 publish, at most WINDOW_PUBLISHES unacknowledged; rows/s."""
    payloads = [smartrest_line(i) for i in range(rows)]
    window, done, acked = threading.Semaphore(WINDOW_PUBLISHES), threading.Event(), [0]

    def on_publish(*_args) -> None:
        acked[0] += 1
        window.release()
        if acked[0] == rows:
            done.set()
    client = _client("bare-paho")
    client.on_publish = on_publish
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    wait_until(client.is_connected, 10, what="paho to connect")
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as ours does
    start = time.perf_counter()
    for payload in payloads:
        window.acquire()
        client.publish("s/us", payload, qos=1)
    done.wait(DRAIN_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return rows / elapsed


def _client(client_id: str):
    kwargs = dict(client_id=client_id, protocol=mqtt.MQTTv311)
    if hasattr(mqtt, "CallbackAPIVersion"):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    else:
        client = mqtt.Client(**kwargs)
    client.max_inflight_messages_set(WINDOW_PUBLISHES)
    return client


def storage_for(backend: str, workdir: Path, pg) -> StorageConfig:
    big = dict(max_records=10**8, max_age_hours=10**6)
    if backend == "postgres":
        return StorageConfig(backend="postgres", dsn=pg.dsn, path=str(workdir / "fb"), **big)
    return StorageConfig(path=str(workdir / backend), **big)


def start_postgres():
    if os.environ.get(PG_DSN_ENV):
        return ExternalPg(os.environ[PG_DSN_ENV])
    if pg_bindir() is None:
        sys.exit("no PostgreSQL: run `make storage-deps` or pass --backends sqlite")
    return PgCluster(pg_bindir(), fast=False).init().start()  # default durability


def run(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="c8ysim-bench-"))
    broker = Mosquitto(workdir).start()
    proxy = DelayProxy(broker.port, args.rtt_ms / 1000.0) if args.rtt_ms else None
    port = proxy.port if proxy else broker.port
    pg = start_postgres() if "postgres" in args.backends else None
    recorder = Recorder(broker.port) if args.verify else None
    try:
        _report(args, port, workdir, pg, recorder)
    finally:
        for thing in (recorder, proxy, pg):
            if thing is not None:
                (thing.destroy if hasattr(thing, "destroy") else thing.close)()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _report(args, port: int, workdir: Path, pg, recorder) -> None:
    bare_rows = min(args.rows, BARE_ROWS_WITH_RTT) if args.rtt_ms else args.rows
    print(f"c8ysim drain benchmark: {args.rows} rows of {LINE_BYTES} bytes, window "
          f"{WINDOW_PUBLISHES}, RTT +{args.rtt_ms:g} ms, load average "
          f"{os.getloadavg()[0]:.1f}, median of {args.repeat}")
    bare = statistics.median(bare_paho(port, bare_rows) for _ in range(args.repeat))
    print(f"  bare paho, QoS 1, one row per publish ({bare_rows} rows): {bare:10,.0f} rows/s")
    for backend in args.backends:
        fills, drains = [], []
        for attempt in range(args.repeat):
            buffer = open_buffer(storage_for(backend, workdir / f"{backend}{attempt}", pg),
                                 f"bench-{backend}-{attempt}-{os.getpid()}")
            fills.append(fill(buffer, args.rows))
            drains.append(drain_with_session(buffer, port, args.rows))
            buffer.close()
        ours = statistics.median(drains)
        print(f"  Session drain from {backend:8s} (fill {statistics.median(fills):9,.0f} rows/s)"
              f": {ours:10,.0f} rows/s = {ours / bare:5.1f} x bare paho")
    if recorder is not None:
        _verify(recorder, args, bare_rows)


def _verify(recorder, args, bare_rows: int) -> None:
    expected = bare_rows * args.repeat + args.rows * args.repeat * len(args.backends)
    wait_until(lambda: len(recorder.lines()) >= expected, 60, what="every line to arrive")
    print(f"  verified: {len(recorder.lines())} lines arrived at a subscriber")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgres",
                        type=lambda s: [b for b in s.split(",") if b])
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--verify", action="store_true",
                        help="count every line at a subscriber (costs CPU on both sides)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
