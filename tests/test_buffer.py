"""The Buffer contract: one suite, run against every backend (SQLite files, a real PostgreSQL).

Order, the after_id cursor, ack, quarantine, bounds and drop counting, durable device state
written with the rows, reopening, stats. Backend-specific behaviour (migrations, corruption,
disk full, outages) lives in test_storage_*.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c8ysim.config import StorageConfig
from c8ysim.storage import open_buffer

pytest_plugins = ["storage_support"]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_storage(backend, tmp_path, request):
    def make(**overrides) -> StorageConfig:
        if backend == "postgres":
            server = request.getfixturevalue("postgres_server")
            return StorageConfig(backend="postgres", dsn=server.dsn,
                                 path=str(tmp_path / "fallback"), **overrides)
        return StorageConfig(path=str(tmp_path), **overrides)
    return make


@pytest.fixture
def opened(make_storage):
    """open(**storage overrides) -> a buffer for this test's device; all closed at the end."""
    device, buffers = f"dev-{uuid.uuid4().hex[:8]}", []

    def open_(name: str | None = None, **overrides):
        buffer = open_buffer(make_storage(**overrides), name or device)
        buffers.append(buffer)
        return buffer
    yield open_
    for buffer in buffers:
        buffer.close()


def rows(n: int, start: int = 0, created: float | None = None):
    now = time.time() if created is None else created
    return [("s/us", f"201,x,{i}".encode(), now) for i in range(start, start + n)]


def payloads(records) -> list[bytes]:
    return [r.payload for r in records]


def test_rows_come_back_oldest_first_and_leave_only_when_acked(opened):
    buffer = opened()
    buffer.put_many(rows(5))
    first = buffer.peek(3)
    assert payloads(first) == [b"201,x,0", b"201,x,1", b"201,x,2"]
    assert payloads(buffer.peek(3)) == payloads(first)  # peek alone removes nothing
    buffer.ack([r.id for r in first])
    assert payloads(buffer.peek(10)) == [b"201,x,3", b"201,x,4"]
    assert buffer.stats(time.time()).depth == 2


def test_after_id_cursor_pages_through_the_queue_without_acking(opened):
    buffer = opened()
    buffer.put_many(rows(7))
    seen, cursor = [], 0
    while page := buffer.peek(3, after_id=cursor):
        seen += page
        cursor = page[-1].id
    assert payloads(seen) == [f"201,x,{i}".encode() for i in range(7)]
    assert [r.id for r in seen] == sorted({r.id for r in seen})
    buffer.put_many(rows(1, start=7))
    assert payloads(buffer.peek(10, after_id=cursor)) == [b"201,x,7"]


def test_ids_never_repeat_after_the_queue_empties_even_across_reopen(opened):
    buffer = opened()
    buffer.put_many(rows(2))
    first = buffer.peek(10)
    buffer.ack([r.id for r in first])
    buffer.close()
    again = opened()
    again.put_many(rows(1, start=2))
    assert again.peek(10)[0].id > first[-1].id
    assert payloads(again.peek(10, after_id=first[-1].id)) == [b"201,x,2"]


def test_rows_meta_and_counters_survive_reopen(opened):
    buffer = opened(max_records=3)
    buffer.put_many(rows(4), meta={"model.state": '{"kwh": 1.5}'})
    buffer.quarantine([buffer.peek(1)[0].id], "too big")
    buffer.close()
    again = opened(max_records=3)
    stats = again.stats(time.time())
    assert payloads(again.peek(10)) == [b"201,x,2", b"201,x,3"]
    assert again.get_meta("model.state") == '{"kwh": 1.5}'
    assert (stats.depth, stats.dropped, stats.quarantined) == (2, 1, 1)


