"""The device credentials Cumulocity issued at registration: one file per device.

A device that registers itself (`cumulocity.bootstrap`, ref §1.5) gets its own tenant, user
and password once, on `s/dcr`; they live in `<state dir>/<device>.credentials` (JSON), the
only copy there is. So the file is written the durable way (a new temp file, created
owner-only with O_EXCL|O_NOFOLLOW, written, fsynced, renamed over the old one, the
directory fsynced), never through a symbolic link, and read back without following one.

The password never leaves this module but in `Credentials.password` (whose repr hides it):
nothing here logs it, and no error message shows the file's content.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import NamedTuple

from c8ysim import logs

FILE_SUFFIX = ".credentials"
FILE_MODE = 0o600
MAX_FILE_BYTES = 64 * 1024  # a few hundred bytes expected; more is not ours
_TEMP_TAG = ".tmp-"

log = logging.getLogger(__name__)


class Credentials(NamedTuple):
    """A device user's login: MQTT username `<tenant>/<user>` and its password."""

    tenant: str
    user: str
    password: str  # never in its repr

    __repr__ = logs.repr_without

    @property
    def username(self) -> str:
        return f"{self.tenant}/{self.user}"


class CredentialsError(Exception):
    """The stored credentials cannot be read or written (the message holds no secret)."""


def path_for(state_dir: str | os.PathLike, device_name: str) -> Path:
    return Path(state_dir) / f"{device_name}{FILE_SUFFIX}"


def problem(tenant: object, user: object, password: object) -> str | None:
    """Why these fields are no usable login (None: they are). Never shows the password."""
    for name, value in (("tenant", tenant), ("user", user), ("password", password)):
        if not isinstance(value, str) or not value:
            return f"the {name} is missing or empty"
        if name != "password" and not value.isprintable():
            return f"the {name} holds control characters"  # it is logged
    if "/" in tenant:
        return "the tenant contains '/'"
    return None


def exists(path: Path) -> bool:
    """Whether credentials are stored at `path` (OSError when that cannot be told)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def load(path: Path) -> Credentials | None:
    """The stored credentials; None when there are none. CredentialsError when the file
    is there but unusable (not a regular file, unreadable, not ours)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CredentialsError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            _tighten(fd, path, info.st_mode)
        data = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return _decode(data, path)


def _tighten(fd: int, path: Path, mode: int) -> None:
    log.warning("%s was readable by others (mode %04o): set to %04o", path, mode & 0o7777,
                FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError as exc:
        log.warning("cannot change the mode of %s: %s", path, exc.strerror)


def _decode(data: bytes, path: Path) -> Credentials:
    if len(data) > MAX_FILE_BYTES:
        raise CredentialsError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CredentialsError(f"{path} is not the JSON c8ysim writes") from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"{path} is not the JSON c8ysim writes")
    fields = doc.get("tenant"), doc.get("user"), doc.get("password")
    if reason := problem(*fields):
        raise CredentialsError(f"{path}: {reason}")
    return Credentials(*fields)


def save(path: Path, credentials: Credentials) -> None:
    """Store `credentials` at `path`, replacing what is there, durably (CredentialsError)."""
    directory = path.parent
    data = json.dumps({"tenant": credentials.tenant, "user": credentials.user,
                       "password": credentials.password, "stored_at": round(time.time())},
                      indent=1).encode() + b"\n"
    temp = directory / f".{path.name}{_TEMP_TAG}{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _remove_stale_temps(path)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE)
    except OSError as exc:
        raise CredentialsError(f"cannot create a file in {directory}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # 0600 from creation; this only asserts it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)  # a link at `path` is replaced, never followed
        _sync_directory(directory)
    except OSError as exc:
        _unlink(temp)
        raise CredentialsError(f"cannot write {path}: {exc.strerror}") from None


def delete(path: Path) -> bool:
    """Remove the stored credentials; True when there were some (CredentialsError)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CredentialsError(f"cannot delete {path}: {exc.strerror}") from None
    _sync_directory(path.parent)
    return True


def _remove_stale_temps(path: Path) -> None:
    """Temp files a crash between create and rename left behind (never a whole login)."""
    prefix = f".{path.name}{_TEMP_TAG}"
    for entry in os.scandir(path.parent):
        if entry.name.startswith(prefix):
            _unlink(Path(entry.path))


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
