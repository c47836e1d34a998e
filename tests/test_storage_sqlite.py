"""The SQLite backend under real trouble: old and corrupt files, a full disk, a file system the
kernel turns read-only, a read-only state directory; plus its pragmas and space reclaim.

Disk full is a real tmpfs of a few hundred KiB filled to the last byte; read-only is an
ext4 loop image the kernel remounts read-only after an error (errors=remount-ro, via
/sys/fs/ext4/*/trigger_fs_error, as a dying SD card does) and a read-only bind mount.
Those need root (the project's tests run as root) and skip otherwise.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import time

import pytest

from c8ysim.config import StorageConfig
from c8ysim.storage import StorageConfigError, open_buffer
from c8ysim.storage import sqlite as sqlite_store
pytest.register_assert_rewrite("storage_support")
from storage_support import ext4_image, fill_up, read_only_bind, retry_now, tmpfs

SKELETON_V1_SCHEMA = """
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                     payload BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE quarantine (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
                         created REAL NOT NULL, reason TEXT NOT NULL, moved REAL NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version=1;
"""


def tick(i: int, size: int = 0):
    return [("s/us", f"201,t,{i}".encode() + b"x" * size, time.time())]


def payloads(buffer) -> list[bytes]:
    return [r.payload for r in buffer.peek(100_000)]


def test_a_file_from_the_skeleton_schema_is_migrated_keeping_rows_and_state(tmp_path):
    db = sqlite3.connect(tmp_path / "dev.sqlite3")
    db.executescript(SKELETON_V1_SCHEMA)
    db.execute("INSERT INTO outbox (topic, payload, created) VALUES ('s/us', x'31', 1.0)")
    db.execute("INSERT INTO meta VALUES ('model.state', '{}'), ('buffer.dropped', '7')")
    db.commit()
    db.close()
    buffer = open_buffer(StorageConfig(path=str(tmp_path), max_age_hours=10**6), "dev")
    buffer.put_many(tick(2))
    assert payloads(buffer) == [b"1", b"201,t,2"]
    assert buffer.get_meta("model.state") == "{}" and buffer.stats(time.time()).dropped == 7
    buffer.close()
    db = sqlite3.connect(tmp_path / "dev.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_store.SCHEMA_VERSION
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # converted: it was small


def test_a_file_from_a_newer_c8ysim_is_a_config_error_not_a_crash_loop(tmp_path):
    db = sqlite3.connect(tmp_path / "dev.sqlite3")
    db.execute(f"PRAGMA user_version={sqlite_store.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StorageConfigError, match="newer than this c8ysim"):
        open_buffer(StorageConfig(path=str(tmp_path)), "dev")


def test_a_garbage_file_is_moved_aside_and_a_fresh_buffer_started(tmp_path, caplog):
    (tmp_path / "dev.sqlite3").write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR):
        buffer = open_buffer(StorageConfig(path=str(tmp_path)), "dev")
    buffer.put_many(tick(1))
    assert payloads(buffer) == [b"201,t,1"] and buffer.stats(time.time()).degraded is None
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside and "moved it aside" in caplog.text
    buffer.close()


def test_corruption_found_while_running_moves_the_file_aside_on_the_retry(tmp_path, caplog):
    storage = StorageConfig(path=str(tmp_path))
    buffer = open_buffer(storage, "dev")
    buffer.put_many([r for i in range(3000) for r in tick(i, 150)])
    buffer.close()
    _scribble(tmp_path / "dev.sqlite3")
    with caplog.at_level(logging.ERROR):
        buffer = open_buffer(storage, "dev")
        buffer.peek(100_000)  # touches the damaged pages (if opening did not already)
        retry_now(buffer)
        buffer.put_many(tick(9999))
        assert payloads(buffer)[-1] == b"201,t,9999"
    assert any(".corrupt-" in p.name for p in tmp_path.iterdir())
    assert buffer.stats(time.time()).degraded is None
    buffer.close()


def _scribble(path) -> None:
    """Overwrite b-tree pages in the middle of the file (not the header page)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for offset in range(4096 * 2, size - 4096, 4096 * 3):
            f.seek(offset)
            f.write(os.urandom(512))


@pytest.mark.parametrize("synchronous, expected", [("normal", 1), ("full", 2)])
def test_file_settings_wal_synchronous_journal_limit_incremental_vacuum(
        tmp_path, synchronous, expected):
    buffer = open_buffer(StorageConfig(path=str(tmp_path), synchronous=synchronous), "dev")
    db = buffer.tiers[0].store.db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == expected
    assert db.execute("PRAGMA journal_size_limit").fetchone()[0] == \
        sqlite_store.JOURNAL_SIZE_LIMIT_BYTES
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    buffer.close()


def test_the_file_shrinks_again_after_a_big_backlog_drained(tmp_path):
    buffer = open_buffer(StorageConfig(path=str(tmp_path)), "dev")
    buffer.put_many([r for i in range(20_000) for r in tick(i, 190)])
    store = buffer.tiers[0].store
    full = _file_bytes(tmp_path)
    while batch := buffer.peek(2000):
        buffer.ack([r.id for r in batch])
    for _ in range(4):  # each step reclaims up to VACUUM_PAGES_PER_STEP pages
        store.next_vacuum_check = 0.0
        buffer.stats(time.time())
    assert full > 4_000_000 and _file_bytes(tmp_path) < full / 4
    buffer.close()


def _file_bytes(directory) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("dev.sqlite3"))


