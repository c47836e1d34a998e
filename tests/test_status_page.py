"""The status page: JSON shape, HTML, health, and a stalled client never blocking the loop."""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request

from agent.http import build_app
from agent.status_server import StatusServer

VIEW = {"agent": {"version": "0.1.0", "uplink": "localhost:1883", "config": "/etc/c8ysim.yaml"},
        "devices": [{"name": "pv-<roof>", "type": "pv", "state": "running", "connected": True,
                     "queued": 3, "sent": 7, "last_reading": {"time": 1.0, "x.voltage": 230}}]}


class LoopThread:
    """Runs a selectors loop like the supervisor's, counting its turns."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.server = StatusServer(build_app(lambda: VIEW, lambda: True), "127.0.0.1", 0,
                                   self.selector)
        self.turns, self.running = 0, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            for key, _ in self.selector.select(0.05):
                key.data()
            self.server.expire(time.monotonic())
            self.turns += 1

    def get(self, path: str):
        url = f"http://127.0.0.1:{self.server.port}{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.headers, response.read()

    def close(self):
        self.running = False
        self.thread.join(2)
        self.server.close()


def test_api_status_html_and_health():
    loop = LoopThread()
    try:
        status, headers, body = loop.get("/api/status")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == VIEW
        status, headers, body = loop.get("/")
        assert status == 200 and b"pv-&lt;roof&gt;" in body and b"<table>" in body
        assert loop.get("/healthz")[0] == 200
    finally:
        loop.close()


def test_idle_and_slow_clients_do_not_stall_the_loop():
    loop = LoopThread()
    idle = [socket.create_connection(("127.0.0.1", loop.server.port)) for _ in range(5)]
    try:
        idle[0].sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")  # never finishes
        turns = loop.turns
        started = time.monotonic()
        assert loop.get("/healthz")[0] == 200
        assert time.monotonic() - started < 0.5
        time.sleep(0.3)
        assert loop.turns > turns + 3
    finally:
        for sock in idle:
            sock.close()
        loop.close()


def test_unknown_path_is_404_and_garbage_is_400():
    loop = LoopThread()
    try:
        try:
            loop.get("/nope")
            raise AssertionError("expected 404")
        except urllib.error.HTTPError as error:
            assert error.code == 404
        with socket.create_connection(("127.0.0.1", loop.server.port), timeout=2) as sock:
            sock.sendall(b"\x00\x01garbage\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.0 400")
    finally:
        loop.close()
