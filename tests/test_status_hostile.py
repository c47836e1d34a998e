"""The status server against hostile clients, run inside the REAL supervisor loop
(`python -m c8ysim run`, one device whose uplink points at a closed port).

A raw-socket fuzzer (hypothesis over bytes: garbage, almost-HTTP with odd methods, targets,
%-escapes, NUL, non-UTF-8 and huge headers, requests split into pieces sent slowly, idle
floods) checks after EVERY example that the supervisor is alive, `/healthz` answers 200 on a
fresh connection, and every line the agent wrote so far is one well-formed journal line
(`<digit>` first, no control characters). Regression tests pin each defect of issue 13 found
in the status server (empty header block, `/%ff`, wsgi.errors, EMFILE on accept, lock-out by
idle connections). Example counts are printed (`pytest -s`); `HYPOTHESIS_PROFILE=fuzz` runs
10 000 of each.
"""

from __future__ import annotations

import base64
import errno
import logging
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from c8ysim.status import server as status_server
from c8ysim.status.app import build_app
from c8ysim.status.server import StatusServer
from conftest import REPO, Agent, free_port, wait_until, write_config
from fuzzing import fuzz_settings

LINE_OK = re.compile(rb"<[0-7]>[^\x00-\x08\x0a-\x1f\x7f]*\Z")
RESPONSE = re.compile(rb"HTTP/1\.0 (\d{3}) ")
ANSWERS = {200, 400, 401, 404, 405, 431, 505}  # never a 500 for anything a client sends
EXCHANGE_TIMEOUT_S = 3.0
REQUEST_EXAMPLES, FLOOD_EXAMPLES = 2000, 100  # ~20 s and ~3 s here
COUNTS: dict[str, int] = {}  # examples run against the live agent, printed at the end


class Target(Agent):
    """The real agent, plus what every fuzz example checks afterwards."""

    def __init__(self, directory: Path, prefix: tuple[str, ...] = ()):
        self.status_port = free_port()
        config = write_config(directory, free_port(), self.status_port, interval_s=1.0,
                              devices=[("pv-roof", "pv")])
        (directory / "status-password").write_text(f"{PASSWORD}\n")
        listen = f"status: {{listen: '127.0.0.1:{self.status_port}'"
        config.write_text(config.read_text().replace(
            listen, f"{listen}, password_file: {directory / 'status-password'}"))
        config.chmod(0o600)  # it holds the uplink password: no warning about that
        super().__init__(config, self.status_port)
        self.prefix = list(prefix)
        self._offset, self._partial = 0, b""

    def start(self) -> "Target":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.prefix + [sys.executable, "-m", "c8ysim", "run", "--config", str(self.config)],
            cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_until(lambda: self.proc.poll() is not None or healthz(self.status_port) == 200,
                   10, what="the status page")
        assert self.proc.poll() is None, self.log_text()
        return self

    def bad_lines(self) -> list[bytes]:
        """Log lines written since the last call that are not well-formed journal lines."""
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        bad = [line for line in lines if not LINE_OK.match(line) or PASSWORD.encode() in line]
        if self._partial and not re.match(rb"<[0-7]>", self._partial[:3]):
            bad.append(self._partial)  # a line being written must start like one, too
        return bad

    def check(self) -> None:
        assert self.proc.poll() is None, f"the agent exited {self.proc.returncode}"
        assert healthz(self.status_port) == 200, "/healthz did not answer 200"
        bad = self.bad_lines()
        assert not bad, f"malformed log lines: {bad[:3]}"


def healthz(port: int, source: str = "127.0.0.1", timeout: float = 2.0) -> int | None:
    try:
        answer = exchange(port, [b"GET /healthz HTTP/1.0\r\n\r\n"], source, timeout=timeout)
    except OSError:  # refused, timed out
        return None
    match = RESPONSE.match(answer)
    return int(match[1]) if match else None


def connect(port: int, source: str = "127.0.0.1", timeout: float = EXCHANGE_TIMEOUT_S):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def exchange(port: int, chunks, source: str = "127.0.0.1", pause_s: float = 0.0,
             timeout: float = EXCHANGE_TIMEOUT_S) -> bytes:
    """Send `chunks` (pausing between them), end our side, return all that came back."""
    answer = b""
    with connect(port, source, timeout) as sock:
        try:
            for i, chunk in enumerate(chunks):
                if i and pause_s:
                    time.sleep(pause_s)
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered (400, 431) and closed before we were done
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    return answer


def assert_answer(answer: bytes) -> None:
    if answer:
        match = RESPONSE.match(answer)
        assert match and int(match[1]) in ANSWERS, answer[:200]


def count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    agent = Target(tmp_path_factory.mktemp("hostile")).start()
    yield agent
    try:
        assert agent.stop(10) == 0, agent.log_text()[-2000:]
    finally:
        agent.cleanup()
    print(f"\nstatus fuzzer examples: {COUNTS}")


