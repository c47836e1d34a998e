"""Status page latency under load: the real agent, N concurrent clients, idle sockets.

Prints median and 99th percentile of `GET /` and `GET /api/status` answered by the
supervisor's own loop, alone and with CLIENTS concurrent clients plus IDLE idle connections
holding slots, and the ratio loaded/alone (the machine is shared: read the ratio). No
assertions: `make bench` prints the figures. Each client and idle connection comes from its
own loopback address (127.0.1.x, 127.0.2.x), as users on a network would: the server holds at
most MAX_CLIENTS_PER_PEER connections of one address and drops the oldest beyond that.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
import http.client
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Agent, Mosquitto, free_port, wait_until, write_config  # noqa: E402
from doc_sections import STATUS_HEADING, replace_section  # noqa: E402


def timed_get(url: str, source: str = "127.0.0.1") -> float:
    """Milliseconds for one GET of `url` on a new connection from `source`."""
    parts = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10,
                                            source_address=(source, 0))
    try:
        connection.request("GET", parts.path)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise OSError(f"status {response.status}")
    finally:
        connection.close()
    return (time.perf_counter() - started) * 1000


def run_clients(url: str, clients: int, requests: int) -> tuple[list[float], int]:
    """The times of the answered requests, and how many failed."""
    times: list[float] = []
    failed = [0]
    lock = threading.Lock()

    def client(source: str):
        mine, lost = [], 0
        for _ in range(requests):
            try:
                mine.append(timed_get(url, source))
            except OSError:
                lost += 1
        with lock:
            times.extend(mine)
            failed[0] += lost

    threads = [threading.Thread(target=client, args=(f"127.0.1.{i + 1}",))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return times, failed[0]


def median_p99(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def describe(times: list[float]) -> str:
    median, p99 = median_p99(times)
    return f"median {median:6.1f} ms  p99 {p99:6.1f} ms  (n={len(times)})"


def doc_lines(args, rows: list[tuple[str, list[float], list[float], int]],
              healthy: bool) -> list[str]:
    """The performance.md section: what ran, one table row per path."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"From `make bench-status` (`bench/bench_status.py`), {stamp}: the real agent with",
             "3 devices; the page is answered by the supervisor's own selectors loop.", "",
             f"| request | alone (median / p99) | {args.clients} concurrent clients + "
             f"{args.idle} idle connections (median / p99) | ratio |", "|---|---|---|---|"]
    for path, alone, loaded, failed in rows:
        (a_med, a_p99), (l_med, l_p99) = median_p99(alone), median_p99(loaded)
        answered = (f"all {len(loaded)} answered" if not failed
                    else f"{failed} of {len(loaded) + failed} failed")
        lines.append(f"| `GET {path}` | {a_med:.1f} / {a_p99:.1f} ms | {l_med:.1f} / "
                     f"{l_p99:.1f} ms ({answered}) | {l_med / a_med:.1f}× |")
    lines += ["", f"The loop answers one request at a time, so {args.clients} clients queue "
              "behind each other; afterwards `/healthz` answered "
              f"{'200: the watchdog and heartbeats kept going' if healthy else 'NOT 200'}."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--idle", type=int, default=8, help="idle connections held open")
    parser.add_argument("--doc", help="replace the status section of this file "
                                      "(docs/performance.md)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="c8ysim-bench-status-"))
    broker = Mosquitto(work).start()
    status_port = free_port()
    agent = Agent(write_config(work, broker.port, status_port, interval_s=1), status_port)
    try:
        agent.start()
        wait_until(lambda: all(d["connected"] for d in agent.devices().values()), 20,
                   what="devices online")
        time.sleep(3)
        base = f"http://127.0.0.1:{status_port}"
        print(f"status page latency, 3 devices, {args.clients} clients x {args.requests} "
              f"requests, {args.idle} idle connections")
        rows = []
        for path in ("/", "/api/status"):
            alone = [timed_get(base + path) for _ in range(50)]
            idle = [socket.create_connection(("127.0.0.1", status_port),
                                             source_address=(f"127.0.2.{i + 1}", 0))
                    for i in range(args.idle)]
            loaded, failed = run_clients(base + path, args.clients, args.requests)
            for sock in idle:
                sock.close()
            print(f"  GET {path:<12} alone:  {describe(alone)}")
            print(f"  GET {path:<12} loaded: {describe(loaded)}  "
                  f"ratio {statistics.median(loaded) / statistics.median(alone):.1f}x, "
                  f"{failed} failed")
            rows.append((path, alone, loaded, failed))
        healthy = agent.get('/healthz') == 200
        print(f"  agent still healthy: {healthy}")
        if args.doc:
            replace_section(Path(args.doc), STATUS_HEADING, doc_lines(args, rows, healthy))
            print(f"  wrote the status section of {args.doc}")
    finally:
        agent.cleanup()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
