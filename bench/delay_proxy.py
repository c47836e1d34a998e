"""A loopback TCP proxy that delays every byte by half a round trip in each direction.

Benchmark-only: it makes a local broker look as far away as a real tenant (e.g. 50 ms RTT)
without touching the machine's network settings (tc/netem would slow everyone down).
Per connection and direction one thread reads and one thread delivers when a chunk is due.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

CHUNK_BYTES = 65536


class DelayProxy:
    def __init__(self, upstream_port: int, rtt_s: float):
        self.upstream_port, self.one_way_s = upstream_port, rtt_s / 2.0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, server)
            self._pipe(server, client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        due: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(source, due), daemon=True).start()
        threading.Thread(target=self._deliver, args=(sink, due), daemon=True).start()

    def _read(self, source: socket.socket, due: queue.SimpleQueue) -> None:
        while True:
            try:
                data = source.recv(CHUNK_BYTES)
            except OSError:
                data = b""
            due.put((time.monotonic() + self.one_way_s, data))
            if not data:
                return

    def _deliver(self, sink: socket.socket, due: queue.SimpleQueue) -> None:
        while True:
            at, data = due.get()
            time.sleep(max(0.0, at - time.monotonic()))
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return
