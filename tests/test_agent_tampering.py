"""The running agent against its own CLI and against its own files changed under it.

Real agent processes, real mosquitto, a real subscriber counting what arrives:

- `c8ysim backfill` and `send-test` write into a running device's buffer: no live reading is
  lost (they vanished for the whole backfilled span when each process numbered rows itself).
- The state directory is deleted and a buffer file destroyed while the devices run: deleted
  files are copied back (nothing lost), destroyed ones are counted as lost in /api/status,
  /metrics and the journal, and no energy register that reached the broker ever goes down.
"""

from __future__ import annotations

import collections
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from chaos_collector import _register_decreases, read_buffer
from conftest import REPO, Recorder, free_port, wait_until, write_config
from fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(180)
INTERVAL_S = 0.2


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "c8ysim", *args, "--config", str(config)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def measurements(lines: list[str]) -> list[list[str]]:
    return [line.split(",") for line in lines if line.startswith("201,")]


@pytest.fixture
def uplink(mosquitto):
    """mosquitto, a subscriber already listening, and a fault proxy the agent connects to
    (offline = the proxy refuses; the broker's port is never given up, so no other socket
    can take it meanwhile)."""
    recorder = Recorder(mosquitto.port)
    wait_until(lambda: recorder.client.is_connected(), 5, what="the recorder to connect")
    time.sleep(0.3)  # its SUBACK
    proxy = FaultProxy(mosquitto.port)
    yield proxy, recorder
    proxy.close()
    recorder.close()


def test_backfill_and_send_test_beside_a_running_device_lose_no_live_reading(
        tmp_path, agent_factory, uplink):
    proxy, recorder = uplink
    proxy.refuse(True)  # offline at first: the device queues everything
    status_port = free_port()
    config = write_config(tmp_path, proxy.port, status_port, interval_s=INTERVAL_S,
                          devices=[("grid-meter", "grid")])
    config.write_text(config.read_text().replace("reconnect_max_s: 2}",
                                                 "reconnect_max_s: 2, max_lines_per_s: 5000}"))
    agent = agent_factory(config, status_port).start()
    time.sleep(1.0)
    backfill_start = time.time()
    backfill = cli(config, "backfill", "--device", "grid-meter", "--since", "10m")
    assert backfill.returncode == 0, backfill.stderr
    backfill_end = time.time()
    for i in range(5):
        sent = cli(config, "send-test", "--device", "grid-meter", "--topic", "s/us",
                   "--message", f'400,c8ysim_Test,"cli {i}"')
        assert sent.returncode == 0, sent.stderr
    time.sleep(1.5)  # live readings after the CLI: the ones the old numbering lost
    queued = agent.devices()["grid-meter"]["queued"]
    assert queued >= 3000 + 5, queued  # the device's depth counts the CLI's rows
    proxy.refuse(False)
    wait_until(lambda: agent.devices()["grid-meter"]["queued"] <= 2, 60,
               what="the backlog to drain")
    time.sleep(1.0)
    stopped = time.time()
    assert agent.stop() == 0
    time.sleep(0.5)
    lines = recorder.lines()
    # Every row that entered the buffer (the device's, the backfill's, send-test's) arrived.
    generated = read_buffer(tmp_path / "state" / "grid-meter.sqlite3")
    buffered = collections.Counter(line for line in lines if line[:4] in ("201,", "400,"))
    # The backfill sits on the device's slot grid and repeats, byte for byte, the live
    # readings of the slots both have (the second it started and before): such a line
    # stands for two rows. Any other line counts once (a duplicate delivery is not a row).
    both = lambda line: (line.startswith("201,")  # noqa: E731
                         and epoch(line.split(",")[2]) <= backfill_start + INTERVAL_S)
    rows = sum(min(n, 2) if both(line) else 1 for line, n in buffered.items())
    assert generated["outbox"] == [] and rows == generated["generated"]
    # And the device kept reading: the old numbering lost every live reading of the next
    # 10 minutes (its rows collided with the backfill's and were ignored, never counted).
    # A busy machine may make the loop skip a slot (never generated, not lost): at most 2.
    times = sorted({epoch(f[2]) for f in measurements(lines)})
    live = [t for t in times if backfill_end + INTERVAL_S < t < stopped - 1.0]
    assert live, "no live readings after the backfill arrived"
    expected = round((live[-1] - live[0]) / INTERVAL_S) + 1
    assert expected - len(live) <= 2, f"live readings missing: {expected - len(live)}"
    assert len([t for t in times if t < backfill_end - 2.0]) >= 2990  # the backfill
    assert sum(1 for line in lines if line.startswith("400,c8ysim_Test,")) == 5


