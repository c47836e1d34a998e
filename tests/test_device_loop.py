"""The device loop's schedule: when it reads, when it beats (c8ysim.device).

A beat due just before a reading waits for the reading's acknowledgement (one wake-up for
both, the beat carrying the reading), but never longer than BEAT_LATE_S; the next reading
is aimed at the slot after the one read, whatever the wall clock did."""

from __future__ import annotations

import os
import random
import socket
import time
import types

import pytest

from c8ysim import device
from c8ysim.config import load
from c8ysim.device import BEAT_EARLY_S, BEAT_LATE_S, Device
from c8ysim.heartbeat import Heartbeat, Link
from c8ysim.storage import open_buffer
from conftest import free_port, write_config


def loop(next_heartbeat: float, next_tick: float, inflight: int = 0) -> Device:
    """A Device with only what the schedule reads (no buffer, model or uplink)."""
    d = Device.__new__(Device)
    d.next_heartbeat, d.next_tick = next_heartbeat, next_tick
    d.session = types.SimpleNamespace(inflight=dict.fromkeys(range(inflight)),
                                      wakeup_in=lambda now: None)
    d.bootstrap = None
    d.read_at = -1e9
    return d


def test_a_beat_goes_out_when_due_and_nothing_waits():
    d = loop(next_heartbeat=10.0, next_tick=10.9)
    assert not d._beat_due(10.0 - BEAT_EARLY_S - 0.01)
    assert d._beat_due(10.0 - BEAT_EARLY_S)  # a turn awake anyway takes it a little early
    assert d._beat_due(10.0)


def test_a_beat_due_just_before_a_reading_waits_for_it_but_not_long():
    d = loop(next_heartbeat=10.0, next_tick=10.2)
    assert not d._beat_due(10.0) and not d._beat_due(10.3)
    assert d.wake_in(10.0) == pytest.approx(0.2)  # the reading's turn, not the beat's
    assert d._beat_due(10.0 + BEAT_LATE_S)  # the reading never came: the beat goes anyway


def test_a_beat_waits_for_the_acknowledgement_of_a_reading_in_flight():
    d = loop(next_heartbeat=10.0, next_tick=11.0, inflight=1)
    assert not d._beat_due(10.1)
    assert d.wake_in(10.1) == pytest.approx(BEAT_LATE_S - 0.1)  # the PUBACK wakes it sooner
    d.session.inflight.clear()
    assert d._beat_due(10.1)
    assert d._beat_due(10.0 + BEAT_LATE_S) and loop(10.0, 11.0, 3)._beat_due(10.0 + BEAT_LATE_S)


def test_a_beat_due_soon_after_a_reading_goes_out_with_its_acknowledgement():
    """Whatever the phase of beats and readings, they come to share a wake-up."""
    d = loop(next_heartbeat=10.3, next_tick=11.0)
    assert not d._beat_due(10.0)  # no reading just now: only BEAT_EARLY_S early
    d.read_at = 10.0 - 0.002  # the PUBACK turn of a reading
    assert d._beat_due(10.0)
    assert not loop(10.0 + BEAT_LATE_S + 0.01, 11.0)._beat_due(10.0)


def test_readings_faster_than_beats_do_not_make_beats_faster():
    d = loop(next_heartbeat=10.3, next_tick=10.25)
    d.read_at = 10.0
    assert not d._beat_due(10.0)
    assert d._beat_due(10.3 - BEAT_EARLY_S)


def test_a_reading_due_before_the_beat_does_not_hold_it():
    """Readings faster than beats (interval 0.25 s): each beat goes out on time."""
    d = loop(next_heartbeat=10.0, next_tick=9.9)
    assert d._beat_due(10.0)
    assert d.wake_in(9.5) == pytest.approx(0.4)


@pytest.mark.parametrize("wall, expected", [
    (100.02, 0.98),  # read on time: the next slot
    (99.999, 1.0),  # woke a little early and read the slot ahead: its next, not it again
    (101.5, 0.0),  # late, or the wall clock jumped ahead: read now
    (40.0, 1.0),  # the wall clock jumped back a minute: wait one interval, not a minute
])
def test_the_next_reading_is_aimed_at_the_slot_after_the_one_read(monkeypatch, wall, expected):
    monkeypatch.setattr(device.time, "time", lambda: wall)
    assert device._until_slot_after(100.0, 1.0) == pytest.approx(expected)


