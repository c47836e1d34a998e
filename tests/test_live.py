"""The live files (`c8ysim.live`), the scenario windows and their anchoring (`c8ysim.site`):
what Cumulocity changed in the running site, shared by the household's devices, and what a
hostile or broken file on disk cannot do.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from c8ysim import config, live
from c8ysim.commands import Commands, Context
from c8ysim.live import LiveFiles
from c8ysim.site import FAULT, WEATHER, Scenario, anchor
from conftest import free_port, wait_until, write_config

NOW = 1_780_000_000.0


def test_a_device_writes_its_own_file_and_every_device_reads_all(tmp_path):
    pv, grid = LiveFiles(tmp_path, "pv"), LiveFiles(tmp_path, "grid")
    reader = LiveFiles(tmp_path)
    assert reader.changed() and reader.read() == live.Overlay()
    pv.add_scenario(Scenario(FAULT, "inverter_trip", "pv", 600, start=NOW), NOW)
    grid.add_scenario(Scenario(WEATHER, "overcast", "", 60, start=NOW), NOW)
    pv.set_settings({"peak_kw": 8.0}, 5.0)
    assert reader.changed()
    overlay = reader.read()
    assert sorted(s.name for s in overlay.scenarios) == ["inverter_trip", "overcast"]
    assert overlay.params == {"pv": {"peak_kw": 8.0}} and overlay.intervals == {"pv": 5.0}
    assert not reader.changed()  # one stat, nothing new
    with pytest.raises(ValueError):
        reader.add_scenario(Scenario(WEATHER, "clear", "", 1, start=NOW), NOW)


def test_a_missing_directory_is_one_change_not_one_per_look(tmp_path):
    """No live file yet (the usual case): the device reads the overlay once, not at every
    look; the first file written is a change."""
    reader = LiveFiles(tmp_path / "state")
    assert reader.changed() and reader.read() == live.Overlay()
    assert not reader.changed() and not reader.changed()
    LiveFiles(tmp_path / "state", "pv").set_settings({"peak_kw": 8.0}, None)
    assert reader.changed() and reader.read().params == {"pv": {"peak_kw": 8.0}}
    assert not reader.changed()


def test_the_overlay_changes_parameters_and_adds_scenarios_to_the_site(tmp_path):
    site = config.load(str(write_config(tmp_path, 1, 2))).site
    pv = LiveFiles(tmp_path, "pv-roof")
    pv.set_settings({"peak_kw": 8.0}, None)
    pv.add_scenario(Scenario(FAULT, "comms_loss", "pv-roof", 60, start=NOW), NOW)
    changed = LiveFiles(tmp_path).read().site(site)
    assert changed.device("pv-roof").param("peak_kw") == 8.0
    assert changed.device("heatpump").params == site.device("heatpump").params
    assert changed.scenarios == site.scenarios + (
        Scenario(FAULT, "comms_loss", "pv-roof", 60.0, start=NOW),)


def test_a_new_window_of_the_same_fault_replaces_the_open_one_and_clear_ends_it(tmp_path):
    files = LiveFiles(tmp_path, "hp")
    files.add_scenario(Scenario(FAULT, "compressor_fault", "hp", 3600, start=NOW), NOW)
    files.add_scenario(Scenario(FAULT, "compressor_fault", "hp", 600, start=NOW + 100), NOW + 100)
    windows = [(s.start, s.duration_s) for s in files.read().scenarios]
    assert windows == [(NOW, 100.0), (NOW + 100, 600.0)]
    assert files.end_scenario(FAULT, "compressor_fault", NOW + 160)
    assert [(s.start, s.duration_s) for s in files.read().scenarios] == \
        [(NOW, 100.0), (NOW + 100, 60.0)]
    assert not files.end_scenario(FAULT, "compressor_fault", NOW + 200)  # none open


def test_old_windows_are_pruned_and_the_file_stays_bounded(tmp_path):
    files = LiveFiles(tmp_path, "pv")
    for i in range(live.MAX_SCENARIOS + 30):
        start = NOW + i * 10
        files.add_scenario(Scenario(WEATHER, "clear", "", 5, start=start), start)
    assert len(files.read().scenarios) == live.MAX_SCENARIOS
    later = NOW + live.KEEP_ENDED_S + 10_000
    files.add_scenario(Scenario(WEATHER, "cloudy", "", 5, start=later), later)
    assert [s.name for s in files.read().scenarios] == ["cloudy"]


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'"text"', b"{" * 100_000, b'{"scenarios": 5}',
    b'{"scenarios": [5, null, {"what": "fault"}, {"what": "fault", "name": "rm -rf", '
    b'"device": "pv", "start": 1, "duration_s": 1}, {"what": "weather", "name": "clear", '
    b'"device": "", "start": "NaN", "duration_s": 1}, {"what": "weather", "name": "clear", '
    b'"device": "", "start": 1e400, "duration_s": 1}, {"what": "fault", "name": '
    b'"inverter_trip", "device": "pv", "start": 1, "duration_s": 1e12}]}',
    b'{"params": {"peak_kw": -5, "tilt_deg": true, "rm": 1, "azimuth_deg": "1"}}',
    b'{"params": [1], "interval_s": "fast"}',
    b"\xff\xfe\x00garbage",
])
def test_a_file_that_is_not_ours_is_left_out_not_fatal(tmp_path, content, caplog):
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "pv.json").write_bytes(content)
    good = LiveFiles(tmp_path, "grid")
    good.add_scenario(Scenario(WEATHER, "overcast", "", 60, start=NOW), NOW)
    overlay = LiveFiles(tmp_path).read()
    assert [s.name for s in overlay.scenarios] == ["overcast"]
    assert overlay.params == {} and overlay.intervals == {}
    # and the device whose file it is starts afresh on its next write
    LiveFiles(tmp_path, "pv").set_settings({"peak_kw": 7.0}, None)
    assert LiveFiles(tmp_path).read().params == {"pv": {"peak_kw": 7.0}}


def test_huge_fifo_and_symlinked_files_are_refused(tmp_path, caplog):
    directory = tmp_path / "live"
    directory.mkdir()
    (directory / "big.json").write_bytes(b" " * (live.MAX_FILE_BYTES + 1))
    os.mkfifo(directory / "fifo.json")  # would block a plain open() forever
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"params": {"peak_kw": 99}}))
    (directory / "link.json").symlink_to(secret)
    started = time.monotonic()
    reader = LiveFiles(tmp_path)
    assert reader.read() == live.Overlay()
    assert time.monotonic() - started < 1.0
    text = caplog.text
    assert "larger than" in text and "not a regular file" in text and "cannot open" in text
    caplog.clear()
    reader.read()  # once per file and reason, not once a second
    assert caplog.text == ""


def test_a_write_that_fails_leaves_the_old_file(tmp_path):
    files = LiveFiles(tmp_path, "pv")
    files.set_settings({"peak_kw": 6.0}, None)
    # the temporary file cannot be created (here: a directory in its place; root ignores
    # permissions, so they cannot stand for a full disk)
    (tmp_path / "live" / f".pv.json.{os.getpid()}.tmp").mkdir()
    with pytest.raises(OSError):
        files.set_settings({"peak_kw": 7.0}, None)
    assert LiveFiles(tmp_path).read().params == {"pv": {"peak_kw": 6.0}}


def test_commands_store_their_scenarios_for_the_household(tmp_path):
    files = LiveFiles(tmp_path, "pv-roof")
    clock = [NOW]
    commands = Commands(Context("pv-roof", "pv", "Europe/Berlin", files, lambda: "read",
                                lambda: "fine", lambda: clock[0]))
    ok, text = commands.run("fault inverter_trip 10m")
    assert ok and text.startswith("inverter_trip on pv-roof from 2026-05-28T22:26:40+02:00 "
                                  "for 10m"), text
    assert commands.run("weather cloudy") == (True, "weather cloudy from 2026-05-28T22:26:40"
                                              "+02:00 until cleared (ends 2026-06-04T22:26:40"
                                              "+02:00 at the latest)")
    clock[0] += 60
    assert commands.run("clear weather") == (True, "cleared cloudy at 2026-05-28T22:27:40+02:00")
    names = {(s.name, s.duration_s) for s in LiveFiles(tmp_path).read().scenarios}
    assert names == {("inverter_trip", 600.0), ("cloudy", 60.0)}
    assert commands.run("reading") == (True, "read")
    assert commands.run("FAULT inverter_trip 1d")[0]  # the verb is not case-sensitive
    assert not commands.run("fault inverter_trip 8d")[0]  # over the 7-day cap
    assert not commands.run("fault\x00inverter_trip")[0]
    ok, text = commands.run("fault comms_loss")  # offline, the device could not hear a clear
    assert not ok and "needs a duration" in text
    assert not commands.run("fault comms_loss 2d")[0] and commands.run("fault comms_loss 1d")[0]


@given(st.text(max_size=300))
def test_no_text_makes_a_command_raise(tmp_path_factory, text):
    files = LiveFiles(tmp_path_factory.mktemp("live"), "grid")
    commands = Commands(Context("grid", "grid", "UTC", files, lambda: "read", lambda: "fine",
                                lambda: NOW))
    ok, answer = commands.run(text)
    assert isinstance(ok, bool) and isinstance(answer, str) and answer
    assert len(answer) <= 1000


def test_daily_and_one_off_windows():
    daily = Scenario(FAULT, "outage", "grid", 1800, daily_at_s=23.5 * 3600)
    day = 86400 * 20000
    assert daily.window(day + 23.5 * 3600) == (day + 23.5 * 3600, day + 24 * 3600)
    assert daily.window(day + 24 * 3600) is None  # the end is not in the window
    across = Scenario(FAULT, "outage", "grid", 3600, daily_at_s=23.5 * 3600)
    assert across.window(day + 86400 + 60) == (day + 23.5 * 3600, day + 24.5 * 3600)
    # in a zone two hours ahead of UTC, 23:30 local is 21:30 UTC
    assert daily.window(day + 21.5 * 3600 + 1, 7200) == (day + 21.5 * 3600, day + 22 * 3600)
    once = Scenario(FAULT, "outage", "grid", 60, start=NOW)
    assert once.window(NOW - 1) is None and once.window(NOW + 59.9) == (NOW, NOW + 60)
    assert once.last_end(NOW + 100) == NOW + 60 and once.last_end(NOW + 30) is None
    assert Scenario(FAULT, "outage", "grid", 60, after_s=10).window(NOW) is None  # unanchored


def test_anchoring_keeps_the_time_of_an_entry_a_reload_keeps():
    a = Scenario(FAULT, "outage", "grid", 60, after_s=120)
    b = Scenario(WEATHER, "clear", "", 60, after_s=30)
    daily = Scenario(WEATHER, "overcast", "", 60, daily_at_s=0)
    first = anchor((a, b, daily), NOW)
    assert [s.start for s in first] == [NOW + 120, NOW + 30, None]
    again = anchor((a, daily, b), NOW + 500, first)  # reordered, unchanged
    assert [s.start for s in again] == [NOW + 120, None, NOW + 30]
    changed = anchor((Scenario(FAULT, "outage", "grid", 90, after_s=120), b), NOW + 500, first)
    assert [s.start for s in changed] == [NOW + 620, NOW + 30]


def test_a_running_agent_shrugs_off_a_garbage_live_file_and_follows_a_good_one(
        tmp_path, mosquitto, agent_factory):
    status_port = free_port()
    path = write_config(tmp_path, mosquitto.port, status_port,
                        devices=[("pv-roof", "pv"), ("grid-meter", "grid")])
    agent = agent_factory(path, status_port).start()
    wait_until(lambda: all(d["connected"] for d in agent.devices().values()), 15, what="online")
    pids = {name: d["pid"] for name, d in agent.devices().items()}
    directory = tmp_path / "state" / "live"
    directory.mkdir(exist_ok=True)
    (directory / "intruder.json").write_bytes(b"{\"scenarios\": [\x00")
    # another device's file, as that device writes it: a grid outage from now on
    LiveFiles(tmp_path / "state", "grid-meter").add_scenario(
        Scenario(FAULT, "outage", "grid-meter", 3600, start=time.time()), time.time())
    wait_until(lambda: [f[0] for f in agent.devices()["pv-roof"]["faults"]] == ["outage"], 10,
               what="the pv device feels the grid outage")
    assert {name: d["pid"] for name, d in agent.devices().items()} == pids
    assert agent.log_text().count("intruder.json: not JSON") == 2  # once per device
    assert agent.stop() == 0
