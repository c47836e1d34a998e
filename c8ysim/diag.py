"""`c8ysim diag`: a support bundle (tar.gz) to attach to a bug report.

Owns what goes into the bundle and that no secret does: the config file with every secret
value replaced (passwords, tokens, keys, also inside a PostgreSQL DSN), the unit's recent
journal, a listing of the state directory and the buffers' statistics (read-only, straight
from the SQLite files with `sqlite3`, through `c8ysim.storage.sqlite_schema.describe`: never
the agent's write path, no writes), the status page if the agent answers, and the versions
of c8ysim, Python and its libraries. Every part is best effort: what cannot be collected is
named in summary.txt instead.

Secrets are removed three times over: from the parsed YAML (every value under a key that
looks like a secret, whatever its form), by rules on the text (for a file YAML cannot
read), and every secret value found is then replaced wherever it appears (journal lines).
The bundle is created, never overwritten: `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import sys
import time
from pathlib import Path

from c8ysim import __version__, config, exits
from c8ysim import config_checks as checks
from c8ysim.config_checks import is_secret_key
from c8ysim.storage import sqlite_schema

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

# The rules on the text, line by line (secret keys: config_checks.SECRET_KEY_RE, any case).
# A key: quoted, or plain (then its colon is followed by a blank or the line's end).
_KEY = (r"""(?:(?P<quoted>"[^"\n]*"|'[^'\n]*')[ \t]*:"""
        r"""|(?P<plain>[^\s"'#:{}\[\],|>][^:#{}\[\],\n]*?)[ \t]*:(?=[ \t]|\Z))""")
# `key: value` in block style, also commented out, in a list or after `? `: everything after
# the colon goes (comments too: a quoted password may hold " #"); so do the deeper-indented
# lines that follow (a block scalar `|`/`>`, a multi-line plain scalar, a nested mapping).
_BLOCK_KEY = re.compile(r"^(?P<lead>[ \t]*(?:#[ \t]*)?(?:-[ \t]+)*(?:\?[ \t]+)?)" + _KEY
                        + r"(?P<rest>.*)\Z")
# `? key` alone on its line (a complex key): the value is on the `:` line that follows.
_COMPLEX_KEY = re.compile(r"^[ \t]*(?:#[ \t]*)?(?:-[ \t]+)*\?[ \t]+(?P<key>\"[^\"\n]*\"|"
                          r"'[^'\n]*'|[^#\n]*?)[ \t]*(?:#.*)?\Z")
_COMPLEX_VALUE = re.compile(r"^(?P<lead>[ \t]*(?:#[ \t]*)?:)(?P<rest>.*)\Z")
# In flow style, `{..., key: value, ...}`: a quoted value, or up to , } ] or #.
_FLOW_KEY = re.compile(r"(?P<lead>[{,][ \t]*(?:\?[ \t]+)?)" + _KEY +
                       r"(?P<value>[ \t]*(?:\"(?:[^\"\\\n]|\\.)*\"?|'(?:[^'\n]|'')*'?"
                       r"|[^,}\]#\n]*))")
# An anchor or tag before a value (kept, so that aliases still resolve); an alias.
_ALIAS = re.compile(r"^\*([^\s,\[\]{}]+)")
_PROPERTIES = re.compile(r"^(?:[&!]\S*[ \t]+)*")


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
    except FileExistsError:
        print(f"c8ysim diag: {output} already exists (a file or a symbolic link); diag never "
              "overwrites one: remove it or choose another path with -o", file=sys.stderr)
        return exits.FAILURE
    except OSError as exc:
        print(f"c8ysim diag: cannot write {output}: {exc}", file=sys.stderr)
        return exits.FAILURE
    print(f"wrote {output}")
    return exits.OK