def test_meta_is_set_with_the_rows_and_deleted_by_none(opened):
    buffer = opened()
    buffer.put_many(rows(1), meta={"a": "1", "b": "2"})
    buffer.set_meta("restart", "executing")
    assert (buffer.get_meta("a"), buffer.get_meta("b")) == ("1", "2")
    assert buffer.get_meta("restart") == "executing"
    buffer.put_many([], meta={"a": None})
    buffer.set_meta("restart", None)
    assert (buffer.get_meta("a"), buffer.get_meta("restart")) == (None, None)
    assert buffer.get_meta("never-set") is None


def test_oldest_rows_dropped_and_counted_beyond_max_records_logged_once(opened, caplog):
    buffer = opened(max_records=100)
    with caplog.at_level(logging.WARNING, logger="c8ysim.storage"):
        buffer.put_many(rows(150))
        buffer.put_many(rows(10, start=150))
    stats = buffer.stats(time.time())
    assert stats.depth == 100 and stats.dropped == 60
    assert buffer.peek(1)[0].payload == b"201,x,60"
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1


def test_rows_older_than_max_age_dropped_and_counted(opened):
    buffer = opened(max_age_hours=1)
    now = time.time()
    buffer.put_many([("s/us", b"old", now - 7200), ("s/us", b"new", now)])
    assert payloads(buffer.peek(10)) == [b"new"]
    assert buffer.stats(now).dropped == 1


def test_quarantine_moves_rows_out_of_the_queue(opened):
    buffer = opened()
    buffer.put_many(rows(3))
    buffer.quarantine([buffer.peek(1)[0].id], "too big")
    stats = buffer.stats(time.time())
    assert stats.depth == 2 and stats.quarantined == 1
    assert payloads(buffer.peek(10)) == [b"201,x,1", b"201,x,2"]


def test_stats_report_depth_age_bytes_and_backend(opened, backend):
    buffer = opened()
    empty = buffer.stats(time.time())
    assert (empty.depth, empty.oldest_age_s, empty.bytes, empty.degraded) == (0, None, 0, None)
    now = time.time()
    buffer.put_many([("s/us", b"x" * 100, now - 30), ("s/us", b"y" * 100, now)])
    stats = buffer.stats(now)
    assert stats.depth == 2 and stats.bytes == 200
    assert 29 <= stats.oldest_age_s <= 31
    assert stats.backend == backend and stats.degraded is None


def test_payloads_come_back_byte_identical(opened):
    buffer = opened()
    odd = [bytes(range(256)), b"", "201,\u00e4,\"q\"".encode(), b"\x00\xff" * 4000]
    buffer.put_many([("s/us", p, time.time()) for p in odd])
    assert payloads(buffer.peek(10)) == odd


def test_devices_do_not_see_each_other(opened):
    one, two = opened("dev-one-" + uuid.uuid4().hex[:6]), opened("dev-two-" + uuid.uuid4().hex[:6])
    one.put_many(rows(2), meta={"k": "one"})
    two.put_many(rows(1, start=10), meta={"k": "two"})
    assert payloads(one.peek(10)) == [b"201,x,0", b"201,x,1"]
    assert payloads(two.peek(10)) == [b"201,x,10"]
    assert (one.get_meta("k"), two.get_meta("k")) == ("one", "two")


def test_acking_unknown_or_already_acked_ids_is_harmless(opened):
    buffer = opened()
    buffer.put_many(rows(2))
    first = buffer.peek(1)
    buffer.ack([r.id for r in first])
    buffer.ack([r.id for r in first] + [10**9])
    assert payloads(buffer.peek(10)) == [b"201,x,1"]
    assert buffer.stats(time.time()).depth == 1


