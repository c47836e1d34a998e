"""The real agent against a private TLS mosquitto with a throwaway CA.

Right CA: every device comes online and its measurements arrive. Wrong CA, or plain MQTT to
the TLS port: no device comes online, the status page says why, and the agent keeps trying
(connect attempts keep growing; the process stays up).
"""

from __future__ import annotations

import re
from pathlib import Path

from certs import PASSWORD, Pki, TlsBroker, other_pki, pki, subscriber, tls_broker  # noqa: F401 (fixtures)
from conftest import free_port, wait_until

DEVICES = (("pv-roof", "pv"), ("grid-meter", "grid"))
CONNECT_TIMEOUT_S = 15
CAP_S = 2  # cumulocity.reconnect_max_s in every test config


def agent_config(directory: Path, port: int, status_port: int, tls: str,
                 credentials: str = f"tenant: t1, user: u, password: {PASSWORD}",
                 devices=DEVICES, host: str = "127.0.0.1") -> Path:
    """A config of our own: write_config() writes a password-only cumulocity line."""
    device_lines = "".join(  # explicit IDs: the default ones carry this machine's ID
        f"  - {{name: {name}, type: {kind}, interval_s: 0.5, "
        f"external_id: {rest[0] if rest else 'c8ysim-' + name}}}\n"
        for name, kind, *rest in devices)
    path = directory / "c8ysim.yaml"
    path.write_text(
        "site: {latitude: 52.52, longitude: 13.40, timezone: Europe/Berlin, seed: 1}\n"
        f"cumulocity: {{host: '{host}', port: {port}, tls: {tls}"
        f"{', ' + credentials if credentials else ''}, reconnect_max_s: {CAP_S}}}\n"
        f"storage: {{path: '{directory / 'state'}'}}\n"
        f"status: {{listen: '127.0.0.1:{status_port}'}}\n"
        "devices:\n" + device_lines)
    return path


def start_agent(agent_factory, directory: Path, port: int, tls: str, **kwargs):
    status_port = free_port()
    agent = agent_factory(agent_config(directory, port, status_port, tls, **kwargs),
                          status_port)
    return agent.start()


def attempts(agent, device: str) -> int:
    """Failed connect attempts of a device so far (each logs its retry), from the agent log."""
    return len(retry_delays(agent, device))


def retry_delays(agent, device: str) -> list[float]:
    return [float(d) for d in re.findall(
        rf"^<\d>{re.escape(device)}: .*; reconnecting in ([0-9.]+) s$", agent.log_text(),
        re.MULTILINE)]


def assert_keeps_retrying(agent, names, at_least: int = 3, timeout: float = 12) -> None:
    """Every device makes `at_least` more attempts, never comes online; the agent stays up."""
    before = {name: attempts(agent, name) for name in names}
    wait_until(lambda: all(attempts(agent, n) >= before[n] + at_least for n in names),
               timeout, what=f"{at_least} more connect attempts per device")
    assert agent.proc.poll() is None, agent.log_text()
    devices = agent.devices()
    for name in names:
        assert not devices[name]["connected"], devices[name]
        assert devices[name]["state"] == "running", devices[name]
        assert devices[name]["restarts"] == 0, "the child crashed instead of retrying"
    delays = [d for name in names for d in retry_delays(agent, name)]
    assert delays and max(delays) <= CAP_S + 0.01, delays


def wait_for_errors(agent, names, pattern: str) -> dict:
    """Wait until every device is offline with a last_error matching `pattern`."""
    seen: dict = {}

    def all_failed():
        seen.update(agent.devices())
        return all(not seen.get(n, {}).get("connected") and
                   re.search(pattern, seen.get(n, {}).get("last_error") or "", re.IGNORECASE)
                   for n in names)
    try:
        wait_until(all_failed, CONNECT_TIMEOUT_S, what=f"last_error matching {pattern!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {[seen.get(n) for n in names]}") from None
    return seen