def collect(config_path: str) -> tuple[dict[str, str], list[str]]:
    """The bundle's files (name -> text, secrets removed) and the summary lines."""
    summary = [f"c8ysim {__version__} diag at {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
               f"config: {config_path}"]
    files: dict[str, str] = {}
    cfg, secrets = _load_config(config_path, files, summary)
    files["journal.txt"] = _journal(summary)
    state_dir = cfg.storage.path if cfg else config.StorageConfig().path
    files["state-dir.txt"] = state_listing(state_dir)
    files["buffers.json"] = _json(buffer_stats(state_dir, summary))
    status = _status_page(cfg, summary) if cfg else None
    if status is not None:
        files["status.json"] = status
    files["versions.json"] = _json(versions())
    files = {name: scrub(text, secrets) for name, text in files.items()}
    return files, [scrub(line, secrets) for line in summary]


def write_bundle(output: Path, top: str, files: dict[str, str], summary: list[str]) -> None:
    """Write the tar.gz: `top/` holding summary.txt and the files, readable by the owner.
    Never through a symbolic link, never over an existing file (FileExistsError)."""
    import tarfile
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 BUNDLE_MODE)
    try:
        os.fchmod(fd, BUNDLE_MODE)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name, text in {"summary.txt": "\n".join(summary) + "\n", **files}.items():
                data = text.encode(errors="replace")
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
                tar.addfile(info, io.BytesIO(data))
    except BaseException:
        os.unlink(output)  # ours: created above with O_EXCL; no half bundle left behind
        raise


# -- the config ----------------------------------------------------------------------------

def _load_config(path: str, files: dict[str, str], summary: list[str]):
    """Put the redacted config text in `files`; return the Config (or None) and the secrets
    to scrub from everything else."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(f"{path} is not a regular file")  # a FIFO would block the reads
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        summary.append(f"config file: cannot read it: {exc}")
        return None, set()
    files["config.yaml"], secrets = redact_and_find(text)
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        summary.append("check-config: FAILED")
        files["check-config.txt"] = str(exc) + "\n"
        return None, _worth_scrubbing(secrets)
    summary.append("check-config: OK")
    summary.extend(cfg.warnings)
    return cfg, _worth_scrubbing(secrets | secrets_of(cfg))


def redact(text: str) -> str:
    """The config text with every secret value replaced, line numbers kept."""
    return redact_and_find(text)[0]


def redact_and_find(text: str) -> tuple[str, set[str]]:
    """`redact(text)`, and the secret values it removed."""
    found = config.find_secrets(text)
    secrets: set[str] = set()
    if found is not None:
        spans, secrets = found
        text = _replace_spans(text, spans)
    text, by_rules = _redact_lines(text)
    return text, secrets | by_rules


def _replace_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Each span's text replaced, line by line (indentation and line breaks kept)."""
    pieces, at = [], 0
    for start, end in spans:
        lines = text[start:end].split("\n")
        first = _PROPERTIES.match(lines[0])[0] + REDACTED
        rest = [line[:_indent(line)] + REDACTED if line.strip() else line for line in lines[1:]]
        pieces += [text[at:start], "\n".join([first, *rest])]
        at = end
    return "".join(pieces) + text[at:]


def _redact_lines(text: str) -> tuple[str, set[str]]:
    """The rules on the text (for what YAML cannot parse): block `key: value` lines, `? key`
    forms, flow mappings, DSNs; and the deeper-indented lines that follow a secret key."""
    lines, found = [], set()
    deeper_than = None  # the column of a secret key whose value goes on below
    complex_key = False  # a `? secret` line was seen: its `:` line comes next
    for line in text.split("\n"):
        indent = _indent(line)
        if deeper_than is not None and (not line.strip() or indent > deeper_than):
            found.update(_values_in(line))
            lines.append(line[:indent] + REDACTED if line.strip() else line)
            continue
        deeper_than = None
        value = _COMPLEX_VALUE.match(line) if complex_key else None
        complex_key = False
        if value:
            found.add(_bare(value["rest"]))
            lines.append(f"{value['lead']} {REDACTED}")
            deeper_than = indent
            continue
        complex_match = _COMPLEX_KEY.match(line)
        if complex_match and _secret(complex_match["key"]):
            complex_key = True
            lines.append(line)
            continue
        block = _BLOCK_KEY.match(line)
        if block and _secret(block["quoted"] or block["plain"]):
            found.add(_bare(block["rest"]))
            lines.append(line[:block.start("rest")] + f" {REDACTED}")
            deeper_than = len(block["lead"])
            continue
        line, open_value = _redact_inline(line, found)
        if open_value:  # `{password:` and the value on the next lines
            deeper_than = indent
        lines.append(line)
    return _redact_anchors("\n".join(lines), found), found


