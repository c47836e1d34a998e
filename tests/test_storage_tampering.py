"""A careless admin (or a dying SD card) changes the buffer's files under the device.

Deleted, truncated, overwritten, unopenable, at start and while open. Every case ends in one
of two ways: the rows are saved (carried over from the still-open file) or they are counted
in `lost` and logged at warning; and the device state (energy registers) never goes back,
because the ledger beside the buffer holds it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from c8ysim.config import StorageConfig
from c8ysim.storage import open_buffer
from c8ysim.storage.store import StoreError

pytest_plugins = ["storage_support"]

STATE = "model.state"


def tick(i: int) -> list[tuple[str, bytes, float]]:
    return [("s/us", f"201,t,{i}".encode(), time.time())]


def fill(buffer, start: int, end: int) -> None:
    for i in range(start, end):
        buffer.put_many(tick(i), meta={STATE: json.dumps({"A+": i})})


def payloads(buffer) -> list[bytes]:
    return [r.payload for r in buffer.peek(10_000)]


def register(buffer) -> int:
    return json.loads(buffer.get_meta(STATE))["A+"]


def check_now(buffer) -> None:
    """Let the buffer look at its files and retry its stores at its next call."""
    buffer.maintenance.next_replaced_check = 0.0
    for tier in buffer.tiers:
        tier.retry_at = 0.0


@pytest.fixture
def storage(tmp_path) -> StorageConfig:
    return StorageConfig(path=str(tmp_path / "state"))


def test_file_deleted_while_open_is_carried_over_with_nothing_lost(storage, caplog):
    buffer = open_buffer(storage, "dev")
    fill(buffer, 0, 20)
    os.unlink(Path(storage.path) / "dev.sqlite3")
    check_now(buffer)
    with caplog.at_level(logging.WARNING):
        fill(buffer, 20, 25)
    assert "copied back with its 20 readings" in caplog.text
    stats = buffer.stats(time.time())
    assert stats.lost == 0 and stats.depth == 25
    assert payloads(buffer) == [f"201,t,{i}".encode() for i in range(25)]
    buffer.close()
    again = open_buffer(storage, "dev")
    assert len(payloads(again)) == 25 and register(again) == 24
    again.close()


def test_state_directory_deleted_while_open_is_recreated_and_carried_over(storage):
    buffer = open_buffer(storage, "dev")
    fill(buffer, 0, 10)
    taken = buffer.peek(4)  # in flight when the directory goes
    shutil.rmtree(storage.path)
    check_now(buffer)
    fill(buffer, 10, 12)
    buffer.ack([r.id for r in taken])  # their PUBACKs: ids of the old file, now harmless
    assert buffer.stats(time.time()).lost == 0
    assert payloads(buffer)[-2:] == [b"201,t,10", b"201,t,11"]
    assert len(payloads(buffer)) in (8, 12)  # the 4 in flight may be sent again, never lost
    buffer.close()
    assert register(reopened := open_buffer(storage, "dev")) == 11
    reopened.close()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_file_destroyed_while_open_counts_its_rows_lost_and_keeps_registers(
        storage, damage, caplog):
    buffer = open_buffer(storage, "dev")
    fill(buffer, 0, 30)
    buffer.ack([r.id for r in buffer.peek(10)])
    path = Path(storage.path) / "dev.sqlite3"
    # Pages still in the WAL would be written back by the closing connection (the data
    # would survive): checkpoint first, as SQLite does every 1000 pages anyway.
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").connection.close()
    _damage(path, damage)
    check_now(buffer)
    with caplog.at_level(logging.WARNING):
        for i in range(30, 40):
            check_now(buffer)
            fill(buffer, i, i + 1)
            buffer.stats(time.time())
    stats = buffer.stats(time.time())
    assert stats.lost >= 20, (stats, caplog.text)  # what the file held: gone, and said so
    assert "lost" in caplog.text
    assert register(buffer) == 39
    buffer.close()
    again = open_buffer(storage, "dev")
    assert register(again) == 39 and again.stats(time.time()).lost == stats.lost
    again.close()


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage"])
def test_file_destroyed_while_stopped_counts_its_rows_lost_and_keeps_registers(
        storage, damage, caplog):
    buffer = open_buffer(storage, "dev")
    fill(buffer, 0, 30)
    buffer.ack([r.id for r in buffer.peek(5)])
    buffer.close()
    _damage(Path(storage.path) / "dev.sqlite3", damage)
    with caplog.at_level(logging.WARNING):
        again = open_buffer(storage, "dev")
    stats = again.stats(time.time())
    assert stats.lost == 25 and "25 readings" in caplog.text
    assert register(again) == 29  # from the ledger: registers never go back
    fill(again, 30, 31)
    assert payloads(again) == [b"201,t,30"]
    again.close()


def test_unopenable_file_at_start_keeps_registers_and_rows_until_it_is_fixed(storage):
    buffer = open_buffer(storage, "dev")
    fill(buffer, 0, 5)
    buffer.ack([r.id for r in buffer.peek(5)])
    buffer.close()
    path = Path(storage.path) / "dev.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.mkdir()  # as good as chmod 000 for root: the file cannot be opened
    again = open_buffer(storage, "dev")
    assert register(again) == 4  # from the ledger, not back to 0
    fill(again, 5, 8)
    assert again.stats(time.time()).degraded
    assert payloads(again) == [f"201,t,{i}".encode() for i in range(5, 8)]  # from memory
    path.rmdir()
    check_now(again)
    fill(again, 8, 9)
    assert again.stats(time.time()).degraded is None
    again.close()
    final = open_buffer(storage, "dev")
    assert payloads(final) == [f"201,t,{i}".encode() for i in range(5, 9)]
    assert register(final) == 8 and final.stats(time.time()).lost == 0
    final.close()


def test_a_store_closed_under_the_buffer_or_failing_right_after_reopening_is_retried(
        storage):
    """The store's connection is gone; the reopen works, then the file's first read fails
    and closes it again (a flaky card). The tier is retried until it works: a tier left
    closed without a recorded failure was never retried, and every later row waited in
    memory until the agent restarted."""
    buffer = open_buffer(storage, "dev")
    fill(buffer, 0, 3)
    primary = buffer.tiers[0]
    opener, flaky = primary.opener, [True]

    def open_flaky(check: bool):
        store = opener(check)
        if flaky and flaky.pop():
            def depth_fails():
                store.close()
                raise StoreError("disk I/O error")
            store.depth = depth_fails
        return store
    primary.opener = open_flaky
    primary.store.close()
    fill(buffer, 3, 5)  # reopened at once, and failing on its first read
    assert buffer.stats(time.time()).degraded and primary.failure
    check_now(buffer)
    fill(buffer, 5, 7)  # retried: this time it works, and memory moves back into it
    assert buffer.stats(time.time()).degraded is None and primary.failure is None
    assert payloads(buffer) == [f"201,t,{i}".encode() for i in range(7)]
    assert register(buffer) == 6 and buffer.stats(time.time()).lost == 0
    buffer.close()


def test_a_garbage_ledger_is_started_anew_without_a_crash(storage, caplog):
    buffer = open_buffer(storage, "dev")
    fill(buffer, 0, 3)
    buffer.close()
    (Path(storage.path) / "dev.ledger.json").write_bytes(b"\xff{not json")
    with caplog.at_level(logging.ERROR):
        again = open_buffer(storage, "dev")
    assert "unreadable" in caplog.text
    assert register(again) == 2 and len(payloads(again)) == 3  # the buffer's own copy
    again.close()


def _damage(path: Path, how: str) -> None:
    if how == "delete":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    elif how == "truncate":
        for suffix in ("", "-wal"):
            if Path(f"{path}{suffix}").exists():
                os.truncate(f"{path}{suffix}", 0)
    else:
        size = max(path.stat().st_size, 8192)
        path.write_bytes(os.urandom(size))
        Path(f"{path}-wal").unlink(missing_ok=True)


CHILD = """
import json, sys, time
from types import SimpleNamespace
from c8ysim.storage import open_buffer
from c8ysim.storage.store import StoreError
storage = SimpleNamespace(path=sys.argv[1], backend="sqlite", max_records=200_000,
                          max_age_hours=168, synchronous="normal")
