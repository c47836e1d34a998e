"""Crash safety with real processes: a writer is killed with SIGKILL at random moments.

The writer stores ticks as a device does (one put_many per tick with the tick number as
device state in `meta`) and acks the oldest rows now and then, as the drain does. It prints
each step after the buffer call returned, so the test knows what was committed. After
every kill the next writer reopens the same store. At the end: every committed row that was
not acked is there, none twice, in order; no acked row came back; the state in `meta` is
never ahead of or behind its rows; for SQLite `PRAGMA integrity_check` is ok.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from c8ysim.config import StorageConfig
from c8ysim.storage import open_buffer
from conftest import wait_until

pytest_plugins = ["storage_support"]

KILLS = 10
KILLS_WHILE_OPENING = 2  # of those, killed before the store is open (migrations, recovery)
KILL_AFTER_S = (0.02, 0.4)  # otherwise: this long after the store is open
OPENING_KILL_AFTER_S = (0.05, 0.3)  # from spawn
READY_TIMEOUT_S = 30
REPO = Path(__file__).resolve().parent.parent
WRITER = """
import random, sys, time
from c8ysim.config import StorageConfig
from c8ysim.storage import open_buffer

backend, path, dsn, device, seed = sys.argv[1:6]
buffer = open_buffer(StorageConfig(backend=backend, path=path, dsn=dsn or None), device)
rng = random.Random(int(seed))
tick = int(buffer.get_meta("tick") or -1) + 1
print("ready", flush=True)
while True:
    rows = [("s/us", f"{tick},{k}".encode(), time.time()) for k in range(3)]
    buffer.put_many(rows, meta={"tick": str(tick)})
    print(f"put {tick}", flush=True)
    if rng.random() < 0.3:
        batch = buffer.peek(rng.randint(1, 8))
        names = " ".join(r.payload.decode() for r in batch)
        print(f"acking {names}", flush=True)
        buffer.ack([r.id for r in batch])
        print(f"acked {names}", flush=True)
    tick += 1
"""


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request, tmp_path) -> StorageConfig:
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        return StorageConfig(backend="postgres", dsn=server.dsn, path=str(tmp_path))
    return StorageConfig(path=str(tmp_path))


class Journal:
    """What the writers reported, line by line, across all rounds."""

    def __init__(self):
        self.committed: list[str] = []
        self.acking: set[str] = set()
        self.acked: set[str] = set()
        self.last_tick = -1

    def read(self, output: str) -> None:
        for line in output.splitlines():
            word, _, rest = line.partition(" ")
            if word == "put":
                self.committed += [f"{rest},{k}" for k in range(3)]
                self.last_tick = int(rest)
            elif word == "acking":
                self.acking |= set(rest.split())
            elif word == "acked":
                self.acked |= set(rest.split())


def run_and_kill(storage: StorageConfig, device: str, rng: random.Random,
                 while_opening: bool, journal_path: Path) -> str:
    """One writer, killed; returns what it reported (a file: a pipe's buffering hides lines)."""
    with open(journal_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, storage.backend, storage.path, storage.dsn or "",
             device, str(rng.randrange(10**6))], cwd=REPO, stdout=out, stderr=subprocess.PIPE)
    if while_opening:
        time.sleep(rng.uniform(*OPENING_KILL_AFTER_S))
    else:
        wait_until(lambda: journal_path.read_text().startswith("ready\n")
                   or proc.poll() is not None, READY_TIMEOUT_S, 0.01, "the writer to open")
        time.sleep(rng.uniform(*KILL_AFTER_S))
    proc.kill()
    err = proc.communicate(timeout=10)[1]
    assert proc.returncode == -9, err.decode()  # it was still writing, not crashed on its own
    return journal_path.read_text()


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(storage, tmp_path):
    device, rng, journal = f"crash-{uuid.uuid4().hex[:8]}", random.Random(), Journal()
    for round_ in range(KILLS):
        journal.read(run_and_kill(storage, device, rng, round_ < KILLS_WHILE_OPENING,
                                  tmp_path / f"writer-{round_}.out"))
    buffer = open_buffer(storage, device)
    present = [r.payload.decode() for r in buffer.peek(10**7)]
    state_tick = int(buffer.get_meta("tick"))
    degraded = buffer.stats(time.time()).degraded
    buffer.close()
    key = lambda name: tuple(int(x) for x in name.split(","))  # noqa: E731
    assert len(journal.committed) > 100 and degraded is None
    assert len(present) == len(set(present)), "duplicates"
    assert present == sorted(present, key=key), "order"
    uncertain = journal.acking - journal.acked
    lost = set(journal.committed) - journal.acked - uncertain - set(present)
    assert not lost, f"{len(lost)} committed rows lost, e.g. {sorted(lost, key=key)[:5]}"
    assert not journal.acked & set(present), "acked rows came back"
    assert journal.last_tick <= state_tick <= journal.last_tick + 1
    tick_rows = {f"{state_tick},{k}" for k in range(3)}
    assert tick_rows <= set(present) | journal.acked | uncertain, "meta without its rows"
    if storage.backend == "sqlite":
        db = sqlite3.connect(Path(storage.path) / f"{device}.sqlite3")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
