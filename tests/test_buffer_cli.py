"""`c8ysim buffer stats` reads the buffers read-only, also beside a running writer."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from c8ysim import config
from c8ysim.storage import open_buffer
from conftest import REPO, free_port, write_config


def stats(path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "c8ysim", "buffer", "stats", "--config",
                           str(path), *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=30)


def test_stats_show_queue_age_and_quarantine(tmp_path):
    path = write_config(tmp_path, free_port(), free_port())
    cfg = config.load(str(path))
    buffer = open_buffer(cfg.storage, "heatpump")
    now = time.time()
    buffer.put_many([("s/us", f"211,{i}".encode(), now - 60) for i in range(5)])
    buffer.quarantine([buffer.peek(1)[0].id], "test")
    result = stats(path, "--json")
    buffer.close()
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["heatpump"]["queued"] == 4 and view["heatpump"]["quarantined"] == 1
    assert 55 <= view["heatpump"]["oldest_age_s"] <= 120
    assert "no buffer yet" in view["pv-roof"]["error"]
    table = stats(path).stdout.splitlines()
    assert table[0].split() == ["DEVICE", "QUEUED", "OLDEST", "DROPPED", "QUARANTINED",
                                "LOST"]
    assert table[2].split()[:2] == ["heatpump", "4"]


def test_stats_show_the_readings_lost_with_a_file(tmp_path):
    path = write_config(tmp_path, free_port(), free_port())
    cfg = config.load(str(path))
    buffer = open_buffer(cfg.storage, "heatpump")
    buffer.put_many([("s/us", f"211,{i}".encode(), time.time()) for i in range(7)],
                    meta={"model.state": "{}"})
    buffer.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / "state" / f"heatpump.sqlite3{suffix}").unlink(missing_ok=True)
    open_buffer(cfg.storage, "heatpump").close()  # the device starts: 7 counted lost
    view = json.loads(stats(path, "--json").stdout)
    assert view["heatpump"]["lost"] == 7 and view["heatpump"]["queued"] == 0
