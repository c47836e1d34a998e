"""Throwaway X.509 material for the TLS tests, made with the openssl CLI, and a TLS mosquitto.

`Pki(directory)` makes a CA (P-256 keys: fast to make) and a server certificate for
localhost/127.0.0.1 (subjectAltName); `client(cn)` issues client certificates with a given
Common Name. `TlsBroker` starts the conftest Mosquitto with a plain listener (for the test's
own subscriber), a TLS listener with a password file and, optionally, a client-certificate
listener (`require_certificate`, `use_identity_as_username`). Nothing leaves the tmp dir.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import Mosquitto, free_port, port_open, wait_until

OPENSSL_TIMEOUT_S = 20
DAYS = "2"
KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
# The user every TLS test broker knows (the agent's write_config uses tenant t1, user u).
USERNAME, PASSWORD = "t1/u", "secret"


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("the openssl command is not installed")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=OPENSSL_TIMEOUT_S)
    assert done.returncode == 0, f"openssl {' '.join(args)} failed:\n{done.stderr}"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class Pki:
    """A CA with a server certificate; `client(cn)` issues client certificates."""

    def __init__(self, directory: Path, name: str = "ca"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ca = Pair(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        openssl("req", "-x509", *KEY_ARGS, "-keyout", str(self.ca.key), "-out",
                str(self.ca.cert), "-days", DAYS, "-subj", f"/O=c8ysim tests/CN={name} {id(self)}",
                "-addext", "basicConstraints=critical,CA:true",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-addext", "subjectKeyIdentifier=hash", cwd=self.dir)
        self.server = self.server_cert("server", "DNS:localhost,IP:127.0.0.1")

    def server_cert(self, stem: str, san: str) -> Pair:
        """A server certificate for the names in `san` (e.g. "DNS:localhost,IP:127.0.0.1")."""
        return self._issue(stem, san.split(",")[0].split(":", 1)[1], "serverAuth",
                           f"subjectAltName={san}")

    def client(self, cn: str, file_stem: str | None = None) -> Pair:
        """A client certificate whose subject is CN=`cn` (files named after `file_stem`)."""
        return self._issue(file_stem or f"client-{cn}", cn, "clientAuth")

    def _issue(self, stem: str, cn: str, usage: str, *extensions: str) -> Pair:
        pair = Pair(self.dir / f"{stem}.pem", self.dir / f"{stem}.key")
        csr = self.dir / f"{stem}.csr"
        ext = self.dir / f"{stem}.ext"
        ext.write_text("\n".join([
            "basicConstraints=critical,CA:false",
            "keyUsage=critical,digitalSignature",
            f"extendedKeyUsage={usage}",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid",
            *extensions]) + "\n")
        openssl("req", "-new", *KEY_ARGS, "-keyout", str(pair.key), "-out", str(csr),
                "-subj", f"/CN={cn}", cwd=self.dir)
        openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca.cert), "-CAkey",
                str(self.ca.key), "-set_serial", str(secrets.randbits(63)), "-days", DAYS,
                "-out", str(pair.cert), "-extfile", str(ext), cwd=self.dir)
        csr.unlink()
        return pair


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory) -> Pki:
    """A second, unrelated CA: trusting it instead of `pki` must fail verification."""
    return Pki(tmp_path_factory.mktemp("other-pki"), name="other-ca")


def password_file(directory: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (mosquitto_passwd -c -b), one user after the other."""
    binary = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path = directory / "passwd"
    path.unlink(missing_ok=True)
    for i, (user, password) in enumerate(users.items()):
        flags = ["-c", "-b"] if i == 0 else ["-b"]
        done = subprocess.run([binary, *flags, str(path), user, password],
                              capture_output=True, text=True, timeout=OPENSSL_TIMEOUT_S)
        assert done.returncode == 0, done.stderr
    return path


class TlsBroker:
    """mosquitto with three listeners on free loopback ports.

    `port`: plain TCP, for the test's own subscriber (password login); `tls_port`: TLS with
    the server certificate, password login; `cert_port`: TLS requiring a client certificate
    signed by the CA, whose CN becomes the username. Anonymous clients are refused everywhere.
    """

    def __init__(self, directory: Path, pki: Pki, users: dict[str, str] | None = None,
                 server: Pair | None = None):
        self.dir, self.pki, self.server = directory, pki, server or pki.server
        self.users = users if users is not None else {USERNAME: PASSWORD}
        self.tls_port, self.cert_port = free_port(), free_port()
        self.passwd = password_file(directory, self.users)
        self.mosquitto = Mosquitto(directory, extra=self._extra())

    @property
    def port(self) -> int:
        return self.mosquitto.port

    def _extra(self) -> str:
        tls = (f"cafile {self.pki.ca.cert}\ncertfile {self.server.cert}\n"
               f"keyfile {self.server.key}\n")
        # allow_anonymous and password_file are global (no per_listener_settings): the
        # conftest's `allow_anonymous true` above is overridden by the later line.
        return (f"allow_anonymous false\npassword_file {self.passwd}\n"
                f"listener {self.tls_port} 127.0.0.1\n{tls}"
                f"listener {self.cert_port} 127.0.0.1\n{tls}"
                "require_certificate true\nuse_identity_as_username true\n")

    def start(self) -> "TlsBroker":
        self.mosquitto.start()
        for port in (self.tls_port, self.cert_port):
            wait_until(lambda p=port: port_open(p), 5, what=f"mosquitto on {port}")
        return self

    def restart(self, users: dict[str, str] | None = None) -> None:
        """Stop, optionally rewrite the password file, start again on the same ports."""
        self.mosquitto.stop()
        if users is not None:
            self.users = users
            password_file(self.dir, users)
        self.mosquitto.start()
        for port in (self.tls_port, self.cert_port):
            wait_until(lambda p=port: port_open(p), 5, what=f"mosquitto on {port}")

    def stop(self) -> None:
        self.mosquitto.stop()

    def log_text(self) -> str:
        path = self.dir / f"mosquitto-{self.port}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Subscriber:
    """The test's own MQTT client: password login on the plain listener, keeps every line."""

    def __init__(self, port: int, username: str = USERNAME, password: str = PASSWORD,
                 topics=("s/us",), tls_ca: Path | None = None, client_id: str = "recorder"):
        self.lines_seen: list[str] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        else:
            self.client = mqtt.Client(client_id=client_id)
        self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set_context(ssl.create_default_context(cafile=str(tls_ca)))
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: [c.subscribe(t, 1) for t in topics]
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self.subscribed.wait(5):
            self.close()
            raise AssertionError("the test subscriber could not connect and subscribe")

    def _on_message(self, _client, _userdata, message) -> None:
        with self.lock:
            self.lines_seen += [line for line in message.payload.decode().split("\n") if line]

    def lines(self) -> list[str]:
        with self.lock:
            return list(self.lines_seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def tls_broker(tmp_path, pki):
    broker = TlsBroker(tmp_path, pki).start()
    yield broker
    broker.stop()


@pytest.fixture
def subscriber(tls_broker):
    sub = Subscriber(tls_broker.port)
    time.sleep(0.1)  # the SUBACK is in; give mosquitto a moment before the agent publishes
    yield sub
    sub.close()
