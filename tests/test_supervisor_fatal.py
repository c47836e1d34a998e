"""FATAL as real processes: a child exiting 78 is never restarted, a crash-looping child ends
FATAL, a reload retries both, and healthy neighbours keep their PIDs throughout.

The supervisor here is the real one with a fast restart policy and scripted children: this
file is also the harness (`python tests/test_supervisor_fatal.py CONFIG`). A child's name
says what it does: `bad-*` exits 78, `crash-*` exits 1 at once, `ok-*` beats until TERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

FAST_POLICY = dict(base_s=0.1, cap_s=0.4, stable_run_s=5.0, quick_run_s=2.0,
                   quick_window_s=30.0, max_quick_deaths=5)
BEAT_EVERY_S = 0.2
DEVICES = [("ok-1", "pv"), ("bad-1", "heatpump"), ("crash-1", "grid")]


def scripted_child(config, name: str, heartbeat, parent_pid: int) -> int:
    """Runs in the forked child: what the name says."""
    if name.startswith("bad-"):
        return 78
    if name.startswith("crash-"):
        return 1
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop and os.getppid() == parent_pid:
        heartbeat.send(json.dumps({"connected": False, "queued": 0}).encode())
        time.sleep(BEAT_EVERY_S)
    return 0


def harness(config_path: str) -> int:
    from c8ysim import config, logs, notify, states, supervisor
    from c8ysim.status import app as status_app

    cfg = config.load(config_path)
    logs.setup(cfg.log_level, "supervisor")
    return supervisor.Supervisor(cfg, scripted_child, status_app.build_app, config.load,
                                 notify.Notifier(), states.Policy(**FAST_POLICY)).run()


if __name__ == "__main__":
    sys.exit(harness(sys.argv[1]))


from conftest import free_port, wait_until, write_config  # noqa: E402 - tests only
from test_supervisor import Daemon  # noqa: E402


@pytest.fixture
def scripted(tmp_path):
    status_port = free_port()
    config = write_config(tmp_path, free_port(), status_port, devices=DEVICES)
    daemon = Daemon([sys.executable, __file__, str(config)], config, status_port)
    yield daemon.start()
    daemon.cleanup()


def settled(daemon: Daemon) -> dict:
    """The devices once bad-1 and crash-1 are both FATAL."""
    wait_until(lambda: daemon.devices()["bad-1"]["state"] == "fatal" and
               daemon.devices()["crash-1"]["state"] == "fatal", 10, what="both FATAL")
    return daemon.devices()


def test_exit_78_is_fatal_at_once_and_crash_loops_end_fatal(scripted):
    devices = settled(scripted)
    ok_pid = devices["ok-1"]["pid"]
    assert devices["bad-1"]["restarts"] == 0
    assert devices["bad-1"]["last_exit"] == "exit code 78"
    assert devices["crash-1"]["restarts"] == FAST_POLICY["max_quick_deaths"] - 1
    assert devices["crash-1"]["pid"] is None and devices["bad-1"]["pid"] is None
    time.sleep(1.0)  # FATAL stays FATAL: nothing is restarted
    later = scripted.devices()
    assert [later[n]["restarts"] for n in ("bad-1", "crash-1")] == \
        [0, FAST_POLICY["max_quick_deaths"] - 1]
    assert later["ok-1"]["pid"] == ok_pid and later["ok-1"]["state"] == "running"
    text = scripted.log_text()
    assert "<3>supervisor: bad-1 is FATAL after exit code 78" in text
    assert "<3>supervisor: crash-1 is FATAL after exit code 1: 5 deaths within 30 s" in text


def test_a_reload_retries_fatal_children(scripted):
    devices = settled(scripted)
    ok_pid = devices["ok-1"]["pid"]
    starts = scripted.log_text().count("started crash-1")
    scripted.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: scripted.log_text().count("started crash-1") > starts, 5,
               what="crash-1 retried")
    assert "crash-1: retrying after the reload" in scripted.log_text()
    assert "bad-1: retrying after the reload" in scripted.log_text()
    devices = settled(scripted)  # they fail again, each in its own way
    assert scripted.log_text().count("started crash-1") == starts + 5
    assert devices["ok-1"]["pid"] == ok_pid
    assert scripted.stop(5) == 0