def run_loop(interval_s: float, first_beat: float, seconds: float = 30.0,
             ack_s: float = 0.002) -> tuple[list[tuple[float, bool]], list[float]]:
    """The loop's schedule alone, turn by turn, with a few ms of jitter on every wake-up and
    PUBACK (a loaded machine): the beats (time, a reading in flight?) and the wake-ups."""
    rng = random.Random(1)
    d = loop(next_heartbeat=first_beat, next_tick=0.0)
    now, beats, wakes, ack_at = 0.0, [], [], None
    while now < seconds:
        wakes.append(now)
        if now >= d.next_tick:  # turn(): the reading, published at once
            d.read_at, d.next_tick = now, now + interval_s
            d.session.inflight, ack_at = {1: None}, now + ack_s
        if d._beat_due(now):
            beats.append((now, bool(d.session.inflight)))
            d.next_heartbeat = now + device.BEAT_BUSY_S
        wake = now + d.wake_in(now) + rng.uniform(0, 0.003)
        if ack_at is not None and ack_at <= wake:
            now, ack_at, d.session.inflight = ack_at + rng.uniform(0, 0.003), None, {}
        else:
            now = wake
    return beats, wakes


@pytest.mark.parametrize("interval_s", [0.25, 0.5, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("first_beat", [0.0, 0.2, 0.5, 0.8])
def test_beats_stay_a_second_apart_and_never_catch_a_reading_in_flight(interval_s, first_beat):
    """Readings every 0.5 s kept a beat waiting for the next reading, and the next, until
    its 0.5 s limit sent it with that reading in flight: beats 1.5 s apart, each showing a
    queued row (the comms_loss test waited in vain for `queued` 0)."""
    beats, wakes = run_loop(interval_s, first_beat)
    steady = [(t, busy) for t, busy in beats if t > 10]
    gaps = [b[0] - a[0] for a, b in zip(steady, steady[1:])]
    assert max(gaps) < 1.05 and min(gaps) > 1.0 - BEAT_EARLY_S - 0.01, gaps
    assert not any(busy for _, busy in steady)
    per_s = len([t for t in wakes if t > 10]) / 20
    assert per_s <= 2 / min(interval_s, 1.0) + 1.05  # a reading and its PUBACK, and a beat
    if interval_s == 1.0:
        assert per_s <= 2.05  # the beat shares the reading's PUBACK turn


def test_a_steady_device_beats_less_often_and_at_once_when_its_link_changes(tmp_path,
                                                                           mosquitto):
    """A real device in this process against mosquitto: its first beats come at once (the
    link changes: connecting, then online), then, online with nothing queued, one beat every
    BEAT_STEADY_S capped at a quarter of heartbeat_timeout_s (here 2 s), and its loop sleeps
    between them instead of waking every second. Readings every second do not make the
    beats more frequent; each beat shows the newest reading."""
    path = write_config(tmp_path, mosquitto.port, free_port(), interval_s=1.0,
                        devices=[("pv-roof", "pv")],
                        extra="supervisor: {heartbeat_timeout_s: 8.0}\n")
    config = load(str(path))
    mine, supervisor_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    buffer = open_buffer(config.storage, "pv-roof")
    d = Device(config, config.device("pv-roof"), buffer, mine, os.getppid())
    d.next_tick = time.monotonic() + 3600  # no reading for now: the beats alone
    beats, wall_start = [], time.time()

    def run(seconds: float) -> int:
        wakes, until = 0, time.monotonic() + seconds
        while time.monotonic() < until:
            d.turn(time.monotonic())
            d._wait(min(d.wake_in(time.monotonic()), max(0.0, until - time.monotonic())))
            wakes += 1
            while True:
                try:
                    data = supervisor_end.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                beat = Heartbeat.decode(data)  # read after the wait: its own time says when
                beats.append((beat.time - wall_start, beat.connection, beat.last_reading))
        return wakes

    try:
        wakes = run(9.0)
        online = [t for t, link, _ in beats if link == Link.ONLINE]
        assert online and online[0] < 2.0, beats  # the link's change is shown at once
        assert beats[0][0] < 0.5 and beats[0][1] != Link.ONLINE, beats
        gaps = [b - a for a, b in zip(online, online[1:])]
        assert len(gaps) >= 3 and all(1.9 <= gap <= 2.3 for gap in gaps), beats
        assert wakes <= len(beats) + 6, (wakes, beats)  # woken by its beats, not every second
        reading_from = len(beats)
        d.next_tick = time.monotonic()  # now a reading every second
        run(6.5)
        with_readings = beats[reading_from:]
        times = [t for t, _, _ in with_readings]
        assert 2 <= len(times) <= 4, beats  # every 2 s, not with every reading
        assert all(1.9 <= b - a <= 2.3 for a, b in zip(times, times[1:])), beats
        shown = [reading["time"] - wall_start for _, _, reading in with_readings if reading]
        assert len(shown) == len(times), beats  # every one shows a reading ...
        assert all(t - r <= 1.2 for t, r in zip(times, shown)), beats  # ... the newest
    finally:
        d.close()
        mine.close()
        supervisor_end.close()
