"""`c8ysim diag`: a support bundle (tar.gz) to attach to a bug report.

Owns what goes into the bundle and that no secret does: the config file with every password
(also inside a PostgreSQL DSN) replaced, the unit's recent journal, the buffers' statistics
(read-only, straight from the SQLite files with `sqlite3`: no agent.storage, no writes), the
status page if the agent answers, and the versions of c8ysim, Python and its libraries.
Every part is best effort: what cannot be collected is named in summary.txt instead.
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import sys
import time
from pathlib import Path

from agent import __version__, config

# tarfile, subprocess, urllib.request, platform and importlib.metadata are imported where
# they are used: `c8ysim run` imports this module, and they would add ~40 ms to its start.

UNIT = "c8ysim"
JOURNAL_LINES = 500
COMMAND_TIMEOUT_S = 15.0
STATUS_TIMEOUT_S = 2.0
META_VALUE_MAX_CHARS = 200
MIN_SCRUB_CHARS = 4  # known secrets shorter than this are too likely to be ordinary text
REDACTED = "<redacted>"
BUNDLE_MODE = 0o600  # the journal and the config layout are nobody else's business
LIBRARIES = {"paho": "paho-mqtt", "yaml": "PyYAML", "bottle": "bottle",
             "sdnotify": "sdnotify", "psycopg2": "psycopg2"}
DEBIAN_PACKAGES = ("c8ysim", "python3", "python3-paho-mqtt", "python3-yaml", "python3-bottle",
                   "python3-sdnotify", "python3-psycopg2")

# `password: value` in block style, also commented out: everything after the colon goes
# (comments too: a quoted password may hold " #"); so does a value on the deeper-indented
# lines that follow `password:` or `password: |`.
_BLOCK_PASSWORD = re.compile(r"^(\s*(#\s*)?(?:-\s+)?[\"']?password[\"']?\s*:)(.*)$")
# In flow style, `{..., password: value, ...}`: a quoted value, or up to , } ] or #.
_FLOW_PASSWORD = re.compile(r"([{,]\s*[\"']?password[\"']?\s*:\s*)"
                            r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^']|'')*'|[^,}\]#\n]*[^,}\]#\s])")
# In a DSN: postgresql://user:PASSWORD@host/db (up to the last @) or password=PASSWORD.
_DSN_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)(\S*)(@)")
_DSN_KEY_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_BLOCK_SCALAR_START = re.compile(r"^\s*([|>][0-9+-]*)?\s*(#.*)?$")


def add_parser(subparsers) -> None:
    """Add `diag` to the CLI's subcommands."""
    diag = subparsers.add_parser(
        "diag", help="write a support bundle (config with secrets redacted, journal, "
                     "buffer stats, versions)")
    diag.add_argument("--config", help="config file (as for run)")
    diag.add_argument("-o", "--output", metavar="PATH",
                      help="the tar.gz to write (default ./c8ysim-diag-TIME.tar.gz)")
    diag.set_defaults(handler=run)


def run(args) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    output = Path(args.output or f"c8ysim-diag-{stamp}.tar.gz")
    files, summary = collect(config.config_path(args.config))
    try:
        write_bundle(output, f"c8ysim-diag-{stamp}", files, summary)
    except OSError as exc:
        print(f"c8ysim diag: cannot write {output}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0


def collect(config_path: str) -> tuple[dict[str, str], list[str]]:
    """The bundle's files (name -> text, secrets removed) and the summary lines."""
    summary = [f"c8ysim {__version__} diag at {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
               f"config: {config_path}"]
    files: dict[str, str] = {}
    cfg, secrets = _load_config(config_path, files, summary)
    files["journal.txt"] = _journal(summary)
    state_dir = cfg.storage.path if cfg else config.StorageConfig().path
    files["buffers.json"] = _json(buffer_stats(state_dir, summary))
    status = _status_page(cfg, summary) if cfg else None
    if status is not None:
        files["status.json"] = status
    files["versions.json"] = _json(versions())
    files = {name: scrub(text, secrets) for name, text in files.items()}
    return files, [scrub(line, secrets) for line in summary]


def write_bundle(output: Path, top: str, files: dict[str, str], summary: list[str]) -> None:
    """Write the tar.gz: `top/` holding summary.txt and the files, readable by the owner."""
    import tarfile
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, BUNDLE_MODE)
    os.fchmod(fd, BUNDLE_MODE)  # also when overwriting a file that was readable by others
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, text in {"summary.txt": "\n".join(summary) + "\n", **files}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))


# -- the config ----------------------------------------------------------------------------