def test_poison_topics_are_refused_before_they_reach_a_buffer(tmp_path):
    config = write_config(tmp_path, free_port(), free_port())
    for topic in ("x" * 70_000, "s/us\n<0>forged", "s/\udcffus"):
        result = subprocess.run(
            [sys.executable, "-m", "c8ysim", "send-test", "--config", str(config), "--device",
             "pv-roof", "--topic", topic, "--message", "400,x,y"],
            cwd=REPO, capture_output=True, timeout=30,
            env=None) if "\udcff" not in topic else subprocess.run(
            [sys.executable.encode(), b"-m", b"c8ysim", b"send-test", b"--config",
             bytes(config), b"--device", b"pv-roof", b"--topic", b"s/\xffus", b"--message",
             b"400,x,y"], cwd=REPO, capture_output=True, timeout=30)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr) < 400 and b"\n<0>" not in result.stderr
    assert not list((tmp_path / "state").glob("*.sqlite3"))


def test_state_tampered_under_the_running_agent_is_counted_and_registers_never_go_back(
        tmp_path, agent_factory, uplink):
    proxy, recorder = uplink
    status_port = free_port()
    config = write_config(tmp_path, proxy.port, status_port, interval_s=INTERVAL_S)
    state = tmp_path / "state"
    agent = agent_factory(config, status_port).start()
    wait_until(lambda: all(d.get("connected") for d in agent.devices().values()), 20,
               what="every device online")
    time.sleep(1.0)
    pids = sorted(d["pid"] for d in agent.devices().values())
    shutil.rmtree(state)  # the whole state directory, while running
    wait_until(lambda: all((state / f"{name}.sqlite3").exists()
                           for name in ("pv-roof", "heatpump", "grid-meter")), 10,
               what="the files copied back")
    time.sleep(1.0)
    assert all(d.get("lost") == 0 for d in agent.devices().values()), agent.devices()

    proxy.refuse(True)  # rows queue up, then the heat pump's file is destroyed in place
    proxy.cut()
    wait_until(lambda: agent.devices()["heatpump"]["queued"] >= 10, 20, what="a backlog")
    path = state / "heatpump.sqlite3"
    db = sqlite3.connect(path, timeout=5)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    path.write_bytes(b"\0" * path.stat().st_size)
    wait_until(lambda: (agent.devices()["heatpump"].get("lost") or 0) >= 10, 20,
               what="the loss to be counted")
    lost = agent.devices()["heatpump"]["lost"]
    metrics = agent.get("/metrics").decode()
    assert re.search(rf'c8ysim_lost_total\{{device="heatpump"\}} {lost}\b', metrics), metrics
    assert "lost" in agent.get("/").decode()
    proxy.refuse(False)
    wait_until(lambda: all(d.get("connected") and (d.get("queued") or 0) <= 2
                           for d in agent.devices().values()), 40, what="recovery")
    time.sleep(1.0)
    assert sorted(d["pid"] for d in agent.devices().values()) == pids  # no child died
    assert agent.stop() == 0
    time.sleep(0.5)
    log = agent.log_text()
    assert re.search(r"^<4>heatpump: .*lost", log, re.M), log[-3000:]
    assert all(re.match(r"<\d>", line) for line in log.splitlines() if line), log[-3000:]
    streams: dict[str, dict] = {}
    decreases = sum(_register_decreases(f, streams.setdefault(f[1], {}))
                    for f in measurements(recorder.lines()))
    assert decreases == 0
    again = agent_factory(config, status_port).start()  # the count outlives a restart
    wait_until(lambda: again.devices().get("heatpump", {}).get("lost") is not None, 10,
               what="the heat pump's status")
    assert again.devices()["heatpump"]["lost"] == lost
    assert again.stop() == 0
