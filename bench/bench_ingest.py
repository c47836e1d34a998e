"""Ingest benchmark: what a device's ticks cost each backend.

One tick = one put_many of 3 SmartREST lines (~200 bytes each) with the model state in
`meta`, as c8ysim/device.py does. Prints ticks/s and rows/s, bytes on disk per 100 000
records, and what each tick writes (SD-card wear): for SQLite the write() calls and bytes
the process issues (/proc/self/io), for PostgreSQL the WAL bytes (pg_stat_wal).
Figures only, no asserts.

    .venv/bin/python bench/bench_ingest.py [--ticks 10000] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import psycopg2  # noqa: E402

from c8ysim.config import StorageConfig  # noqa: E402
from c8ysim.storage import open_buffer  # noqa: E402
from bench_drain import smartrest_line, start_postgres  # noqa: E402

ROWS_PER_TICK = 3
STATE = '{"energy_kwh": 12345.678, "t": 1750000000.0, "temperature_c": 41.5}'
PER_RECORDS = 100_000


def ticks_into(buffer, ticks: int) -> float:
    start = time.perf_counter()
    for tick in range(ticks):
        now = time.time()
        rows = [("s/us", smartrest_line(tick * ROWS_PER_TICK + k), now)
                for k in range(ROWS_PER_TICK)]
        buffer.put_many(rows, meta={"model.state": STATE})
    return ticks / (time.perf_counter() - start)


def process_io() -> dict[str, int]:
    lines = Path("/proc/self/io").read_text().split("\n")
    return {k: int(v) for k, v in (line.split(": ") for line in lines if line)}


def bench_sqlite(ticks: int, workdir: Path) -> str:
    storage = StorageConfig(path=str(workdir / "sqlite"), max_records=10**8)
    buffer = open_buffer(storage, "ingest")
    before = process_io()
    rate = ticks_into(buffer, ticks)
    after = process_io()
    buffer.close()
    size = sum(p.stat().st_size for p in Path(storage.path).iterdir())
    writes = (after["syscw"] - before["syscw"]) / ticks
    written = (after["wchar"] - before["wchar"]) / ticks
    return (f"{rate:8,.0f} ticks/s = {rate * ROWS_PER_TICK:9,.0f} rows/s; "
            f"{size * PER_RECORDS / (ticks * ROWS_PER_TICK) / 1e6:6.1f} MB per 100k records; "
            f"per tick {writes:.1f} write() calls, {written / 1024:.1f} KiB")


def bench_postgres(ticks: int, workdir: Path, pg) -> str:
    storage = StorageConfig(backend="postgres", dsn=pg.dsn, path=str(workdir / "fb"),
                            max_records=10**8)
    buffer = open_buffer(storage, "ingest")
    wal_before = _wal_bytes(pg.dsn)
    rate = ticks_into(buffer, ticks)
    wal = (_wal_bytes(pg.dsn) - wal_before) / ticks
    buffer.close()
    size = _table_bytes(pg.dsn)
    return (f"{rate:8,.0f} ticks/s = {rate * ROWS_PER_TICK:9,.0f} rows/s; "
            f"{size * PER_RECORDS / (ticks * ROWS_PER_TICK) / 1e6:6.1f} MB per 100k records; "
            f"per tick {wal / 1024:.1f} KiB of WAL")


def _query(dsn: str, sql: str) -> int:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(sql)
        value = cur.fetchone()[0]
    conn.close()
    return int(value)


def _wal_bytes(dsn: str) -> int:
    return _query(dsn, "SELECT wal_bytes FROM pg_stat_wal")


def _table_bytes(dsn: str) -> int:
    return _query(dsn, "SELECT pg_total_relation_size('c8ysim_outbox')")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgres",
                        type=lambda s: [b for b in s.split(",") if b])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="c8ysim-ingest-"))
    print(f"c8ysim ingest benchmark: {args.ticks} ticks of {ROWS_PER_TICK} rows + state, one "
          f"transaction each, load average {os.getloadavg()[0]:.1f}")
    try:
        if "sqlite" in args.backends:
            print(f"  sqlite   (WAL, synchronous=normal): {bench_sqlite(args.ticks, workdir)}")
        if "postgres" in args.backends:
            pg = start_postgres()
            try:
                print(f"  postgres (default durability)    : "
                      f"{bench_postgres(args.ticks, workdir, pg)}")
            finally:
                pg.destroy()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