step = sys.argv[2]
buffer = open_buffer(storage, "dev")
if step == "fill":
    for i in range(5):
        buffer.put_many([("s/us", f"201,t,{i}".encode(), time.time())],
                        meta={"model.state": json.dumps({"A+": i})})
    buffer.ack([r.id for r in buffer.peek(3)])
else:
    buffer.put_many([("s/us", b"201,t,5", time.time())], meta={"model.state": '{"A+": 5}'})
stats = buffer.stats(time.time())
print(json.dumps({"register": json.loads(buffer.get_meta("model.state"))["A+"],
                  "degraded": stats.degraded, "lost": stats.lost,
                  "sendable": [r.payload.decode() for r in buffer.peek(100)]}))
buffer.close()
"""


def test_a_file_the_service_user_cannot_open_at_start_keeps_registers_and_order(
        other_user_python):
    """chmod 000 on the file (as the service user, not root, who could read it anyway): the
    registers come from the ledger, and since the file may hold older rows, nothing newer
    is sent before it opens again."""
    import tempfile
    if os.geteuid() != 0:
        pytest.fail("this test runs the buffer as another user: run the tests as root")
    base = Path(tempfile.mkdtemp(prefix="c8ysim-chmod-"))
    try:
        base.chmod(0o755)
        state = base / "state"
        state.mkdir()
        shutil.chown(state, "nobody", "nogroup")

        def as_nobody(step: str) -> dict:
            argv, env = other_user_python
            result = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 *argv, "-c", CHILD, str(state), step],
                cwd="/", capture_output=True, text=True, timeout=60, env=env)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        assert as_nobody("fill")["sendable"] == ["201,t,3", "201,t,4"]
        (state / "dev.sqlite3").chmod(0)
        blocked = as_nobody("again")
        assert blocked["register"] == 4 + 1 and "permission denied" in blocked["degraded"]
        assert blocked["sendable"] == []  # 2 older rows wait in the file: order first
        (state / "dev.sqlite3").chmod(0o600)
        reopened = as_nobody("again")
        # The blocked run ended with its reading in memory and no file to put it in: lost,
        # and counted as such; the file's own rows were kept and come first.
        assert reopened["register"] == 5 and reopened["lost"] == 1
        assert reopened["sendable"] == ["201,t,3", "201,t,4", "201,t,5"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_state_written_only_to_memory_on_a_full_disk_survives_the_process(tmp_path):
    """A full disk: the file takes nothing, the readings and the device state live in memory,
    and the process ends before the disk has room again. The memory rows are gone (counted);
    the state is not, because the ledger is rewritten in place, which needs no new block."""
    from storage_support import fill_up, tmpfs
    with tmpfs(tmp_path / "fs", 512) as directory:
        storage = StorageConfig(path=str(directory))
        buffer = open_buffer(storage, "dev")
        fill(buffer, 0, 5)
        filler = fill_up(directory)
        fill(buffer, 5, 25)  # 20 readings in memory, the state too
        assert buffer.stats(time.time()).degraded
        buffer.close()
        filler.unlink()
        again = open_buffer(storage, "dev")
        assert register(again) == 24  # not 4: the ledger was newer than the file
        assert again.stats(time.time()).lost == 20
        assert payloads(again) == [f"201,t,{i}".encode() for i in range(5)]
        again.close()


def test_a_torn_ledger_slot_falls_back_to_the_other(storage):
    buffer = open_buffer(storage, "dev")
    fill(buffer, 0, 3)
    buffer.close()
    path = Path(storage.path) / "dev.ledger.json"
    from c8ysim.storage.ledger import SLOT_BYTES, Ledger
    writes = Ledger(str(path)).writes
    newest = writes % 2  # the slot written last
    with open(path, "r+b") as file:  # a crash half-way through writing the newest slot
        file.seek(newest * SLOT_BYTES + 40)
        file.write(b"\0" * 100)
    ledger = Ledger(str(path))
    assert ledger.writes == writes - 1  # the write before the torn one: close() saved the
    assert json.loads(ledger.meta[STATE])["A+"] == 2  # last tick's state once more