# -- the fuzzer -----------------------------------------------------------------------------

PASSWORD = "fuzz-pw-3e1c"
CREDENTIALS = b"Basic " + base64.b64encode(f"c8ysim:{PASSWORD}".encode())
METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"get", b"G\x00T",
                           b"", b"\xff\xfe", b"GET GET", b"\xc3\xa9"])
PIECES = st.sampled_from([
    b"/", b"%ff", b"%2F", b"%2f", b"%00", b"%0a", b"%0d%0a", b"%c0%af", b"%e2%80%ae", b"%",
    b"%z", b"..", b"api", b"status", b"healthz", b"readyz", b"metrics", b"data", b"cards",
    b"devices", b"pv-roof", b"readings", b"?", b"&", b"=", b";", b"#", b"format", b"csv",
    b"window", b"since", b"limit", b"page", b"1h", b"-1", b"1e308", b"nan", b"\x00", b"\xc3\xa9",
    b"\xff", b"\x7f", b" ", b"\t", b"\r", b"\n", b"\xe2\x80\xa8", b"A" * 300])
TARGETS = st.one_of(
    st.sampled_from([b"/", b"/healthz", b"/readyz", b"/api/status", b"/metrics", b"/cards",
                     b"/data?format=csv&window=5m", b"/api/devices/pv-roof/readings?limit=3",
                     b"/%ff", b"/%00", b"*", b"http://127.0.0.1/", b"", b"/" * 5000]),
    st.lists(PIECES, max_size=12).map(lambda pieces: b"/" + b"".join(pieces)))
VERSIONS = st.sampled_from([b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"HTTP/1.0\x00",
                            b"http/1.0", b"", b"HTTP/", b"HTTP/1.1 x", b"HTTP/1.1\r"])
HEADER_NAMES = st.one_of(
    st.sampled_from([b"Host", b"Authorization", b"Content-Length", b"Transfer-Encoding",
                     b"Content-Type", b"Cookie", b"X-Forwarded-For", b" Host", b"Ho st", b""]),
    st.binary(max_size=10))
HEADER_VALUES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([CREDENTIALS, b"Basic !!!", b"Basic", b"999999999999999999999", b"-1",
                     b"chunked", b"\xff\xfe\x00", b"text/html; charset=utf-16"]),
    st.integers(0, 20_000).map(lambda n: b"A" * n))
EOLS = st.sampled_from([b"\r\n", b"\n", b"\r"])
ENDS = st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n\n", b"\n\r\n", b"\r\r", b"", b"\r\n"])


@st.composite
def requests(draw) -> bytes:
    eol = draw(EOLS)
    line = draw(METHODS) + b" " + draw(TARGETS) + b" " + draw(VERSIONS)
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    if draw(st.booleans()):  # past the basic auth, into the pages
        headers.insert(draw(st.integers(0, len(headers))), (b"Authorization", CREDENTIALS))
    many = draw(st.sampled_from([0, 0, 0, 99, 100, 150]))  # around MAX_HEADER_LINES
    head = [line] + [name + b": " + value for name, value in headers] + [b"X: y"] * many
    return eol.join(head) + draw(ENDS) + draw(st.binary(max_size=64))


