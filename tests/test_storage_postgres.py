"""The PostgreSQL backend against a real server the tests start, stop and start again.

Outages are real: the throwaway cluster is stopped (`pg_ctl -m immediate`, a crash) while a
buffer writes, and started again; the buffer must fall back to its local SQLite file, keep
every reading, and keep the per-device order when PostgreSQL is back.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import psycopg2
import pytest

from c8ysim.config import StorageConfig
from c8ysim.storage import open_buffer
pytest.register_assert_rewrite("storage_support")
from storage_support import retry_now

pytest_plugins = ["storage_support"]


@pytest.fixture
def storage(postgres_server, tmp_path) -> StorageConfig:
    return StorageConfig(backend="postgres", dsn=postgres_server.dsn, path=str(tmp_path))


@pytest.fixture
def device() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def server(postgres_server):
    """The cluster, started again after the test whatever happened in it."""
    yield postgres_server
    postgres_server.start()


def ticks(start: int, stop: int):
    return [("s/us", f"201,t,{i}".encode(), time.time()) for i in range(start, stop)]


def payloads(records) -> list[bytes]:
    return [r.payload for r in records]


def expected(start: int, stop: int) -> list[bytes]:
    return [f"201,t,{i}".encode() for i in range(start, stop)]


def drain(buffer, limit: int = 100_000) -> list[bytes]:
    """Everything the session would send now, in order (acked as it goes)."""
    sent = []
    while batch := buffer.peek(500):
        sent += payloads(batch)
        buffer.ack([r.id for r in batch])
        assert len(sent) <= limit
    return sent


def test_missing_driver_is_a_clear_config_error(storage):
    code = ("import sys; sys.modules['psycopg2'] = None\n"
            "from c8ysim.config import StorageConfig\n"
            "from c8ysim.storage import open_buffer, StorageConfigError\n"
            f"try: open_buffer(StorageConfig(backend='postgres', dsn='x', path={storage.path!r}),"
            " 'dev')\n"
            "except StorageConfigError as exc: print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "psycopg2 is not installed" in out and "python3-psycopg2" in out


def test_drain_query_walks_the_device_id_index(storage, device):
    buffer = open_buffer(storage, device)
    buffer.put_many(ticks(0, 3))
    conn = psycopg2.connect(storage.dsn)
    with conn.cursor() as cur:
        cur.execute("SET enable_seqscan = off")
        cur.execute("EXPLAIN SELECT id, topic, payload, created FROM c8ysim_outbox "
                    "WHERE device = %s AND id > 0 ORDER BY id LIMIT 500", (device,))
        plan = " ".join(row[0] for row in cur.fetchall())
        cur.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'c8ysim_outbox'")
        indexes = [row[0] for row in cur.fetchall()]
    conn.close()
    buffer.close()
    assert "Index" in plan and any("(device, id)" in i for i in indexes)


def test_unreachable_at_start_uses_the_fallback_then_drains_it_in_order(
        server, storage, device):
    first = open_buffer(storage, device)
    first.put_many(ticks(0, 20), meta={"model.state": "a"})
    first.close()
    server.stop("immediate")
    buffer = open_buffer(storage, device)
    buffer.put_many(ticks(20, 40), meta={"model.state": "b"})
    stats = buffer.stats(time.time())
    assert "PostgreSQL" in stats.degraded and "20 readings in the SQLite fallback" in \
        stats.degraded
    assert buffer.peek(10) == []  # PostgreSQL may hold older readings: order first
    server.start()
    retry_now(buffer)
    buffer.put_many(ticks(40, 45))
    assert buffer.stats(time.time()).degraded is None
    assert buffer.get_meta("model.state") == "b"
    assert drain(buffer) == expected(0, 45)
    buffer.close()


def test_outage_while_rows_wait_keeps_them_ahead_of_the_fallback(server, storage, device):
    buffer = open_buffer(storage, device)
    buffer.put_many(ticks(0, 50))
    in_flight = buffer.peek(10)  # the session has these out when the server dies
    server.stop("immediate")
    buffer.put_many(ticks(50, 80), meta={"model.state": "during"})
    buffer.ack([r.id for r in in_flight])  # their PUBACKs arrive during the outage
    assert buffer.peek(10, after_id=in_flight[-1].id) == []
    assert buffer.stats(time.time()).depth == 80 - 10
    server.start()
    retry_now(buffer)
    buffer.put_many(ticks(80, 90))
    assert drain(buffer) == expected(10, 90)
    assert buffer.get_meta("model.state") == "during"
    buffer.close()


def test_outage_while_caught_up_sends_from_the_fallback_meanwhile(server, storage, device):
    buffer = open_buffer(storage, device)
    buffer.put_many(ticks(0, 10))
    sent = drain(buffer)
    server.stop("fast")  # a crash could forget the last acks: see the next test
    buffer.put_many(ticks(10, 30))
    buffer.set_meta("restart", "executing")
    buffer.set_meta("restart", None)  # a deletion during the outage must reach PostgreSQL
    part = buffer.peek(15)
    buffer.ack([r.id for r in part])
    sent += payloads(part)
    server.start()
    retry_now(buffer)
    buffer.put_many(ticks(30, 40))
    sent += drain(buffer)
    assert sent == expected(0, 40)
    assert buffer.get_meta("restart") is None
    buffer.close()
    again = open_buffer(storage, device)
    assert again.get_meta("restart") is None and again.stats(time.time()).depth == 0
    again.close()


def test_a_server_crash_may_resend_acked_rows_but_never_loses_one(server, storage, device):
    buffer = open_buffer(storage, device)
    buffer.put_many(ticks(0, 10))
    sent = drain(buffer)  # acks commit without waiting for the WAL flush
    server.stop("immediate")
    buffer.put_many(ticks(10, 20))
    server.start()
    retry_now(buffer)
    buffer.put_many(ticks(20, 30))
    again = drain(buffer)
    assert again[-20:] == expected(10, 30)
    resent = again[:-20]  # acked just before the crash, forgotten by it: sent again, in order
    assert resent == [p for p in sent if p in resent]
    buffer.close()


def test_restart_during_an_outage_renumbers_nothing_that_was_sent(server, storage, device):
    buffer = open_buffer(storage, device)
    buffer.put_many(ticks(0, 30))
    buffer.close()
    server.stop("immediate")
    during = open_buffer(storage, device)  # ids from the fallback alone: provisional
    during.put_many(ticks(30, 40))
    during.close()
    server.start()
    after = open_buffer(storage, device)
    after.put_many(ticks(40, 41))
    records = after.peek(1000)
    assert payloads(records) == expected(0, 41)
    assert [r.id for r in records] == sorted({r.id for r in records})
    after.close()