def test_another_process_writing_the_buffer_loses_and_hides_nothing(opened):
    """`c8ysim backfill` / `send-test` append to a running device's buffer: the store numbers
    every row, so the device's next rows never collide with them (they vanished silently
    when each process numbered rows itself), its depth counts them, and its drain meets
    them in the same pass, after what it had queued."""
    live, cli = opened(), opened()
    live.put_many(rows(3))
    taken = live.peek(2)  # the session has two in flight
    cli.put_many(rows(5, start=100))
    live.put_many(rows(2, start=3))
    assert live.stats(time.time()).depth == 10 and cli.stats(time.time()).depth == 10
    rest = live.peek(100, after_id=taken[-1].id)
    expected = [f"201,x,{i}".encode() for i in (0, 1, 2, *range(100, 105), 3, 4)]
    assert payloads(taken + rest) == expected
    live.ack([r.id for r in taken + rest])
    assert cli.stats(time.time()).depth == 0 and live.stats(time.time()).depth == 0


def test_writers_in_other_processes_lose_nothing_and_keep_their_order(make_storage):
    """Two processes append while this one appends and drains, all at once: every row comes
    out exactly once, each writer's rows in their order."""
    storage, device = make_storage(), f"mp-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_rows, args=(storage, device, tag, 300))
               for tag in ("a", "b")]
    buffer = open_buffer(storage, device)
    for writer in writers:
        writer.start()
    seen, cursor, mine = [], 0, 0
    try:
        while mine < 300 or any(w.is_alive() for w in writers) or \
                buffer.stats(time.time()).depth:
            if mine < 300:
                buffer.put_many([("s/us", f"201,live,{mine}".encode(), time.time())])
                mine += 1
            batch = buffer.peek(7, after_id=cursor)
            if batch:
                cursor = batch[-1].id
                buffer.ack([r.id for r in batch])
                seen += payloads(batch)
            elif mine >= 300:
                cursor = 0  # a new pass, as after a reconnect
                time.sleep(0.01)
    finally:
        for writer in writers:
            writer.join(30)
        buffer.close()
    assert [w.exitcode for w in writers] == [0, 0]
    assert len(seen) == len(set(seen)) == 900
    for tag in ("a", "b", "live"):
        assert [p for p in seen if p.startswith(f"201,{tag},".encode())] == \
            [f"201,{tag},{i}".encode() for i in range(300)], tag


def _write_rows(storage, device: str, tag: str, count: int) -> None:
    buffer = open_buffer(storage, device, guest=True)
    rng, written = random.Random(tag), 0
    while written < count:
        n = min(count - written, rng.randint(1, 25))
        buffer.put_many([("s/us", f"201,{tag},{i}".encode(), time.time())
                         for i in range(written, written + n)])
        written += n
    buffer.close()


OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 5)),
    st.tuples(st.just("cli"), st.integers(0, 5)),
    st.tuples(st.just("ack"), st.integers(0, 6)),
    st.tuples(st.just("walk"), st.integers(1, 4)),
    st.tuples(st.just("reopen"), st.just(0))), max_size=25)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_any_sequence_of_operations_behaves_like_a_fifo_queue(make_storage, operations):
    storage, device = make_storage(), f"prop-{uuid.uuid4().hex[:8]}"
    buffer, model, counter = open_buffer(storage, device), [], 0
    try:
        for op, n in operations:
            if op in ("put", "cli"):
                writer = buffer if op == "put" else open_buffer(storage, device, guest=True)
                writer.put_many(rows(n, start=counter))
                if writer is not buffer:
                    writer.close()
                model += [f"201,x,{i}".encode() for i in range(counter, counter + n)]
                counter += n
            elif op == "ack":
                buffer.ack([r.id for r in buffer.peek(n)])
                model = model[n:]
            elif op == "walk":
                assert payloads(_walk(buffer, n)) == model
            else:
                buffer.close()
                buffer = open_buffer(storage, device)
            assert payloads(buffer.peek(1000)) == model
            assert buffer.stats(time.time()).depth == len(model)
    finally:
        buffer.close()


def _walk(buffer, page: int):
    seen, cursor = [], 0
    while batch := buffer.peek(page, after_id=cursor):
        seen += batch
        cursor = batch[-1].id
    return seen