def test_disk_full_degrades_to_memory_keeps_sending_and_recovers_in_order(tmp_path, caplog):
    with tmpfs(tmp_path / "fs", 512) as directory:
        buffer = open_buffer(StorageConfig(path=str(directory)), "dev")
        buffer.put_many([r for i in range(100) for r in tick(i, 150)])
        filler = fill_up(directory)
        with caplog.at_level(logging.WARNING):
            for i in range(100, 160):
                buffer.put_many(tick(i, 150), meta={"model.state": str(i)})
        stats = buffer.stats(time.time())
        assert stats.degraded and "disk full" in stats.degraded and stats.depth == 160
        assert buffer.get_meta("model.state") == "159"
        assert len(payloads(buffer)) == 160  # the file can still be read: sending goes on
        assert len([r for r in caplog.records if "disk full" in r.getMessage()]) == 1
        filler.unlink()
        retry_now(buffer)
        buffer.put_many(tick(160, 150))
        assert buffer.stats(time.time()).degraded is None
        buffer.close()
        again = open_buffer(StorageConfig(path=str(directory)), "dev")
        assert payloads(again) == [tick(i, 150)[0][1] for i in range(161)]
        assert again.get_meta("model.state") == "159"
        again.close()


def test_overflow_in_memory_is_bounded_and_its_drops_are_counted(tmp_path, monkeypatch):
    monkeypatch.setattr("c8ysim.storage.MEMORY_MAX_ROWS", 50)
    with tmpfs(tmp_path / "fs", 256) as directory:
        buffer = open_buffer(StorageConfig(path=str(directory)), "dev")
        fill_up(directory)
        for i in range(80):
            buffer.put_many(tick(i, 100))
        stats = buffer.stats(time.time())
        assert stats.dropped >= 30 and stats.depth <= 50
        assert payloads(buffer)[-1] == tick(79, 100)[0][1]
        buffer.close()


def test_file_system_turned_read_only_by_the_kernel_then_repaired(tmp_path):
    with ext4_image(tmp_path) as fs:
        storage = StorageConfig(path=str(fs.path / "state"))
        buffer = open_buffer(storage, "dev")
        buffer.put_many([r for i in range(50) for r in tick(i)])
        fs.trigger_error()
        for i in range(50, 60):
            buffer.put_many(tick(i), meta={"model.state": str(i)})
        stats = buffer.stats(time.time())
        assert stats.degraded and stats.depth == 60
        assert buffer.peek(10) == []  # older rows are in the file: order first
        fs.repair()  # unmounting proves the buffer let go of its files
        retry_now(buffer)
        buffer.put_many(tick(60))
        assert payloads(buffer) == [f"201,t,{i}".encode() for i in range(61)]
        assert buffer.get_meta("model.state") == "59"
        assert buffer.stats(time.time()).degraded is None
        buffer.close()


def test_read_only_state_directory_at_start_then_writable(tmp_path):
    storage = StorageConfig(path=str(tmp_path / "state"))
    buffer = open_buffer(storage, "dev")
    buffer.put_many([r for i in range(5) for r in tick(i)])
    buffer.close()
    with read_only_bind(tmp_path / "state"):
        buffer = open_buffer(storage, "dev")
        buffer.put_many([r for i in range(5, 8) for r in tick(i)])
        assert "read-only" in buffer.stats(time.time()).degraded
        subprocess.run(["mount", "-o", "remount,rw,bind", storage.path], check=True)
        retry_now(buffer)
        buffer.put_many(tick(8))
        records = buffer.peek(100)
        assert [r.payload for r in records] == [f"201,t,{i}".encode() for i in range(9)]
        assert [r.id for r in records] == sorted({r.id for r in records})
        buffer.close()


def test_fresh_read_only_directory_still_sends_what_it_holds_in_memory(tmp_path):
    (tmp_path / "state").mkdir()
    with read_only_bind(tmp_path / "state"):
        buffer = open_buffer(StorageConfig(path=str(tmp_path / "state")), "dev")
        buffer.put_many(tick(1))
        assert payloads(buffer) == [b"201,t,1"]  # no file yet: nothing older can exist
        buffer.ack([r.id for r in buffer.peek(10)])
        assert buffer.stats(time.time()).depth == 0
        buffer.close()
