"""A tiny HTTP/1.0 server that runs a WSGI app inside the supervisor's selectors loop.

The supervisor must never wait on a client (its loop pets the systemd watchdog), so nothing
here blocks: sockets are non-blocking, a request is answered only once its headers are
complete, a client that dawdles past `CLIENT_TIMEOUT_S` is dropped, and every response closes
the connection. The app itself must be fast (it renders from memory).
"""

from __future__ import annotations

import io
import logging
import selectors
import socket
import sys
import time
from urllib.parse import unquote

MAX_REQUEST_BYTES = 16 * 1024
MAX_CLIENTS = 32
CLIENT_TIMEOUT_S = 5.0
RECV_BYTES = 65536

log = logging.getLogger(__name__)


class _Client:
    def __init__(self, sock: socket.socket, address):
        self.sock, self.address = sock, address
        self.inbox = b""
        self.outbox = b""
        self.deadline = time.monotonic() + CLIENT_TIMEOUT_S


class StatusServer:
    def __init__(self, app, host: str, port: int, selector: selectors.BaseSelector):
        self.app, self.selector = app, selector
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=16)
        self.sock.setblocking(False)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.clients: dict[socket.socket, _Client] = {}
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        self.selector.unregister(self.sock)
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def expire(self, now: float) -> None:
        """Drop clients past their deadline; call once per loop turn."""
        for client in [c for c in self.clients.values() if c.deadline < now]:
            self._drop(client)

    def _accept(self) -> None:
        try:
            sock, address = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        if len(self.clients) >= MAX_CLIENTS:
            sock.close()
            return
        sock.setblocking(False)
        client = _Client(sock, address)
        self.clients[sock] = client
        self.selector.register(sock, selectors.EVENT_READ, lambda: self._read(client))

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.inbox += data
        if b"\r\n\r\n" in client.inbox or b"\n\n" in client.inbox:
            self._respond(client, self._call_app(client.inbox))
        elif len(client.inbox) > MAX_REQUEST_BYTES:
            self._respond(client, _plain(431, "Request Header Fields Too Large"))

    def _respond(self, client: _Client, response: bytes) -> None:
        client.outbox = response
        self.selector.modify(client.sock, selectors.EVENT_WRITE, lambda: self._write(client))

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(client.outbox)
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock, None)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def _call_app(self, raw: bytes) -> bytes:
        try:
            environ = _environ(raw, self.host, self.port)
        except ValueError:
            return _plain(400, "Bad Request")
        status_headers: list = []

        def start_response(status, headers, exc_info=None):
            status_headers[:] = [status, headers]

        try:
            body = b"".join(self.app(environ, start_response))
        except Exception:  # noqa: BLE001 - a broken page must not take the loop down
            log.exception("status page failed")
            return _plain(500, "Internal Server Error")
        status, headers = status_headers
        head = [f"HTTP/1.0 {status}"] + [f"{k}: {v}" for k, v in headers
                                          if k.lower() not in ("connection", "content-length")]
        head += [f"Content-Length: {len(body)}", "Connection: close"]
        if environ["REQUEST_METHOD"] == "HEAD":
            body = b""
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _environ(raw: bytes, host: str, port: int) -> dict:
    head = raw.split(b"\r\n\r\n" if b"\r\n\r\n" in raw else b"\n\n", 1)[0]
    lines = head.decode("latin-1").splitlines()
    method, target, version = lines[0].split(" ", 2)
    if not version.startswith("HTTP/"):
        raise ValueError(version)
    path, _, query = target.partition("?")
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": unquote(path), "QUERY_STRING": query,
        "SERVER_NAME": host, "SERVER_PORT": str(port), "SERVER_PROTOCOL": version,
        "SCRIPT_NAME": "", "CONTENT_LENGTH": "0", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = "HTTP_" + name.strip().upper().replace("-", "_")
            environ[key] = value.strip()
    return environ


def _plain(code: int, text: str) -> bytes:
    return (f"HTTP/1.0 {code} {text}\r\nContent-Type: text/plain\r\nContent-Length: "
            f"{len(text) + 1}\r\nConnection: close\r\n\r\n{text}\n").encode()
