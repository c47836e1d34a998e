"""A tiny HTTP/1.0 server that runs a WSGI app inside the supervisor's selectors loop.

The supervisor must never wait on a client (its loop pets the systemd watchdog), and nothing a
client sends may end that loop. So: sockets are non-blocking; a request is answered once its
header block is complete and every response closes the connection; a malformed request gets
400 (431, 505), a failing app 500; every callback this module hands the selector catches what
it raises, drops that one client and logs one escaped line. Text for `wsgi.errors` goes to the
logging module as one escaped line, never raw to stderr (the journal's `<N>` prefixes).

Hostile clients cannot lock the page out: a client has `HEADER_TIMEOUT_S` to send its header
block, and a full client table (or one peer address holding `MAX_CLIENTS_PER_PEER`) makes
room for a new connection by dropping the oldest client that has not completed a request, so
`/healthz` still answers while someone holds idle sockets open. Running out of file
descriptors or buffers on `accept()` is logged once a minute and pauses accepting for
`ACCEPT_PAUSE_S` (the loop does not spin) after shedding the oldest idle client.
"""

from __future__ import annotations

import errno
import io
import logging
import re
import selectors
import socket
import time
import traceback
from urllib.parse import unquote_to_bytes

from c8ysim import logs

MAX_REQUEST_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
MAX_CLIENTS = 32
MAX_CLIENTS_PER_PEER = 16  # one address cannot take every slot from the others
HEADER_TIMEOUT_S = 3.0  # from accept() to a complete header block
SEND_TIMEOUT_S = 5.0  # from a complete request to the last byte of its answer
ACCEPTS_PER_EVENT = 16  # bounds one loop turn's work on the listening socket
ACCEPT_PAUSE_S = 1.0  # out of fds/buffers: stop watching the listening socket this long
PROBLEM_LOG_EVERY_S = 60.0  # a repeating server problem is logged at most this often
RECV_BYTES = 65536
MAX_LOG_CHARS = 2000
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
HEAD_END = re.compile(rb"\r?\n\r?\n")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
VERSION = re.compile(r"HTTP/1\.[01]\Z")

log = logging.getLogger(__name__)


class _Client:
    def __init__(self, sock: socket.socket, address):
        self.sock = sock
        self.peer = address[0] if isinstance(address, tuple) and address else str(address)
        self.inbox = b""
        self.scanned = 0  # the header end cannot start before this offset of `inbox`
        self.outbox = b""
        self.accepted_at = time.monotonic()
        self.deadline = self.accepted_at + HEADER_TIMEOUT_S
        self.answered = False


