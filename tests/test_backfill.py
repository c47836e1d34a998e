"""Backfill: 24 h of true-timestamped readings per device, registers that never go back,
and a running agent drains them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from c8ysim import backfill, config
from conftest import REPO, free_port, wait_until, write_config

DAY_S = 86400


def test_span_parsing():
    assert backfill.parse_span("24h") == DAY_S
    assert backfill.parse_span("90m") == 5400
    assert backfill.parse_span("7d") == 7 * DAY_S and backfill.parse_span("30") == 30
    for bad in ("", "x", "-1h", "0", "400d", "1w"):
        with pytest.raises(ValueError):
            backfill.parse_span(bad)


def test_registers_count_back_from_the_current_ones():
    cfg = config.load(str(REPO / "etc" / "c8ysim.yaml"))
    end = 1_780_000_000.0  # a June day
    model = backfill.sim.build_model(cfg.site, "grid-meter")
    state, now = model.step(model.initial_state(), end, 3 * DAY_S)  # a device running 3 days
    history = list(backfill.readings(cfg.site, "grid-meter", end - DAY_S, end, 10.0, state))
    assert len(history) == 8640
    assert [r.time for r in history[:2]] == [end - DAY_S, end - DAY_S + 10]
    for register in ("A+", "A-"):
        values = [r.value("c8y_ThreePhaseEnergyMeasurement", register) for r in history]
        assert all(a <= b for a, b in zip(values, values[1:])), register
        current = now.value("c8y_ThreePhaseEnergyMeasurement", register)
        assert values[-1] <= current and current - values[-1] < 0.05
        assert values[-1] > values[0]  # a day of energy, not a flat line
    assert not any(r.alarms_raised or r.alarms_cleared for r in history)


def test_backfill_command_fills_the_buffer_and_the_agent_drains_it(tmp_path, mosquitto,
                                                                   agent_factory):
    status_port = free_port()
    path = write_config(tmp_path, mosquitto.port, status_port, interval_s=10)
    path.write_text(path.read_text().replace("reconnect_max_s: 2}",
                                             "reconnect_max_s: 2, max_lines_per_s: 5000}"))
    result = subprocess.run(
        [sys.executable, "-m", "c8ysim", "backfill", "--config", str(path), "--device",
         "pv-roof", "--since", "24h"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "queued 8640 readings" in result.stdout
    db = sqlite3.connect(tmp_path / "state" / "pv-roof.sqlite3")
    payloads = [p.decode() for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
    db.close()
    times = [line.split(",")[2] for line in payloads if line.startswith("201,")]
    assert len(times) == 8640 and times == sorted(times)

    agent = agent_factory(path, status_port).start()
    wait_until(lambda: (agent.devices()["pv-roof"]["sent"] or 0) >= 8640, 60,
               what="the backfill to drain")  # None before the device's first beat
    assert agent.stop() == 0


def test_bad_arguments_are_refused(tmp_path):
    path = write_config(tmp_path, free_port(), free_port())
    for args, message in ((("--device", "nope", "--since", "1h"), "devices:"),
                          (("--device", "pv-roof", "--since", "soon"), "not a duration")):
        result = subprocess.run([sys.executable, "-m", "c8ysim", "backfill", "--config",
                                 str(path), *args], cwd=REPO, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 2 and message in result.stderr, result.stderr


PEAK_RSS = ("import resource, sys; from c8ysim.main import main; rc = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def _backfill_peak_kib(config, since: str) -> int:
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, "backfill", "--config",
                             str(config), "--device", "pv-roof", "--since", since],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.splitlines()[-1])


def test_backfill_streams_its_span_instead_of_holding_it(tmp_path):
    """Memory does not grow with the span (it held ~1.5 KiB per reading: a year at 10 s
    would have needed gigabytes)."""
    config = write_config(tmp_path, free_port(), free_port(), interval_s=1,
                          devices=[("pv-roof", "pv")])
    short = _backfill_peak_kib(config, "30m")  # 1 800 readings
    long = _backfill_peak_kib(config, "5h")  # 18 000 readings: +25 MiB if held
    assert long < short + 8 * 1024, (short, long)


def test_a_span_that_does_not_fit_is_refused_not_half_dropped(tmp_path):
    config = write_config(tmp_path, free_port(), free_port(), interval_s=10,
                          devices=[("pv-roof", "pv")])
    config.write_text(config.read_text().replace("storage: {path:",
                                                 "storage: {max_records: 1000, path:"))
    result = subprocess.run([sys.executable, "-m", "c8ysim", "backfill", "--config",
                             str(config), "--device", "pv-roof", "--since", "10h"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "3600 readings" in result.stderr, result.stderr
    assert "max_records" in result.stderr
    ok = subprocess.run([sys.executable, "-m", "c8ysim", "backfill", "--config", str(config),
                         "--device", "pv-roof", "--since", "2h"],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "queued 720 readings" in ok.stdout, ok.stderr
