"""The wall-clock stepping tool of the chaos tests: it moves the wall clock, and only that.

A probe process runs under the library; the test steps its clock while it runs and checks what
the probe sees: the wall clock (time.time, datetime.now, time() from C via `date`) moves by
exactly the step, while the monotonic clock, sleeps and every kind of timeout the agent uses
(queue.get, Event.wait, selectors) keep real durations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from clockshift import WallClock

pytestmark = pytest.mark.timeout(60)

PROBE = r"""
import datetime, json, queue, selectors, socket, sys, threading, time
for line in sys.stdin:
    started = time.monotonic()
    waits = {}
    for name, wait in (("sleep", lambda: time.sleep(0.3)),
                       ("queue", lambda: queue.SimpleQueue().get(timeout=0.3)),
                       ("event", lambda: threading.Event().wait(0.3)),
                       ("select", lambda: selectors.DefaultSelector().select(0.3))):
        began = time.monotonic()
        try:
            wait()
        except queue.Empty:
            pass
        waits[name] = time.monotonic() - began
    print(json.dumps({"time": time.time(), "datetime": datetime.datetime.now().timestamp(),
                      "monotonic": time.monotonic(), "waits": waits,
                      "took": time.monotonic() - started}), flush=True)
"""

TOLERANCE_S = 0.5


@pytest.fixture
def clock(tmp_path):
    wall = WallClock(tmp_path / "clockshift")
    yield wall
    wall.close()


def ask(probe: subprocess.Popen) -> dict:
    probe.stdin.write("?\n")
    probe.stdin.flush()
    return json.loads(probe.stdout.readline())


@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
def test_a_step_moves_the_wall_clock_of_a_running_process_and_nothing_else(clock, step_s):
    probe = subprocess.Popen([sys.executable, "-c", PROBE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, **clock.env})
    try:
        before = ask(probe)
        assert abs(before["time"] - time.time()) < TOLERANCE_S  # offset 0: the real time
        clock.step(step_s)
        after = ask(probe)
        real_now = time.time()
        assert abs(after["time"] - (real_now + step_s)) < TOLERANCE_S
        assert abs(after["datetime"] - (real_now + step_s)) < TOLERANCE_S
        # the monotonic clock went on as real time did, and every wait took its real length
        assert 1.0 < after["monotonic"] - before["monotonic"] < 1.2 + 2 * TOLERANCE_S
        for name, took in after["waits"].items():
            assert 0.29 <= took < 0.3 + TOLERANCE_S, (name, took)
    finally:
        probe.stdin.close()
        probe.wait(10)
    assert abs(time.time() - time.time_ns() / 1e9) < 0.01  # this process: untouched


def test_programs_in_c_see_the_step_too(clock):
    clock.set_offset(-7200.0)
    shifted = int(subprocess.run(["date", "+%s"], env={**os.environ, **clock.env},
                                 capture_output=True, text=True, check=True).stdout)
    assert abs(shifted - (time.time() - 7200.0)) < 2
    real = int(subprocess.run(["date", "+%s"], capture_output=True, text=True,
                              check=True).stdout)
    assert abs(real - time.time()) < 2