class BadRequest(Exception):
    """A request we will not pass to the app; `code` and `reason` are the answer."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"{code} {reason}")
        self.code, self.reason = code, reason


class StatusServer:
    def __init__(self, app, host: str, port: int, selector: selectors.BaseSelector):
        self.app, self.selector = app, selector
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=64)
        self.sock.setblocking(False)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.clients: dict[socket.socket, _Client] = {}
        self._paused_until: float | None = None
        self._problems: dict[str, list] = {}  # kind -> [next log time, suppressed count]
        selector.register(self.sock, selectors.EVENT_READ, self._guarded(self._accept))

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        _unregister(self.selector, self.sock)
        self.sock.close()

    def expire(self, now: float) -> None:
        """Drop clients past their deadline, resume a paused accept; once per loop turn."""
        for client in [c for c in self.clients.values() if c.deadline < now]:
            self._drop(client)
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self.selector.register(self.sock, selectors.EVENT_READ, self._guarded(self._accept))

    # -- accepting ------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._shed():
                    self._problem("accept", f"cannot accept a status client ({exc.strerror}); "
                                  "dropped the oldest idle one")
                    continue
                if exc.errno in OUT_OF_RESOURCES:
                    self._pause(exc)
                    return
                continue  # ECONNABORTED, EPROTO, EPERM...: that one connection only
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address) -> None:
        client = _Client(sock, address)
        same_peer = [c for c in self.clients.values() if c.peer == client.peer]
        if len(same_peer) >= MAX_CLIENTS_PER_PEER:
            self._drop(_victim(same_peer))
        elif len(self.clients) >= MAX_CLIENTS:
            self._drop(_victim(self.clients.values()))
        try:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ,
                                   self._guarded(self._read, client))
        except (OSError, ValueError):
            sock.close()
            return
        self.clients[sock] = client

    def _shed(self) -> bool:
        """Drop the oldest client without a complete request (frees a descriptor)."""
        idle = [c for c in self.clients.values() if not c.answered]
        if idle:
            self._drop(_victim(idle))
        return bool(idle)

    def _pause(self, exc: OSError) -> None:
        self._problem("accept", f"cannot accept status clients ({exc.strerror}); "
                      f"pausing the status page for {ACCEPT_PAUSE_S:.0f} s")
        _unregister(self.selector, self.sock)
        self._paused_until = time.monotonic() + ACCEPT_PAUSE_S

    # -- one client -------------------------------------------------------------------------

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
        if client.answered:
            return  # a body or pipelined bytes: we answer one request per connection
        client.inbox += data
        end = HEAD_END.search(client.inbox, client.scanned)
        if end and end.start() <= MAX_REQUEST_BYTES:
            self._respond(client, self._call_app(client.inbox[:end.start()]))
        elif len(client.inbox) > MAX_REQUEST_BYTES:
            self._respond(client, _plain(431, "Request Header Fields Too Large"))
        else:
            client.scanned = max(0, len(client.inbox) - 3)

    def _respond(self, client: _Client, response: bytes) -> None:
        client.answered, client.inbox, client.outbox = True, b"", response
        client.deadline = time.monotonic() + SEND_TIMEOUT_S
        self._write(client)  # most answers fit the socket buffer: no extra loop turn
        if client.sock in self.clients:
            self.selector.modify(client.sock, selectors.EVENT_WRITE,
                                 self._guarded(self._write, client))

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(client.outbox)
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            _drain(client.sock)
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock, None)
        _unregister(self.selector, client.sock)
        try:
            client.sock.close()
        except OSError:
            pass

    # -- the app ----------------------------------------------------------------------------

    def _call_app(self, head: bytes) -> bytes:
        try:
            environ = _environ(head, self.host, self.port)
        except BadRequest as exc:
            return _plain(exc.code, exc.reason)
        try:
            return self._run_app(environ)
        except Exception as exc:  # noqa: BLE001 - a broken page must not take the loop down
            self._problem("app", f"status page failed on {environ['PATH_INFO']!r}: "
                          + "".join(traceback.format_exception(exc)))
            return _plain(500, "Internal Server Error")

    def _run_app(self, environ: dict) -> bytes:
        status_headers: list = []

        def start_response(status, headers, exc_info=None):
            status_headers[:] = [status, headers]

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        status, headers = status_headers
        head = [f"HTTP/1.0 {status}"] + [f"{k}: {v}" for k, v in headers
                                          if k.lower() not in ("connection", "content-length")]
        head += [f"Content-Length: {len(body)}", "Connection: close"]
        if any("\r" in line or "\n" in line for line in head):
            raise ValueError("a line break in a response header")
        if environ["REQUEST_METHOD"] == "HEAD":
            body = b""
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    # -- never raise into the loop ----------------------------------------------------------

    def _guarded(self, handler, client: _Client | None = None):
        """`handler` as a selector callback that cannot raise into the supervisor loop."""
        def callback() -> None:
            try:
                handler() if client is None else handler(client)
            except Exception as exc:  # noqa: BLE001 - one request's trouble stays its own
                self._problem("server", "status server error: "
                              + "".join(traceback.format_exception(exc)))
                if client is not None:
                    self._drop(client)
        return callback

    def _problem(self, kind: str, text: str) -> None:
        """Log `text` as one escaped line, at most once per PROBLEM_LOG_EVERY_S per kind."""
        now = time.monotonic()
        next_at, suppressed = self._problems.get(kind, (0.0, 0))
        if now < next_at:
            self._problems[kind] = [next_at, suppressed + 1]
            return
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.error("%s%s", logs.one_line(text.strip(), MAX_LOG_CHARS), more)
        self._problems[kind] = [now + PROBLEM_LOG_EVERY_S, 0]


class _ErrorsToLog(io.TextIOBase):
    """`wsgi.errors`: what the app writes there becomes one escaped log line per write."""

    def write(self, text: str) -> int:
        if text.strip():
            log.error("status page: %s", logs.one_line(text.strip(), MAX_LOG_CHARS))
        return len(text)

    def writable(self) -> bool:
        return True


def _environ(head: bytes, host: str, port: int) -> dict:
    """The WSGI environ of a header block (without its blank line); raises BadRequest."""
    lines = [line.removesuffix("\r") for line in head.decode("latin-1").split("\n")]
    if len(lines) > MAX_HEADER_LINES:
        raise BadRequest(431, "Request Header Fields Too Large")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not TOKEN.match(parts[0]):
        raise BadRequest(400, "Bad Request")
    method, target, version = parts
    if not VERSION.match(version):
        raise BadRequest(505 if version.startswith("HTTP/") else 400,
                         "HTTP Version Not Supported" if version.startswith("HTTP/")
                         else "Bad Request")
    path_info, query = _target(target)
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path_info, "QUERY_STRING": query,
        "SERVER_NAME": host, "SERVER_PORT": str(port), "SERVER_PROTOCOL": version,
        "SCRIPT_NAME": "", "CONTENT_LENGTH": "0", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": _ErrorsToLog(), "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not TOKEN.match(name):  # also obsolete line folding (leading space)
            raise BadRequest(400, "Bad Request")
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # no request bodies here
        key = key if key == "CONTENT_TYPE" else "HTTP_" + key
        value = value.strip(" \t")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _target(target: str) -> tuple[str, str]:
    """(PATH_INFO as PEP 3333 latin-1 text, QUERY_STRING) of an origin-form target."""
    if not target.startswith("/") or not all("!" <= c <= "~" for c in target):
        raise BadRequest(400, "Bad Request")
    path, _, query = target.partition("?")
    raw = unquote_to_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "Bad Request: the path is not UTF-8") from None
    if not text.isprintable():
        raise BadRequest(400, "Bad Request: control characters in the path")
    return raw.decode("latin-1"), query


def _victim(clients) -> _Client:
    """The client to drop for a newcomer: the oldest without a complete request, else the
    oldest."""
    return min(clients, key=lambda c: (c.answered, c.accepted_at))


def _drain(sock: socket.socket) -> None:
    """Read what the client sent beyond its request: closing with unread bytes would send
    RST, and the client could lose the answer."""
    try:
        sock.shutdown(socket.SHUT_WR)
        for _ in range(4):
            if not sock.recv(RECV_BYTES):
                return
    except OSError:
        return


def _unregister(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    try:
        selector.unregister(sock)
    except (KeyError, ValueError, OSError):
        pass


def _plain(code: int, text: str) -> bytes:
    return (f"HTTP/1.0 {code} {text}\r\nContent-Type: text/plain\r\nContent-Length: "
            f"{len(text) + 1}\r\nConnection: close\r\n\r\n{text}\n").encode()