RAW = st.one_of(
    st.binary(max_size=400),
    st.binary(max_size=200).map(lambda data: data + b"\r\n\r\n"),
    st.sampled_from([b"\r\n\r\n", b"\n\n", b"\x00" * 64, b"\xff\xfeG\x00E\x00T\x00 \x00/\x00",
                     b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello
                     b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET /" + b"A" * 17_000 + b"\r\n"]),
    requests())


@fuzz_settings(examples_in_make_test=REQUEST_EXAMPLES)
@given(request=RAW, data=st.data())
@example(request=b"\r\n\r\n", data=None)
@example(request=b"GET /%ff HTTP/1.0\r\n\r\n", data=None)
@example(request=b"GET /%c3%28 HTTP/1.1\r\nHost: x\r\n\r\n", data=None)
@example(request=b"GET / HTTP/1.0\r\n" + b"X: " + b"A" * 20_000 + b"\r\n\r\n", data=None)
def test_no_request_ends_the_loop_or_garbles_the_log(target, request, data):
    """Any bytes, in any pieces, sent fast or slowly: one answer (or a closed socket), and
    the loop, /healthz and the log stream are as before."""
    chunks, pause_s = [request], 0.0
    if data is not None and len(request) > 1:
        cuts = sorted(data.draw(st.sets(st.integers(1, len(request) - 1), max_size=6)))
        chunks = [request[a:b] for a, b in zip([0, *cuts], [*cuts, len(request)])]
        pause_s = data.draw(st.sampled_from([0.0, 0.0, 0.001, 0.01]))
    assert_answer(exchange(target.status_port, chunks, pause_s=pause_s))
    target.check()
    count("requests")


@fuzz_settings(examples_in_make_test=FLOOD_EXAMPLES)
@given(idle=st.integers(1, 80), partial=st.integers(0, 80), unread=st.integers(0, 8),
       peer=st.sampled_from(["127.0.0.1", "127.0.0.2"]))
@example(idle=80, partial=0, unread=0, peer="127.0.0.1")
def test_idle_floods_never_lock_out_healthz(target, idle, partial, unread, peer):
    """Silent sockets, half-sent requests and answers nobody reads, held open while a
    monitor asks /healthz: it answers at once."""
    sockets = []
    try:
        for i in range(idle + partial + unread):
            sock = connect(target.status_port, peer)
            sockets.append(sock)
            if i >= idle + partial:
                sock.sendall(b"GET /data?format=csv HTTP/1.0\r\n\r\n")
            elif i >= idle:
                sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")
        asked = time.monotonic()
        assert healthz(target.status_port) == 200
        assert time.monotonic() - asked < 1.5  # ~5 ms here; generous for a busy machine
    finally:
        for sock in sockets:
            sock.close()
    target.check()
    count("floods")


def test_example_counts_are_what_was_asked(target):
    """After the fuzz tests (file order): every example ran against the live agent."""
    assert COUNTS.get("requests", REQUEST_EXAMPLES) >= REQUEST_EXAMPLES, COUNTS
    assert COUNTS.get("floods", FLOOD_EXAMPLES) >= FLOOD_EXAMPLES, COUNTS


# -- regressions of issue 13 against the real agent -----------------------------------------

def test_an_empty_header_block_is_400_and_the_agent_lives(target):
    """`printf '\\r\\n\\r\\n' | nc 127.0.0.1 8080` used to end the supervisor (IndexError)."""
    for request in (b"\r\n\r\n", b"\n\n", b"\r\n\r\n\r\n\r\n", b" \r\n\r\n"):
        answer = exchange(target.status_port, [request])
        assert answer.startswith(b"HTTP/1.0 400 "), answer
        target.check()


def test_a_path_that_is_not_utf8_is_400_and_the_log_stays_well_formed(target):
    """`GET /%ff` used to give Bottle's 500 page and write raw text to stderr."""
    for path in (b"/%ff", b"/%c3%28", b"/api/devices/%ff/readings", b"/%00", b"/a%0a<0>x"):
        answer = exchange(target.status_port, [b"GET " + path + b" HTTP/1.0\r\n\r\n"])
        assert answer.startswith(b"HTTP/1.0 400 "), (path, answer)
    time.sleep(0.2)
    target.check()
    assert b"Critical error" not in target.log_path.read_bytes()


def test_idle_connections_from_one_client_cannot_lock_out_healthz(target):
    """32 idle connections from one client used to make /healthz fail for everyone."""
    sockets = [connect(target.status_port) for _ in range(3 * status_server.MAX_CLIENTS)]
    try:
        time.sleep(0.3)  # all accepted: the table is full of idle clients
        for _ in range(5):
            assert healthz(target.status_port, timeout=1.0) == 200
    finally:
        for sock in sockets:
            sock.close()
    target.check()


def test_one_address_cannot_evict_the_clients_of_another(target):
    """A flood from 127.0.0.2 drops its own oldest sockets, not a slow monitor's on
    127.0.0.3, which then completes its request."""
    monitor = connect(target.status_port, "127.0.0.3")
    flood = []
    try:
        monitor.sendall(b"GET /healthz HTTP/1.0\r\n")
        time.sleep(0.1)
        flood = [connect(target.status_port, "127.0.0.2") for _ in range(60)]
        time.sleep(0.3)
        monitor.sendall(b"\r\n")
        assert monitor.recv(4096).startswith(b"HTTP/1.0 200 ")
    finally:
        monitor.close()
        for sock in flood:
            sock.close()
    target.check()


def test_running_out_of_descriptors_does_not_end_the_agent(tmp_path):
    """With few file descriptors, a flood of connections makes accept() fail with EMFILE:
    that used to end the supervisor. Now the oldest idle client is dropped and /healthz
    still answers; the problem is logged once, as one line."""
    agent = Target(tmp_path, prefix=("prlimit", "--nofile=20:20", "--"))
    try:
        agent.start()
        flood = []
        try:
            for _ in range(40):
                flood.append(connect(agent.status_port))
            time.sleep(0.5)
            assert healthz(agent.status_port, timeout=1.0) == 200
            assert agent.proc.poll() is None
        finally:
            for sock in flood:
                sock.close()
        agent.check()
        log = agent.log_text()
        assert log.count("Too many open files") == 1, log[-3000:]
        assert agent.stop(10) == 0
    finally:
        agent.cleanup()


# -- the server in-process: app errors, wsgi.errors, accept() errors -------------------------

class Loop:
    """A StatusServer in a selectors loop on a thread, like the supervisor's."""

    def __init__(self, app):
        self.selector = selectors.DefaultSelector()
        self.server = StatusServer(app, "127.0.0.1", 0, self.selector)
        self.port, self.running, self.failure = self.server.port, True, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while self.running:
                for key, _ in self.selector.select(0.02):
                    key.data()
                self.server.expire(time.monotonic())
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to see
            self.failure = exc

    def close(self):
        self.running = False
        self.thread.join(2)
        self.server.close()


@pytest.fixture
def records():
    """Log records of the status server, and nothing written raw to stderr."""
    caught: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = caught.append
    logger = logging.getLogger(status_server.__name__)
    logger.addHandler(handler)
    yield caught
    logger.removeHandler(handler)


def healthy_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


def test_app_errors_are_500_and_one_escaped_log_line(records, capfd):
    def failing_route():
        raise RuntimeError("broken\n<0>supervisor: FORGED")

    app = build_app(failing_route, lambda: True)
    loop = Loop(app)
    try:
        answer = exchange(loop.port, [b"GET /api/status HTTP/1.0\r\n\r\n"])
        assert answer.startswith(b"HTTP/1.0 500 ")
        assert b"FORGED" not in answer and b"Traceback" not in answer
        assert healthz(loop.port) == 200 and loop.failure is None
    finally:
        loop.close()
    messages = [r.getMessage() for r in records]
    assert messages and all("\n" not in m and "\r" not in m for m in messages), messages
    assert any("FORGED" in m for m in messages)
    assert capfd.readouterr().err == ""  # nothing raw on stderr


@pytest.mark.parametrize("app", [
    pytest.param(lambda environ, start: 1 / 0, id="raises"),
    pytest.param(lambda environ, start: [b"no start_response"], id="no-start-response"),
    pytest.param(lambda environ, start: (start("200 OK", [("X", "a\r\nSet-Cookie: x")]),
                                         [b""])[1], id="header-injection"),
    pytest.param(lambda environ, start: (start("200 OK", []), ["text, not bytes"])[1],
                 id="str-body"),
    pytest.param(lambda environ, start: (environ["wsgi.errors"].write("a\nb\x1b[31m"),
                                         start("200 OK", []), [b"fine"])[2],
                 id="writes-wsgi-errors"),
])
def test_whatever_the_app_does_one_request_ends_alone(records, capfd, app):
    loop = Loop(app)
    try:
        answer = exchange(loop.port, [b"GET / HTTP/1.0\r\n\r\n"])
        assert RESPONSE.match(answer), answer
        assert int(RESPONSE.match(answer)[1]) in (200, 500)
        assert loop.failure is None and loop.thread.is_alive()
    finally:
        loop.close()
    assert all("\n" not in r.getMessage() and "\x1b" not in r.getMessage() for r in records)
    assert capfd.readouterr().err == ""


class FailingListener:
    """The listening socket, with accept() failing with `code` for `failing_s` seconds."""

    def __init__(self, sock: socket.socket, code: int, failing_s: float):
        self.sock, self.code, self.until, self.calls = sock, code, 0.0, 0
        self.until = time.monotonic() + failing_s

    def accept(self):
        self.calls += 1
        if time.monotonic() < self.until:
            raise OSError(self.code, "simulated")
        return self.sock.accept()

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_accept_out_of_resources_pauses_logs_once_and_recovers(records, monkeypatch, code):
    """EMFILE on accept() used to end the supervisor. Now: logged once, the listening
    socket left alone for ACCEPT_PAUSE_S (no busy loop), then served again."""
    monkeypatch.setattr(status_server, "ACCEPT_PAUSE_S", 0.3, raising=False)
    loop = Loop(healthy_app)
    listener = FailingListener(loop.server.sock, code, failing_s=1.5)
    loop.server.sock = listener
    sockets = []
    try:
        sockets = [connect(loop.port) for _ in range(3)]  # nobody idle to shed: a pause
        time.sleep(1.5)
        assert loop.failure is None and loop.thread.is_alive()
        assert 1 <= listener.calls <= 10, f"{listener.calls} accept() calls: a busy loop"
        wait_until(lambda: healthz(loop.port, timeout=1.0) == 200, 5, what="/healthz")
    finally:
        for sock in sockets:
            sock.close()
        loop.server.sock = listener.sock
        loop.close()
    failures = [r.getMessage() for r in records if "cannot accept" in r.getMessage()]
    assert len(failures) == 1, failures  # once per burst
    assert "pausing" in failures[0]
