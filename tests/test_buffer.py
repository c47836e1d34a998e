"""The SQLite buffer: order, acknowledgement, bounds, durable device state, reopening."""

from __future__ import annotations

import time

from agent.config import StorageConfig
from agent.storage import open_buffer


def storage(tmp_path, **overrides) -> StorageConfig:
    return StorageConfig(path=str(tmp_path), **overrides)


def rows(n, start=0):
    now = time.time()
    return [("s/us", f"201,x,{i}".encode(), now + i) for i in range(start, start + n)]


def test_put_peek_ack_round_trip(tmp_path):
    buffer = open_buffer(storage(tmp_path), "dev")
    buffer.put_many(rows(5))
    peeked = buffer.peek(3)
    assert [r.payload for r in peeked] == [b"201,x,0", b"201,x,1", b"201,x,2"]
    assert buffer.peek(10, after_id=peeked[-1].id)[0].payload == b"201,x,3"
    buffer.ack([r.id for r in peeked])
    assert [r.payload for r in buffer.peek(10)] == [b"201,x,3", b"201,x,4"]
    assert buffer.stats(time.time()).depth == 2


def test_rows_and_state_survive_reopen(tmp_path):
    buffer = open_buffer(storage(tmp_path), "dev")
    buffer.put_many(rows(3), meta={"model.state": '{"kwh": 1.5}'})
    buffer.close()
    again = open_buffer(storage(tmp_path), "dev")
    assert len(again.peek(10)) == 3
    assert again.get_meta("model.state") == '{"kwh": 1.5}'
    assert again.stats(time.time()).depth == 3


def test_ids_never_repeat_after_the_queue_empties(tmp_path):
    buffer = open_buffer(storage(tmp_path), "dev")
    buffer.put_many(rows(2))
    first = buffer.peek(10)
    buffer.ack([r.id for r in first])
    buffer.put_many(rows(1, start=2))
    assert buffer.peek(10, after_id=first[-1].id)[0].payload == b"201,x,2"


def test_oldest_rows_dropped_and_counted_beyond_max_records(tmp_path):
    buffer = open_buffer(storage(tmp_path, max_records=100), "dev")
    buffer.put_many(rows(150))
    stats = buffer.stats(time.time())
    assert stats.depth == 100 and stats.dropped == 50
    assert buffer.peek(1)[0].payload == b"201,x,50"


def test_rows_older_than_max_age_dropped(tmp_path):
    buffer = open_buffer(storage(tmp_path, max_age_hours=1), "dev")
    now = time.time()
    buffer.put_many([("s/us", b"old", now - 7200), ("s/us", b"new", now)])
    assert [r.payload for r in buffer.peek(10)] == [b"new"]
    assert buffer.stats(now).dropped == 1


def test_quarantine_moves_rows_out_of_the_queue(tmp_path):
    buffer = open_buffer(storage(tmp_path), "dev")
    buffer.put_many(rows(3))
    buffer.quarantine([buffer.peek(1)[0].id], "too big")
    stats = buffer.stats(time.time())
    assert stats.depth == 2 and stats.quarantined == 1
    assert buffer.peek(1)[0].payload == b"201,x,1"


def test_meta_set_and_delete(tmp_path):
    buffer = open_buffer(storage(tmp_path), "dev")
    buffer.set_meta("restart", "executing")
    assert buffer.get_meta("restart") == "executing"
    buffer.set_meta("restart", None)
    assert buffer.get_meta("restart") is None