def test_right_ca_connects_and_measurements_arrive(tmp_path, tls_broker, subscriber,
                                                    agent_factory):
    agent = start_agent(agent_factory, tmp_path, tls_broker.tls_port,
                        f"{{ca_file: '{tls_broker.pki.ca.cert}'}}", host="localhost")
    names = [name for name, _ in DEVICES]
    wait_until(lambda: all(agent.devices().get(n, {}).get("connected") for n in names),
               CONNECT_TIMEOUT_S, what="every device online over TLS")
    assert {d["connection"] for d in agent.devices().values()} == {"online"}
    wait_until(lambda: all(sum(1 for line in subscriber.lines()
                               if line.startswith(f"201,{t},")) >= 2
                           for t in ("c8ysim_PvInverter", "c8ysim_GridMeter")),
               10, what="measurements from every device")
    lines = subscriber.lines()
    for name in names:
        assert any(line.startswith(f"100,{name},") for line in lines), lines
    assert agent.stop() == 0


def test_server_name_is_verified_too(tmp_path, pki: Pki, agent_factory):
    """Signed by the right CA but issued for another name: refused, not silently accepted."""
    elsewhere = pki.server_cert("server-elsewhere", "DNS:elsewhere.invalid")
    broker = TlsBroker(tmp_path, pki, server=elsewhere).start()
    try:
        agent = start_agent(agent_factory, tmp_path, broker.tls_port,
                            f"{{ca_file: '{pki.ca.cert}'}}", devices=(("pv-roof", "pv"),))
        wait_for_errors(agent, ["pv-roof"], r"certificate|TLS|SSL|hostname|IP address")
        assert_keeps_retrying(agent, ["pv-roof"], at_least=2)
        assert agent.stop() == 0
    finally:
        broker.stop()


def test_wrong_ca_fails_clearly_and_keeps_retrying(tmp_path, tls_broker, other_pki: Pki,
                                                   agent_factory):
    agent = start_agent(agent_factory, tmp_path, tls_broker.tls_port,
                        f"{{ca_file: '{other_pki.ca.cert}'}}")
    names = [name for name, _ in DEVICES]
    wait_for_errors(agent, names, r"certificate|TLS|SSL")
    assert_keeps_retrying(agent, names)
    assert {d["connection"] for d in agent.devices().values()} <= {"disconnected", "connecting"}
    assert agent.stop() == 0


def test_system_trust_store_does_not_trust_a_private_ca(tmp_path, tls_broker, agent_factory):
    """`tls: true` verifies against the system store: our throwaway CA is not in it."""
    agent = start_agent(agent_factory, tmp_path, tls_broker.tls_port, "true",
                        devices=(("pv-roof", "pv"),))
    wait_for_errors(agent, ["pv-roof"], r"certificate|TLS|SSL")
    assert_keeps_retrying(agent, ["pv-roof"], at_least=2)
    assert agent.stop() == 0


def test_plain_mqtt_to_the_tls_port_fails_and_keeps_retrying(tmp_path, tls_broker,
                                                             agent_factory):
    agent = start_agent(agent_factory, tmp_path, tls_broker.tls_port, "false")
    names = [name for name, _ in DEVICES]
    wait_for_errors(agent, names, r".")
    assert_keeps_retrying(agent, names)
    assert agent.stop() == 0


def test_ca_file_gone_at_reconnect_is_reported_and_retried(tmp_path, tls_broker, subscriber,
                                                          agent_factory):
    """The CA file is read again for every connection: if it vanished (being rotated), the
    device says so and keeps retrying instead of crashing, and connects once it is back."""
    ca_copy = tmp_path / "ca-copy.pem"
    ca_copy.write_bytes(tls_broker.pki.ca.cert.read_bytes())
    agent = start_agent(agent_factory, tmp_path, tls_broker.tls_port,
                        f"{{ca_file: '{ca_copy}'}}", devices=(("pv-roof", "pv"),))
    wait_until(lambda: agent.devices()["pv-roof"]["connected"], CONNECT_TIMEOUT_S,
               what="the device online")
    ca_copy.unlink()
    tls_broker.restart()  # drops the connection; every reconnect needs the CA file
    wait_for_errors(agent, ["pv-roof"], re.escape(str(ca_copy)))
    assert_keeps_retrying(agent, ["pv-roof"], at_least=2)
    ca_copy.write_bytes(tls_broker.pki.ca.cert.read_bytes())
    wait_until(lambda: agent.devices()["pv-roof"]["connected"], 2 * CAP_S + 5,
               what="the device back online once the CA file is back")
    assert agent.devices()["pv-roof"]["restarts"] == 0
    assert agent.stop() == 0
