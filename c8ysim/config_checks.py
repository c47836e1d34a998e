"""Checks of single config values: each returns None when fine, else what is wrong and how
to fix it (the loader in config.py adds file and line). Pure, apart from reading files the
config names (certificates, CA bundles, password files).
"""

from __future__ import annotations

import ipaddress
import os
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Used with fullmatch(): `$` with match() also accepts a trailing newline ("pv\n").
DEVICE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A key whose value may be a secret: errors never show its value, and `c8ysim diag` redacts
# it. Generous on purpose, typos and case included ("Pasword", "passwd", "pwd", "api-key"):
# a false positive costs one redacted line, a false negative leaks a password.
SECRET_KEY_RE = re.compile(r"pa?s+w(?:or|ro|o|r)?d|pass|pwd|secret|token|credential|private"
                           r"|(?:^|[\W_])(?:api[_-]?)?keys?$", re.IGNORECASE)
OTHERS_READ = 0o004  # group read is how the service user reads a root-owned config (0640)
MAX_EXTERNAL_ID_CHARS = 128
EXTERNAL_ID_PLACEHOLDER = "{external_id}"  # in tls.cert_file/key_file: one per device


def in_range(low: float, high: float):
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def positive(value) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def check_time_of_day(text: str) -> str | None:
    if seconds_of_day(text) is None:
        return f"{text!r} is not a time of day like \"14:00\" (HH:MM, 00:00-23:59, quoted)"
    return None


def seconds_of_day(text: str) -> float | None:
    """'14:30' -> 52200.0; None for anything else."""
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2 and len(hours) <= 2):
        return None
    if int(hours) > 23 or int(minutes) > 59:
        return None
    return int(hours) * 3600.0 + int(minutes) * 60.0


def check_port(port: int) -> str | None:
    return None if 1 <= port <= 65535 else "must be a TCP port between 1 and 65535"


def check_log_level(level: str) -> str | None:
    return one_of("debug", "info", "warning", "error")(level)


def check_timezone(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: e.g. 'Europe' is a folder
        return f"unknown time zone '{name}' (use an IANA name such as Europe/Berlin)"
    return None


def hides_value(key: str) -> bool:
    """True for a key whose value errors must not show (`password_file` too: it may hold
    the password itself, typed in the wrong place)."""
    return bool(SECRET_KEY_RE.search(key))


def is_secret_key(key: str) -> bool:
    """True for a key whose value is a secret to redact; `*_file` keys name paths."""
    return hides_value(key) and not key.strip().lower().endswith(("_file", "_path", "_dir"))


def others_can_read(path: str) -> int | None:
    """The file's mode when users other than its owner and group can read it, else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return mode & 0o7777 if mode & OTHERS_READ else None


def check_device_name(name: str) -> str | None:
    if DEVICE_NAME_RE.fullmatch(name):
        return None
    return "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def check_external_id(external_id: str) -> str | None:
    if ":" in external_id:
        return "must not contain ':' (Cumulocity reads it as a client ID separator)"
    if not external_id.strip() or len(external_id) > MAX_EXTERNAL_ID_CHARS:
        return f"must be 1-{MAX_EXTERNAL_ID_CHARS} characters"
    if any(c in external_id for c in "+#/ ") or not external_id.isprintable():
        return "must not contain '+', '#', '/', spaces or control characters"
    return None


def readable_file(name: str) -> str | None:
    if "\0" in name or not os.path.isfile(name) or not os.access(name, os.R_OK):
        return f"cannot read file {name!r} (it must be a readable file)"
    return None


def for_device(path: str | None, external_id: str) -> str | None:
    return path.replace(EXTERNAL_ID_PLACEHOLDER, external_id) if path else path


def check_ca_file(name: str) -> str | None:
    if problem := readable_file(name):
        return problem
    import ssl  # only with TLS files: importing ssl loads OpenSSL

    try:
        ssl.create_default_context(cafile=name)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return f"'{name}' holds no usable PEM CA certificate ({exc})"
    return None


def check_key_pair(cert_file: str, key_file: str | None) -> str | None:
    """None when the private key fits the certificate (and is not password-protected)."""
    import ssl  # only with TLS files: importing ssl loads OpenSSL

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            cert_file, key_file, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        return (f"the key in '{key_file}' does not match the certificate in '{cert_file}', "
                f"or is unreadable or password-protected ({exc})")
    return None


def check_listen(listen: str) -> str | None:
    try:
        split_listen(listen)
    except ValueError:
        return "use HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
    return None


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(listen)
    return host.strip("[]"), int(port)


STATUS_USER = "c8ysim"  # the user name of the status page's basic auth
NEEDS_STATUS_PASSWORD = (
    "status.listen {listen} is reachable from other hosts, and the status page shows the "
    "site's data: set status.password_file to a file holding a password (HTTP basic auth, "
    "user c8ysim), or listen on loopback (127.0.0.1:8080)")


def is_loopback(host: str) -> bool:
    """True when only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


# Where a PostgreSQL DSN holds a password: the URL form `scheme://user:<secret>@host/db` (up
# to the last @), or the key form `password=<secret>`. Group 2 of each is the secret.
DSN_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)(\S*)(@)")
DSN_KEY_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def dsn_has_password(dsn: str) -> bool:
    return bool(DSN_URL_PASSWORD.search(dsn) or DSN_KEY_PASSWORD.search(dsn))
