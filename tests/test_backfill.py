"""Backfill: 24 h of true-timestamped readings per device on the device's interval grid,
the same readings whatever second it ran, registers that never go back, the grid balance
at every backfilled timestamp, and a running agent drains them."""

from __future__ import annotations

import sqlite3
import subprocess
import time
import sys
from datetime import datetime

import pytest

from c8ysim import backfill, config
from c8ysim.sim.household import Household
from conftest import REPO, free_port, wait_until, write_config

DAY_S = 86400
JUNE = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC, a multiple of 10 s


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
    assert all(datetime.fromisoformat(t).timestamp() % 10 == 0 for t in times)  # the grid
    wait_until(lambda: (agent.devices()["pv-roof"]["sent"] or 0) >= 8640, 60,
               what="the backfill to drain")  # None before the device's first beat
    assert agent.stop() == 0


def sample_site():
    return config.load(str(REPO / "etc" / "c8ysim.yaml")).site


def ran_until(site, name: str, since: float, until: float, interval_s: float):
    """(state as the device stores it, {t: reading}) of a device that ran on its grid."""
    model = backfill.sim.build_model(site, name)
    state, live = model.initial_state(), {}
    for k in backfill.slots(since, until + interval_s / 2, interval_s):
        t = backfill.slot_time(k, interval_s)
        dt = t - state["t"] if "t" in state else 0.0
        state, reading = model.step(state, t, dt)
        state = {**state, "t": t}
        live[t] = reading
    return state, live


def by_time(history) -> dict:
    return {r.time: (r.series, r.events) for r in history}


def test_timestamps_are_the_interval_grid_like_live_readings():
    site = sample_site()
    for interval in (10.0, 7.0, 0.5, 900.0):
        start, span = JUNE + 3.7, 2 * 3600 if interval > 1 else 600
        history = list(backfill.readings(site, "pv-roof", start, start + span, interval, None))
        assert len(history) == backfill.count(start, start + span, interval)
        assert abs(len(history) - span / interval) <= 1
        for reading in history:
            assert reading.time == round(round(reading.time / interval) * interval, 3)
            assert start <= reading.time < start + span
        assert [r.time for r in history] == sorted(r.time for r in history)


@pytest.mark.parametrize("name", ["pv-roof", "heatpump", "grid-meter"])
def test_two_backfills_seconds_apart_produce_identical_data(name):
    site = sample_site()
    winter = 1_768_000_000.0  # 2026-01-09 23:06 UTC: the heat pump defrosts
    state, _ = ran_until(site, name, winter - DAY_S, winter, 30.0)
    runs = [by_time(backfill.readings(site, name, now - DAY_S / 2, now, 30.0, state))
            for now in (winter + 1.3, winter + 14.9, winter + 29.99)]
    for other in runs[1:]:
        common = runs[0].keys() & other.keys()
        assert len(common) >= 1439
        assert all(runs[0][t] == other[t] for t in common)
    events = [e for series, events in runs[0].values() for e in events]
    assert name != "heatpump" or events  # the comparison covers events too


def test_backfilled_registers_repeat_what_the_running_device_reported():
    site = sample_site()
    state, live = ran_until(site, "heatpump", JUNE - DAY_S, JUNE, 30.0)
    history = list(backfill.readings(site, "heatpump", JUNE - DAY_S / 2 + 2.5, JUNE + 2.5, 30.0,
                                     state))
    assert history[-1].time == state["t"]  # the state's own slot
    registers = {("c8y_ThreePhaseEnergyMeasurement", "A+"), ("c8ysim_ThermalEnergy", "heat")}
    for reading in history:
        for fragment, series in registers:
            assert reading.value(fragment, series) == pytest.approx(
                live[reading.time].value(fragment, series), abs=1.01e-4)
        assert reading.series == tuple(  # everything else is the live reading as it was
            s if (s.fragment, s.series) not in registers else reading.series[i]
            for i, s in enumerate(live[reading.time].series))
    assert history[-1].value("c8ysim_ThermalEnergy", "heat") == round(state["registers"]["heat"], 4)


