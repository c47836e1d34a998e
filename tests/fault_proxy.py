"""A TCP proxy on loopback for network faults: cut connections (RST) or blackhole them.

Test-only. Each accepted connection gets an upstream connection and two pump threads.
`cut()` resets every live connection with SO_LINGER 0; `blackhole(True)` keeps the sockets
open but stops forwarding (a silent network), and `refuse(True)` closes new connections
at once.
"""

from __future__ import annotations

import socket
import struct
import threading

BUFFER_BYTES = 65536


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.blackholed = self.refusing = False
        self.accepted = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.refusing:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self.lock:
                self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(BUFFER_BYTES)
                if not data:
                    break
                if not self.blackholed:
                    sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            _close(sock)

    def cut(self) -> int:
        """Reset every live connection; returns how many were cut."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for client, server in pairs:
            _reset(client)
            _reset(server)
        return len(pairs)

    def blackhole(self, on: bool) -> None:
        self.blackholed = on

    def refuse(self, on: bool) -> None:
        self.refusing = on

    def close(self) -> None:
        self.running = False
        _close(self.listener)
        self.cut()
        self.thread.join(2)


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
    except OSError:
        pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
