"""Status page latency under load: the real agent, N concurrent clients, idle sockets.

Prints median and 99th percentile of `GET /` and `GET /api/status` answered by the
supervisor's own loop, alone and with CLIENTS concurrent clients plus IDLE idle connections
holding slots, and the ratio loaded/alone (the machine is shared: read the ratio). No
assertions: `make bench` prints the figures.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Agent, Mosquitto, free_port, wait_until, write_config  # noqa: E402


def timed_get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def run_clients(url: str, clients: int, requests: int) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()

    def client():
        mine = [timed_get(url) for _ in range(requests)]
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return times


def describe(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered):6.1f} ms  p99 {p99:6.1f} ms  (n={len(ordered)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--idle", type=int, default=8, help="idle connections held open")
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
        for path in ("/", "/api/status"):
            alone = [timed_get(base + path) for _ in range(50)]
            idle = [socket.create_connection(("127.0.0.1", status_port))
                    for _ in range(args.idle)]
            loaded = run_clients(base + path, args.clients, args.requests)
            for sock in idle:
                sock.close()
            print(f"  GET {path:<12} alone:  {describe(alone)}")
            print(f"  GET {path:<12} loaded: {describe(loaded)}  "
                  f"ratio {statistics.median(loaded) / statistics.median(alone):.1f}x")
        print(f"  agent still healthy: {agent.get('/healthz') == 200}")
    finally:
        agent.cleanup()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