def test_a_stopped_devices_registers_hold_after_its_last_reading():
    site = sample_site()
    stopped = JUNE - 6 * 3600
    state, live = ran_until(site, "grid-meter", stopped - DAY_S / 2, stopped, 60.0)
    history = list(backfill.readings(site, "grid-meter", JUNE - DAY_S / 2, JUNE, 60.0, state))
    imports = [r.value("c8y_ThreePhaseEnergyMeasurement", "A+") for r in history]
    assert all(a <= b for a, b in zip(imports, imports[1:]))
    held = [r for r in history if r.time >= state["t"]]  # its last slot and after
    assert len(held) == backfill.count(state["t"], JUNE, 60.0) > 300
    assert {r.value("c8y_ThreePhaseEnergyMeasurement", "A+") for r in held} == {
        round(state["registers"]["A+"], 4)}
    assert history[0].value("c8y_ThreePhaseEnergyMeasurement", "A+") == pytest.approx(
        live[history[0].time].value("c8y_ThreePhaseEnergyMeasurement", "A+"), abs=1.01e-4)


def test_without_a_stored_state_the_registers_are_zero():
    history = backfill.readings(sample_site(), "pv-roof", JUNE - DAY_S, JUNE, 60.0, None)
    assert {r.value("c8y_SinglePhaseEnergyMeasurement", "A-") for r in history} == {0.0}


def test_the_grid_balance_holds_at_every_backfilled_timestamp():
    site = sample_site()
    noon = 1_781_870_400.0  # 2026-06-19 12:00 UTC: PV exports
    spans = {name: by_time(backfill.readings(site, name, noon - 3 * 3600 + 1.7, noon + 3600,
                                             10.0, None))
             for name in ("pv-roof", "heatpump", "grid-meter")}
    assert spans["pv-roof"].keys() == spans["heatpump"].keys() == spans["grid-meter"].keys()
    house, generated = Household(site), []
    three, single = "c8y_ThreePhaseEnergyMeasurement", "c8y_SinglePhaseEnergyMeasurement"
    for t in spans["grid-meter"]:
        pv, hp, grid = ({(s.fragment, s.series): s.value for s in spans[name][t][0]}
                        for name in ("pv-roof", "heatpump", "grid-meter"))
        net = grid[three, "P+"] - grid[three, "P-"]
        load = house.snapshot(t).load_w
        assert net == pytest.approx(load + hp[three, "P+"] - pv[single, "P-"], abs=0.2), t
        generated.append(pv[single, "P-"])
    assert len(generated) == 4 * 360 - 1 and max(generated) > 1000.0


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


def _voltages(tmp_path, device: str) -> dict[float, float]:
    """{epoch: voltage of L1} of the grid meter's buffered 201 lines."""
    db = sqlite3.connect(tmp_path / "state" / f"{device}.sqlite3")
    payloads = [p.decode() for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
    db.close()
    found = {}
    for line in payloads:
        fields = line.split(",")
        if fields[0] == "201" and "voltage:1" in fields:
            at = fields.index("voltage:1")
            found[datetime.fromisoformat(fields[2]).timestamp()] = float(fields[at + 1])
    return found


def test_backfill_replays_scheduled_and_commanded_faults(tmp_path):
    """A daily outage at a site time, and one started from Cumulocity (the live file), are
    in the backfilled past: 0 V at the meter inside each window, not outside."""
    from zoneinfo import ZoneInfo

    from c8ysim.live import LiveFiles
    from c8ysim.site import FAULT, Scenario

    now = time.time()
    daily_start = (now - 3 * 3600) // 600 * 600  # a slot 3 h ago, as the site's HH:MM
    local = datetime.fromtimestamp(daily_start, ZoneInfo("Europe/Berlin"))
    schedule = (f"scenarios:\n  - {{at: \"{local:%H:%M}\", for: 20m, device: grid-meter, "
                "fault: outage}\n")
    path = write_config(tmp_path, free_port(), free_port(), interval_s=60,
                        devices=[("pv-roof", "pv"), ("grid-meter", "grid")], extra=schedule)
    commanded_start = now - 5 * 3600
    LiveFiles(tmp_path / "state", "grid-meter").add_scenario(
        Scenario(FAULT, "outage", "grid-meter", 600.0, start=commanded_start), now - 5 * 3600)
    result = subprocess.run(
        [sys.executable, "-m", "c8ysim", "backfill", "--config", str(path), "--device",
         "grid-meter", "--since", "6h"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    volts = _voltages(tmp_path, "grid-meter")
    assert len(volts) >= 359
    windows = [(daily_start, daily_start + 1200), (commanded_start, commanded_start + 600)]
    for t, v in volts.items():
        inside = any(start <= t < end for start, end in windows)
        assert (v == 0) == inside, (t, v, windows)