def _redact_anchors(text: str, found: set[str]) -> str:
    """`password: *pw`: the value is where `&pw` was written (on that line)."""
    for alias in {m[1] for value in list(found) for m in _ALIAS.finditer(value)}:
        anchored = re.compile(rf"(&{re.escape(alias)}[ \t]+)([^\n]*)")
        found.update(_bare(m[2]) for m in anchored.finditer(text))
        text = anchored.sub(lambda m: m[1] + REDACTED, text)
    return text


def _redact_inline(line: str, found: set[str]) -> tuple[str, bool]:
    """The line with flow-style secrets and DSN passwords replaced; True when a secret
    key ends the line (its value follows on the next lines)."""
    open_value = False

    def flow(match: re.Match) -> str:
        nonlocal open_value
        if not _secret(match["quoted"] or match["plain"]):
            return match[0]
        found.add(_bare(match["value"]))
        open_value = open_value or not match["value"].strip()
        return match[0][:match.start("value") - match.start()] + " " + REDACTED

    line = _FLOW_KEY.sub(flow, line)
    for pattern in (checks.DSN_URL_PASSWORD, checks.DSN_KEY_PASSWORD):
        for match in pattern.finditer(line):
            found.add(match.group(2).strip("'"))
    line = checks.DSN_URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), line)
    return checks.DSN_KEY_PASSWORD.sub(lambda m: m.group(1) + REDACTED, line), open_value


def _values_in(line: str) -> set[str]:
    """What a line under a secret key may hold: the line, the value after `key:` or `- `,
    and each item of a flow collection (to scrub from the journal)."""
    text = line.strip()
    found = {text}
    while text.startswith(("- ", "? ", ": ")):
        text = text[2:].lstrip()
    block = _BLOCK_KEY.match(text)
    rest = block["rest"] if block else text
    found.add(_bare(rest))
    for item in re.split(r"[,\[\]{}]", rest):
        found.add(_bare(item.split(": ", 1)[-1]))
    return found


def _secret(key: str | None) -> bool:
    return bool(key) and is_secret_key(key.strip().strip("\"'"))


def _bare(value: str) -> str:
    """A value as text: without a trailing comment, blanks and quotes."""
    value = value.split(" #", 1)[0].strip()
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'" \
        else value


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def secrets_of(cfg: config.Config) -> set[str]:
    """The secret values a valid config holds (also read from password files)."""
    found = set()
    if cfg.cumulocity and cfg.cumulocity.password:
        found.add(cfg.cumulocity.password)
    found.add(getattr(cfg.cumulocity and cfg.cumulocity.bootstrap, "password", None) or "")
    found.add(getattr(cfg.status, "password", None) or "")  # the status page's, when set
    for pattern, group in ((checks.DSN_URL_PASSWORD, 2), (checks.DSN_KEY_PASSWORD, 2)):
        for match in pattern.finditer(cfg.storage.dsn or ""):
            found.add(match.group(group).strip("'"))
    return _worth_scrubbing(found)


def _worth_scrubbing(secrets: set[str]) -> set[str]:
    """Secrets long enough to search for (shorter ones would hit ordinary text), and each
    line of a multi-line one."""
    secrets = secrets | {_unescaped(s) for s in secrets if "\\" in s}  # "a\tb" as written
    lines = {line.strip() for secret in secrets for line in secret.splitlines()}
    # as a log line shows it: control characters escaped (c8ysim.logs.escape, repr, JSON)
    shown = {form for secret in secrets for form in (
        secret.encode("unicode_escape").decode(), repr(secret)[1:-1], json.dumps(secret)[1:-1])}
    return {s for s in secrets | lines | shown if len(s) >= MIN_SCRUB_CHARS and s != REDACTED}


