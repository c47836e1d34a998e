"""`c8ysim buffer stats`: each device's queue, read straight from its SQLite file and ledger.

Reads the files read-only (`c8ysim.storage.sqlite_schema`'s views; SQLite's WAL lets this
run beside the daemon) and changes nothing: no migration, no recovery, no moving of corrupt
files — that is the daemon's job.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from c8ysim import config, exits
from c8ysim.storage import sqlite_schema
from c8ysim.storage.ledger import Ledger

BUSY_TIMEOUT_S = 5.0
COLUMNS = ("DEVICE", "QUEUED", "OLDEST", "DROPPED", "QUARANTINED", "LOST")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("buffer", help="inspect the devices' store-and-forward buffers")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = actions.add_parser("stats", help="queue depth, oldest age, dropped, quarantined")
    stats.add_argument("--config", help="config file (as for run)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=run_stats)


def run_stats(args) -> int:
    try:
        cfg = config.load(config.config_path(args.config))
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return exits.CONFIG
    if cfg.storage.backend != "sqlite":
        print("c8ysim buffer stats reads SQLite buffers; with PostgreSQL use "
              "`c8ysim status` (the running agent's view)", file=sys.stderr)
        return exits.USAGE
    rows = {d.name: {**device_stats(sqlite_schema.store_path(cfg.storage, d.name)),
                     "lost": Ledger.beside(cfg.storage, d.name).lost} for d in cfg.devices}
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return exits.OK


def device_stats(path: str) -> dict:
    if not Path(path).exists():
        return {"error": "no buffer yet (the device has not run)"}
    try:
        return sqlite_schema.queue_stats(path, BUSY_TIMEOUT_S)
    except sqlite_schema.READ_ERRORS as exc:
        return {"error": f"cannot read {path}: {exc}"}


def _table(rows: dict) -> str:
    lines = ["  ".join(f"{c:<12}" for c in COLUMNS).rstrip()]
    for name, stats in rows.items():
        if "error" in stats:
            lines.append(f"{name:<12}  {stats['error']}")
            continue
        age = "-" if stats["oldest_age_s"] is None else f"{stats['oldest_age_s']:.0f} s"
        cells = (name, stats["queued"], age, stats["dropped"], stats["quarantined"],
                 stats["lost"])
        lines.append("  ".join(f"{str(c):<12}" for c in cells).rstrip())
    return "\n".join(lines)