def _load_config(path: str, files: dict[str, str], summary: list[str]):
    """Put the redacted config text in `files`; return the Config (or None) and its secrets."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        files["config.yaml"] = redact(text)
    except OSError as exc:
        summary.append(f"config file: cannot read it: {exc}")
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        summary.append("check-config: FAILED")
        files["check-config.txt"] = str(exc) + "\n"
        return None, set()
    summary.append("check-config: OK")
    return cfg, secrets_of(cfg)


def redact(text: str) -> str:
    """The config text with passwords (also those in DSNs) replaced, line numbers kept."""
    lines, continued_from = [], None  # indentation of a password key whose value follows
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip())
        if continued_from is not None and (not line.strip() or indent > continued_from):
            lines.append(line[:indent] + REDACTED if line.strip() else line)
            continue
        continued_from = None
        block = _BLOCK_PASSWORD.match(line)
        if block:
            if not block.group(2) and _BLOCK_SCALAR_START.match(block.group(3)):
                continued_from = indent
            lines.append(f"{block.group(1)} {REDACTED}")
            continue
        lines.append(_redact_inline(line))
    return "\n".join(lines)


def _redact_inline(line: str) -> str:
    line = _FLOW_PASSWORD.sub(lambda m: m.group(1) + REDACTED, line)
    line = _DSN_URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), line)
    return _DSN_KEY_PASSWORD.sub(lambda m: m.group(1) + REDACTED, line)


def secrets_of(cfg: config.Config) -> set[str]:
    """The secret values a valid config holds (also read from password_file)."""
    found = set()
    if cfg.cumulocity and cfg.cumulocity.password:
        found.add(cfg.cumulocity.password)
    for pattern, group in ((_DSN_URL_PASSWORD, 2), (_DSN_KEY_PASSWORD, 2)):
        for match in pattern.finditer(cfg.storage.dsn or ""):
            found.add(match.group(group).strip("'"))
    return {s for s in found if len(s) >= MIN_SCRUB_CHARS}


def scrub(text: str, secrets: set[str]) -> str:
    """The second net: any known secret left anywhere (journal lines too) is replaced."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


# -- journal, buffers, status page, versions ---------------------------------------------

def _journal(summary: list[str]) -> str:
    import subprocess
    argv = ["journalctl", "-u", UNIT, "-n", str(JOURNAL_LINES), "--no-pager"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        summary.append(f"journal: not available ({exc})")
        return ""
    summary.append(f"journal: {' '.join(argv)} exited {result.returncode}")
    return result.stdout + (f"\n[stderr]\n{result.stderr}" if result.stderr else "")


def buffer_stats(state_dir: str, summary: list[str]) -> dict:
    """Per SQLite buffer file in `state_dir`: size, queue depth, oldest row, meta keys."""
    if not os.access(state_dir, os.R_OK | os.X_OK):
        summary.append(f"buffers: cannot read {state_dir} (run diag as root?)")
        return {}
    files = sorted(Path(state_dir).glob("*.sqlite3"))
    summary.append(f"buffers: {len(files)} SQLite file(s) in {state_dir}")
    return {path.stem: _one_buffer(path) for path in files}


def _one_buffer(path: Path) -> dict:
    stats: dict = {"file": str(path), "bytes": path.stat().st_size}
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        stats["wal_bytes"] = wal.stat().st_size
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                             timeout=COMMAND_TIMEOUT_S)
    except sqlite3.Error as exc:
        return {**stats, "error": str(exc)}
    try:
        stats.update(_queries(db))
    except sqlite3.Error as exc:
        stats["error"] = str(exc)
    finally:
        db.close()
    return stats


def _queries(db: sqlite3.Connection) -> dict:
    depth, oldest = db.execute("SELECT count(*), min(created) FROM outbox").fetchone()
    meta = {key: value if value is None else str(value)[:META_VALUE_MAX_CHARS]
            for key, value in db.execute("SELECT key, value FROM meta ORDER BY key")}
    return {"schema_version": db.execute("PRAGMA user_version").fetchone()[0],
            "outbox_rows": depth,
            "oldest_age_s": round(time.time() - oldest, 1) if oldest is not None else None,
            "meta": meta}


def _status_page(cfg: config.Config, summary: list[str]) -> str | None:
    import urllib.request
    host = cfg.status.host if cfg.status.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{cfg.status.port}/api/status"
    try:
        with urllib.request.urlopen(url, timeout=STATUS_TIMEOUT_S) as response:
            body = response.read().decode(errors="replace")
    except OSError as exc:
        summary.append(f"status page: {url} did not answer ({exc})")
        return None
    summary.append(f"status page: {url} answered")
    return body


def versions() -> dict:
    """c8ysim's, Python's and the libraries' versions (read from their metadata, not
    imported), and the Debian packages' when dpkg is there."""
    import platform
    from importlib import metadata
    found = {"c8ysim": __version__, "python": sys.version.split()[0],
             "python_executable": sys.executable, "platform": platform.platform()}
    for module, dist in LIBRARIES.items():
        try:
            found[module] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[module] = None
    found["debian_packages"] = _debian_packages()
    return found


def _debian_packages() -> dict | None:
    import subprocess
    argv = ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n",
            *DEBIAN_PACKAGES]
    try:
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = (line.split() for line in result.stdout.splitlines())
    return {f[0]: f[1] for f in fields if len(f) == 3 and f[2].startswith("ii")}


def _json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"