def _unescaped(text: str) -> str:
    """A double-quoted YAML scalar's escapes (`\\t`, `\\x41`, `\\u00e9`) read."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except (UnicodeError, ValueError):
        return text


def scrub(text: str, secrets: set[str]) -> str:
    """The last net: any known secret left anywhere (journal lines too) is replaced."""
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


def state_listing(state_dir: str) -> str:
    """`ls -l` of the state directory, from lstat (links shown, never followed)."""
    try:
        entries = sorted(os.scandir(state_dir), key=lambda e: e.name)
    except OSError as exc:
        return f"cannot list {state_dir}: {exc}\n"
    lines = [f"{state_dir}:"]
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError as exc:
            lines.append(f"?          {entry.name!r}: {exc.strerror}")
            continue
        line = (f"{stat.filemode(info.st_mode)} {info.st_uid:>5} {info.st_gid:>5} "
                f"{info.st_size:>12} {time.strftime('%Y-%m-%d %H:%M', time.gmtime(info.st_mtime))}"
                f" {entry.name!r}")
        if stat.S_ISLNK(info.st_mode):
            line += f" -> {_link_target(entry.path)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _link_target(path: str) -> str:
    try:
        target = os.readlink(path)
    except OSError as exc:
        return f"(unreadable link: {exc.strerror})"
    return f"{target!r}" + ("" if os.path.exists(path) else " (broken)")


def buffer_stats(state_dir: str, summary: list[str]) -> dict:
    """Per SQLite buffer file in `state_dir`: size, queue depth, oldest row, meta keys.
    Anything else under a buffer's name (a broken link, a FIFO, a directory, a file it
    cannot read) is listed with what it is, and the others are still read."""
    if not os.access(state_dir, os.R_OK | os.X_OK):
        summary.append(f"buffers: cannot read {state_dir} (run diag as root?)")
        return {}
    try:
        names = sorted(e.name for e in os.scandir(state_dir)
                       if sqlite_schema.device_of(e.name) is not None)
    except OSError as exc:
        summary.append(f"buffers: cannot list {state_dir}: {exc}")
        return {}
    summary.append(f"buffers: {len(names)} SQLite file(s) in {state_dir}")
    return {sqlite_schema.device_of(name): _one_buffer(Path(state_dir, name)) for name in names}


def _one_buffer(path: Path) -> dict:
    stats: dict = {"file": str(path)}
    try:
        info = os.stat(path)  # follows a link: the file the agent would open
    except OSError as exc:
        what = "a broken symbolic link" if os.path.islink(path) else "cannot stat it"
        return {**stats, "error": f"{what}: {exc.strerror}"}
    if not stat.S_ISREG(info.st_mode):  # opening a FIFO would block diag
        return {**stats, "error": f"not a regular file ({stat.filemode(info.st_mode)}); "
                                  "not opened"}
    stats["bytes"] = info.st_size
    try:
        wal = os.stat(f"{path}-wal")
        if stat.S_ISREG(wal.st_mode):
            stats["wal_bytes"] = wal.st_size
    except OSError:
        pass
    try:
        found = sqlite_schema.describe(path, COMMAND_TIMEOUT_S)
    except sqlite_schema.READ_ERRORS as exc:
        return {**stats, "error": str(exc)}
    found["meta"] = {key: value if value is None else str(value)[:META_VALUE_MAX_CHARS]
                     for key, value in found["meta"].items()}
    return {**stats, **found}


def _status_page(cfg: config.Config, summary: list[str]) -> str | None:
    """/api/status as the running agent serves it, with status.password_file's credentials
    (in a header: neither in the URL nor in the summary)."""
    import urllib.error
    import urllib.request
    from c8ysim.status import cli as status_cli
    req = status_cli.request(cfg.status, "/api/status")
    url = req.full_url
    try:
        with urllib.request.urlopen(req, timeout=STATUS_TIMEOUT_S) as response:
            body = response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:  # before OSError: it is one
        summary.append(f"status page: {url} answered {exc.code} {exc.reason}")
        return None
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
