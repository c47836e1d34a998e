"""The YAML configuration: loading, validation with `file:line` errors, named tuples.

This is the only module that imports `yaml`. Every problem found is reported with the line
it is on and how to fix it; one run reports all of them, not just the first. Unknown keys are
errors (a typo must never be silently ignored).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

import yaml

from c8ysim import certs, config_checks as checks, durations, hostid, logs
from c8ysim.kinds import HOUSEHOLD_PARAMS, KINDS
from c8ysim.site import COMMS_LOSS, DAY_S, FAULT, WEATHER, WEATHER_KINDS, DeviceSpec, Scenario, Site

DEFAULT_CONFIG_PATH = "/etc/c8ysim.yaml"
DEVICE_PLACE_BOUNDS = {"latitude": (-90, 90), "longitude": (-180, 180),
                       "altitude_m": (-500, 9000)}
HOST_PLACEHOLDER = "{host}"  # in external_id: this machine's ID (c8ysim.hostid), not its name
DEFAULT_EXTERNAL_ID = "c8ysim-" + HOST_PLACEHOLDER + "-{name}"  # unique per machine and device
CONFIG_ENV_VAR = "C8YSIM_CONFIG"
MIN_INTERVAL_S = 0.1
MAX_DEVICES_PER_PROCESS = 1000
MAX_INT = 2**63  # larger numbers are typos, and would not convert to float
EXTERNAL_ID_PLACEHOLDER = checks.EXTERNAL_ID_PLACEHOLDER
MAX_SCENARIO_DELAY_S = 365 * DAY_S  # `after:` at most a year on
MAX_SCENARIO_S = 7 * DAY_S  # `for:` of a one-off scenario (a daily one: at most a day)
SCENARIO_KEYS = ("at", "after", "for", "device", "fault", "uplink_outage", "weather")
SETTINGS_INTERVAL_KEY = "interval_s"  # besides the kind's parameters, in c8y_Configuration
MIN_HIDDEN_CHARS = 3  # secrets shorter than this are not searched for in error messages
HIDDEN = "<not shown>"
NOT_SHOWN = "(its value is not shown: it may be a secret)"

log = logging.getLogger(__name__)


class Problem(NamedTuple):
    line: int
    message: str


class ConfigError(Exception):
    """A config file that cannot be used; `str()` gives one `PATH:LINE: message` per line."""

    def __init__(self, path: str, problems: list[Problem]):
        self.path, self.problems = path, problems
        super().__init__("\n".join(f"{path}:{p.line}: {p.message}" for p in problems))


class TlsConfig(NamedTuple):
    ca_file: str | None = None  # None: the system trust store
    cert_file: str | None = None  # client certificate login (X.509); may hold {external_id}
    key_file: str | None = None

    def for_device(self, external_id: str) -> "TlsConfig":
        """The files of one device: `{external_id}` in cert_file/key_file replaced."""
        return self._replace(cert_file=checks.for_device(self.cert_file, external_id),
                             key_file=checks.for_device(self.key_file, external_id))


class BootstrapConfig(NamedTuple):
    """The bootstrap user devices register with (ref §1.5); one per Cumulocity instance."""

    tenant: str = "management"
    user: str = "devicebootstrap"
    password: str = ""  # never in its repr

    @property
    def username(self) -> str:
        return f"{self.tenant}/{self.user}"

    __repr__ = logs.repr_without


class CumulocityConfig(NamedTuple):
    host: str
    port: int
    tls: TlsConfig | None
    tenant: str | None
    user: str | None
    password: str | None = None  # never in its repr
    keepalive_s: int = 60
    reconnect_max_s: float = 300.0
    required_interval_min: int = 10
    # The ceiling of the site's drain rate, split across its devices. Below it the rate
    # follows the PUBACK latency (c8ysim.uplink.pacing: from 1 % of it, up while Cumulocity
    # keeps up, down when it queues), so the default is the most this takes.
    max_lines_per_s: float = 100000.0
    # Devices without a login of their own register with it and store the one issued.
    bootstrap: BootstrapConfig | None = None

    @property
    def username(self) -> str | None:
        return f"{self.tenant}/{self.user}" if self.tenant and self.user else None

    __repr__ = logs.repr_without


class StorageConfig(NamedTuple):
    backend: str = "sqlite"
    path: str = "/var/lib/c8ysim"
    dsn: str | None = None  # may hold a password: never in its repr
    max_records: int = 200_000
    max_age_hours: float = 24 * 7
    synchronous: str = "normal"

    def __repr__(self) -> str:
        return logs.repr_without(self, ("dsn",))


class StatusConfig(NamedTuple):
    host: str = "127.0.0.1"
    port: int = 8080
    password_file: str | None = None
    # Read once at load (and reload), never shown; HTTP basic auth as user c8ysim when set.
    password: str | None = None  # never in its repr

    @property
    def auth(self) -> tuple[str, str] | None:
        """(user, password) of the status page's basic auth, or None: no auth."""
        return (checks.STATUS_USER, self.password) if self.password else None

    __repr__ = logs.repr_without


class SupervisorConfig(NamedTuple):
    """How the supervisor watches its children (the defaults suit production)."""

    heartbeat_timeout_s: float = 30.0  # a child silent this long is stuck: TERM it
    kill_grace_s: float = 5.0  # after TERM, wait this long before KILL
    stop_timeout_s: float = 8.0  # on stop, children get this long before KILL
    # Devices per child process (scale mode): 1 is a process per device; N > 1 runs the
    # devices in groups of N (config order), one loop per group (`c8ysim.group`).
    devices_per_process: int = 1


class DeviceConfig(NamedTuple):
    name: str
    type: str
    interval_s: float
    external_id: str
    params: tuple[tuple[str, float], ...] = ()
    # Where Cockpit's map shows it (112): its own place, else the site's (None).
    latitude: float | None = None
    longitude: float | None = None
    altitude_m: float | None = None


class Config(NamedTuple):
    path: str
    site: Site
    cumulocity: CumulocityConfig | None
    storage: StorageConfig
    status: StatusConfig
    devices: tuple[DeviceConfig, ...]
    log_level: str = "info"
    supervisor: SupervisorConfig = SupervisorConfig()
    # `PATH:LINE: warning: ...` lines (a password others can read); load() logs them.
    warnings: tuple[str, ...] = ()

    def device(self, name: str) -> DeviceConfig:
        return next(d for d in self.devices if d.name == name)

    def position(self, name: str) -> tuple[float, float, float | None]:
        """(latitude, longitude, altitude in m or None) of device `name` for its 112."""
        device = self.device(name)
        return (self.site.latitude if device.latitude is None else device.latitude,
                self.site.longitude if device.longitude is None else device.longitude,
                device.altitude_m)


def config_path(explicit: str | None = None) -> str:
    """The config file to use: the explicit one, else `$C8YSIM_CONFIG`, else /etc."""
    return explicit or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH


def load(path: str) -> Config:
    """Read and validate `path`; raises ConfigError listing every problem found."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [Problem(0, f"cannot read the config file: {exc}")]) from None
    config = parse(text, path, others_read_mode=checks.others_can_read(path))
    for warning in config.warnings:
        _warn(warning)
    return config


def parse(text: str, path: str = "<string>", others_read_mode: int | None = None) -> Config:
    """Validate YAML `text` (named `path` in messages) into a Config. `others_read_mode`:
    the file's mode when every user can read it (a password in it then gets a warning)."""
    root = _compose(text, path)
    reader = _Reader(root, path, others_read_mode)
    config = reader.config(root, path)
    if reader.problems:
        raise ConfigError(path, sorted(reader.problems, key=lambda p: p.line))
    warnings = tuple(f"{path}:{w.line}: warning: {w.message}" for w in reader.warnings)
    return config._replace(warnings=warnings)


def _compose(text: str, path: str):
    """The YAML node tree of `text` (None if empty); ConfigError naming the line if none."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_problem(exc, text)]) from None
    except RecursionError:
        raise ConfigError(path, [Problem(1, "the YAML is nested far too deeply")]) from None


def _warn(message: str) -> None:
    """One warning line: through logging once it is set up (a reload), else on stderr
    (check-config, the first load of `run`; `<4>` marks it a warning for the journal)."""
    if logging.getLogger().handlers:
        log.warning("%s", message)
    else:
        prefix = "<4>" if os.environ.get("JOURNAL_STREAM") else ""
        print(f"{prefix}{message}", file=sys.stderr)


def find_secrets(text: str) -> tuple[list[tuple[int, int]], set[str]] | None:
    """Where in `text` the values of secret keys are (character offsets, in order, not
    overlapping) and those values, from the parsed YAML: any nesting, `? key` forms, block
    scalars, quoted or aliased values. None when `text` is not YAML (callers then fall back
    to rules on the text)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    nodes = _secret_value_nodes(root, checks.is_secret_key)
    spans: list[tuple[int, int]] = []
    for node in sorted(nodes, key=lambda n: n.start_mark.index):
        start, end = node.start_mark.index, node.end_mark.index
        if spans and start < spans[-1][1]:  # inside (or over) the one before
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        elif end > start:
            spans.append((start, end))
    return spans, _scalar_texts(nodes)


def _secret_value_nodes(root, is_secret) -> list:
    """The value nodes of every mapping key `is_secret` accepts, anywhere under `root`."""
    found, seen, stack = [], set(), [root]
    while stack:  # not recursive: aliases may make the graph deep, or a cycle
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and is_secret(key.value):
                    found.append(value)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return found


def _scalar_texts(nodes) -> set[str]:
    """Every scalar's text in and under `nodes`."""
    texts, seen, stack = set(), set(), list(nodes)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            texts.add(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack += [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return texts


def _yaml_problem(exc: yaml.YAMLError, text: str) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        line = mark.line + 1
    else:  # a ReaderError (forbidden character) knows only its position
        line = text.count("\n", 0, getattr(exc, "position", 0)) + 1
    what = " ".join(str(getattr(exc, "problem", None) or getattr(exc, "reason", None)
                        or exc).split())
    return Problem(line, f"not valid YAML: {what} (check indentation, colons and quotes)")


_SENTINEL = object()


class _Reader:
    """Walks the composed YAML node tree, collecting problems with their line numbers."""

    def __init__(self, root=None, path: str = "<string>", others_read_mode: int | None = None):
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self._path, self._others_read_mode = path, others_read_mode
        # Every value under a key that may hold a secret: no message may show one.
        self._hidden = sorted((t for t in _scalar_texts(_secret_value_nodes(
            root, checks.hides_value)) if len(t) >= MIN_HIDDEN_CHARS), key=len, reverse=True)
        self._constructor = yaml.SafeLoader("")
        self._tls_items: dict = {}  # cumulocity.tls key -> value node, for error lines
        self._device_nodes: dict = {}  # device name -> node to report its problems at

    # -- generic helpers ------------------------------------------------------------------

    def error(self, node, message: str) -> None:
        line = node.start_mark.line + 1 if node else 1
        for secret in self._hidden:  # the last net: messages below already show none
            message = message.replace(secret, HIDDEN)
        self.problems.append(Problem(line, message.replace("\n", "\\n")))  # one line each

    def warning(self, node, message: str) -> None:
        self.warnings.append(Problem(node.start_mark.line + 1 if node else 1, message))

    def warn_if_others_can_read(self, node, path: str, mode: int | None, what: str) -> None:
        if mode is not None:
            self.warning(node, f"{what}, and every user can read {path} (mode {mode:04o}): "
                         f"run chmod o-rwx {path} (group c8ysim may read it)")

    def mapping(self, node, where: str, allowed: tuple[str, ...]) -> dict:
        """The mapping at `node` as {key: value node}; flags unknown and duplicate keys."""
        items = _Items(node)
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{where} must be a mapping (key: value lines)")
            return items
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, f"keys in {where} must be plain words, not lists or maps")
            elif key in items:
                self.error(key_node, f"duplicate key '{key}' in {where}; keep only one")
            elif key not in allowed:
                self.error(key_node, f"unknown key '{key}' in {where}{_suggest(key, allowed)}")
            else:
                items[key] = value_node
        return items

    def value(self, items: dict, key: str, where: str, kind, default=_SENTINEL, check=None):
        """A scalar of python type `kind`; reports missing/wrong-typed/failed-check values."""
        node = items.get(key)
        if node is None:
            if default is _SENTINEL:
                self.error(items.node, f"missing required key '{key}' in {where}")
                return None
            return default
        value = self._scalar(node)
        hidden = checks.hides_value(key)
        if not _is_kind(value, kind):
            shown = NOT_SHOWN if hidden else f"not {value!r}"
            self.error(node, f"{where}.{key} must be {_kind_name(kind)}, {shown}")
            return default if default is not _SENTINEL else None
        if check and (message := check(value)):
            if hidden:
                message = _hide(message, value)
            self.error(node, f"{where}.{key}: {message}")
            return default if default is not _SENTINEL else None
        return value

    def _scalar(self, node):
        if not isinstance(node, yaml.ScalarNode):
            return _Composite()
        try:
            value = self._constructor.construct_object(node, deep=True)
        except Exception:  # noqa: BLE001 - any tag's constructor can fail on its text
            return _Unreadable(node.value)  # a bad date, tag or a 5000-digit number
        if isinstance(value, float) and not math.isfinite(value) or \
                isinstance(value, int) and abs(value) > MAX_INT:
            return _Unreadable(node.value)
        return value

    def section(self, top: dict, key: str, allowed: tuple[str, ...]) -> dict:
        node = top.get(key)
        return self.mapping(node, key, allowed) if node is not None else _Items(top.node)

    # -- sections -------------------------------------------------------------------------

    def config(self, root, path: str) -> Config | None:
        if root is None:
            self.problems.append(Problem(1, "the config file is empty; start from the sample"))
            return None
        top = self.mapping(root, "the top level", (
            "site", "household", "cumulocity", "storage", "status", "devices", "log_level",
            "supervisor", "scenarios"))
        if "site" not in top:
            self.error(root, "missing required section 'site' (latitude, longitude, ...)")
        log_level = self.value(top, "log_level", "config", str, _default(Config, "log_level"),
                               checks.check_log_level)
        devices = self.devices(top)
        specs = tuple(DeviceSpec(d.type, d.name, d.params) for d in devices)
        cumulocity = self.cumulocity(top)
        if cumulocity and cumulocity.tls and cumulocity.tls.cert_file:
            self.client_certificates(cumulocity.tls, devices)
        return Config(
            path=path,
            site=self.site(top)._replace(devices=specs,
                                         scenarios=self.scenarios(top.get("scenarios"), devices)),
            cumulocity=cumulocity,
            storage=self.storage(top),
            status=self.status(top),
            devices=tuple(devices),
            log_level=log_level,
            supervisor=self.supervisor(top),
        )

    def supervisor(self, top: dict) -> SupervisorConfig:
        items = self.section(top, "supervisor", SupervisorConfig._fields)
        defaults = SupervisorConfig()
        return SupervisorConfig(**{
            key: self._supervisor_value(items, key, getattr(defaults, key))
            for key in SupervisorConfig._fields})

    def _supervisor_value(self, items: dict, key: str, default):
        if isinstance(default, int):  # devices_per_process: a count, kept an int
            return int(self.value(items, key, "supervisor", int, default,
                                  checks.in_range(1, MAX_DEVICES_PER_PROCESS)))
        return float(self.value(items, key, "supervisor", float, default,
                                checks.in_range(0.1, 3600)))

    def site(self, top: dict) -> Site:
        items = self.section(top, "site", ("latitude", "longitude", "timezone", "seed"))
        household = self.params(top.get("household"), "household", HOUSEHOLD_PARAMS)
        return Site(
            latitude=self.value(items, "latitude", "site", float, 52.52, checks.in_range(-90, 90)),
            longitude=self.value(items, "longitude", "site", float, 13.40,
                                 checks.in_range(-180, 180)),
            timezone=self.value(items, "timezone", "site", str, "UTC", checks.check_timezone),
            seed=self.value(items, "seed", "site", int, 1),
            household=household,
        )

    def scenarios(self, node, devices: list[DeviceConfig]) -> tuple[Scenario, ...]:
        """The `scenarios:` list: each a fault of one device, its uplink down, or the
        weather, daily `at` a site time or once `after` the agent loaded it, `for` a time."""
        if node is None:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, "'scenarios' must be a list of {at or after, for, device, and "
                       "fault, uplink_outage or weather} mappings")
            return ()
        kinds = {d.name: d.type for d in devices}
        found = (self.scenario(item, kinds) for item in node.value)
        return tuple(scenario for scenario in found if scenario is not None)

    def scenario(self, node, kinds: dict[str, str]) -> Scenario | None:
        items = self.mapping(node, "a scenario", SCENARIO_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        what = [key for key in ("fault", "uplink_outage", "weather") if key in items]
        when = [key for key in ("at", "after") if key in items]
        if len(what) != 1 or len(when) != 1:
            self.error(node, "a scenario needs one of 'at' (a daily site time, \"14:00\") or "
                       "'after' (a duration from the agent's start, 10m), and one of "
                       f"'fault', 'uplink_outage' or 'weather'; this one has {what + when}")
            return None
        daily = when[0] == "at"
        at = self.time_of_day(items["at"]) if daily else None
        limit = DAY_S if daily else MAX_SCENARIO_S
        duration = self.duration(items, "for", limit)
        after = None if daily else self.duration(items, "after", MAX_SCENARIO_DELAY_S)
        device = self.value(items, "device", "scenario", str, "")
        if what[0] == "weather":
            if device:
                self.error(items["device"], "weather is the whole site's: leave 'device' out")
            name = self.value(items, "weather", "scenario", str, None,
                              checks.one_of(*WEATHER_KINDS))
        elif device not in kinds:
            self.error(items.get("device", node), f"the scenario's device {device!r} is not one "
                       f"of the devices ({', '.join(kinds) or 'none'})" if device else
                       "a fault scenario needs 'device': the device it happens to")
            return None
        elif what[0] == "uplink_outage":
            on = self.value(items, "uplink_outage", "scenario", bool, None,
                            lambda v: None if v else "must be true (leave the scenario out)")
            name = COMMS_LOSS if on else None
        else:
            allowed = (*KINDS[kinds[device]].faults, COMMS_LOSS)
            name = self.value(items, "fault", "scenario", str, None, lambda v: None if v in allowed
                              else f"{v!r} is not a fault of {device} (type {kinds[device]}): "
                              f"use one of {', '.join(allowed)}")
        if name is None or duration is None or (at is None and after is None):
            return None
        return Scenario(WEATHER if what[0] == "weather" else FAULT, name,
                        device if what[0] != "weather" else "", duration,
                        daily_at_s=checks.seconds_of_day(at) if daily else None, after_s=after)

    def time_of_day(self, node) -> str | None:
        """`at:` as written: YAML 1.1 reads an unquoted 14:00 as the number 840."""
        text = node.value if isinstance(node, yaml.ScalarNode) else None
        problem = checks.check_time_of_day(text) if isinstance(text, str) else \
            "must be a time of day like \"14:00\""
        if problem:
            self.error(node, f"scenario.at: {problem}")
            return None
        return text

    def duration(self, items: dict, key: str, max_s: float) -> float | None:
        """A duration (`30s`, `10m`, `2h`, `1d` or a number of seconds) up to `max_s`."""
        value = self.value(items, key, "scenario", (str, float))
        if value is None:
            return None
        try:
            return durations.parse(str(value), max_s)
        except ValueError as exc:
            self.error(items[key], f"scenario.{key}: {exc}")
            return None

    def params(self, node, where: str, catalogue) -> tuple[tuple[str, float], ...]:
        if node is None:
            return ()
        items = self.mapping(node, where, tuple(catalogue))
        values = ((k, self.value(items, k, where, float, None, checks.positive)) for k in items)
        return tuple((k, float(v)) for k, v in values if v is not None)

    def cumulocity(self, top: dict) -> CumulocityConfig | None:
        if "cumulocity" not in top:
            return None
        items = self.section(top, "cumulocity", (
            "host", "port", "tls", "tenant", "user", "password", "password_file",
            "keepalive_s", "reconnect_max_s", "required_interval_min", "max_lines_per_s",
            "bootstrap"))
        where, default = "cumulocity", _DefaultsOf(CumulocityConfig)
        tls = self.tls(items.get("tls"))
        password = self.password(items, where)
        bootstrap = self.bootstrap(items.get("bootstrap"))
        if tls is not None and tls.cert_file is not None:
            if "bootstrap" in items:
                self.error(items["bootstrap"], "cumulocity.bootstrap is for devices that log "
                           "in with a password; with tls.cert_file the certificate is the "
                           "device's identity: remove one of the two")
        elif "bootstrap" in items:
            self.own_login_all_or_none(items)
        else:
            for key in ("tenant", "user"):
                self.value(items, key, where, str)
            if password is None and "password" not in items and "password_file" not in items:
                self.error(top["cumulocity"], "cumulocity needs 'password' or 'password_file' "
                           "(or tls.cert_file for certificate login, or bootstrap for "
                           "devices that register themselves)")
        return CumulocityConfig(
            host=self.value(items, "host", where, str, check=checks.non_empty),
            port=self.value(items, "port", where, int, 8883 if tls else 1883, checks.check_port),
            tls=tls,
            tenant=self.value(items, "tenant", where, str, None),
            user=self.value(items, "user", where, str, None),
            password=password,
            keepalive_s=self.value(items, "keepalive_s", where, int, default.keepalive_s,
                                   checks.in_range(5, 3600)),
            reconnect_max_s=self.value(
                items, "reconnect_max_s", where, float, default.reconnect_max_s,
                checks.in_range(1, 86400)),
            required_interval_min=self.value(
                items, "required_interval_min", where, int, default.required_interval_min,
                checks.in_range(-32768, 32767)),
            max_lines_per_s=float(self.value(
                items, "max_lines_per_s", where, float, default.max_lines_per_s,
                checks.in_range(1, 100000))),
            bootstrap=bootstrap,
        )

    def bootstrap(self, node) -> BootstrapConfig | None:
        """`cumulocity.bootstrap`: the bootstrap user's tenant, user and password."""
        if node is None:
            return None
        where, default = "cumulocity.bootstrap", BootstrapConfig()
        items = self.mapping(node, where, ("tenant", "user", "password", "password_file"))
        if not isinstance(node, yaml.MappingNode):
            return None  # reported by mapping()
        tenant = self.value(items, "tenant", where, str, default.tenant,
                            lambda v: checks.non_empty(v) or ("must not contain '/'" if "/" in v
                                                              else None))
        user = self.value(items, "user", where, str, default.user, checks.non_empty)
        password = self.password(items, where)
        if "password" not in items and "password_file" not in items:
            self.error(node, f"{where} needs 'password' or 'password_file': the bootstrap "
                       "user's password of your Cumulocity instance")
        elif password is not None and not password:
            self.error(items.get("password", items.get("password_file")),
                       f"{where}: the password is empty")
        if not (password and tenant and user):
            return None
        return BootstrapConfig(tenant=tenant, user=user, password=password)

    def own_login_all_or_none(self, items: dict) -> None:
        """With bootstrap, a login in the config is optional: all of it, or none."""
        keys = [key for key in items if key in ("tenant", "user", "password", "password_file")]
        complete = {"tenant", "user"} <= set(keys) and bool({"password", "password_file"}
                                                            & set(keys))
        if keys and not complete:
            self.error(items[keys[0]], "cumulocity.tenant, user and password (or "
                       "password_file) go together: set all of them (the login devices use "
                       "until they have their own) or none (with bootstrap, devices register "
                       "themselves)")

    def tls(self, node) -> TlsConfig | None:
        if node is None or isinstance(node, yaml.ScalarNode):
            value = self._scalar(node) if node is not None else False
            if not isinstance(value, bool):
                self.error(node, "cumulocity.tls must be true, false or a mapping "
                           "{ca_file, cert_file, key_file}")
                return None
            return TlsConfig() if value else None
        items = self.mapping(node, "cumulocity.tls", ("ca_file", "cert_file", "key_file"))
        self._tls_items = items
        files = {"ca_file": self.value(items, "ca_file", "cumulocity.tls", str, None,
                                       checks.check_ca_file)}
        for key in ("cert_file", "key_file"):  # with {external_id}: checked per device
            files[key] = self.value(items, key, "cumulocity.tls", str, None,
                                    lambda name: None if EXTERNAL_ID_PLACEHOLDER in name
                                    else checks.readable_file(name))
        if bool(files["cert_file"]) != bool(files["key_file"]):
            self.error(node, "cumulocity.tls: cert_file and key_file go together; set both")
        return TlsConfig(**files)

    def client_certificates(self, tls: TlsConfig, devices: list[DeviceConfig]) -> None:
        """Every device's certificate is readable, fits its key, and its CN is the device's
        external ID (Cumulocity links a certificate login to the device by the CN)."""
        if not tls.key_file:
            return  # already reported: cert_file and key_file go together
        templated = EXTERNAL_ID_PLACEHOLDER in tls.cert_file
        cert_node = self._tls_items.get("cert_file")
        for device in devices:
            node = self._device_nodes.get(device.name, cert_node)
            files = tls.for_device(device.external_id)
            problem = checks.readable_file(files.cert_file) or checks.readable_file(files.key_file)
            if problem:
                self.error(node, f"{problem} (client certificate of device '{device.name}', "
                           "from cumulocity.tls)")
                continue
            try:
                cn = certs.common_name(files.cert_file)
            except certs.CertificateError as exc:
                self.error(node if templated else cert_node, f"cumulocity.tls.cert_file: {exc}")
                continue
            if cn != device.external_id:
                hint = "" if templated or len(devices) == 1 else (
                    f"; give each device its own certificate: cert_file: "
                    f"/etc/c8ysim/certs/{EXTERNAL_ID_PLACEHOLDER}.pem (key_file likewise)")
                self.error(node, f"certificate CN '{cn}' does not match external_id "
                           f"'{device.external_id}' of device '{device.name}' "
                           f"({files.cert_file}){hint}")
                continue
            if problem := checks.check_key_pair(files.cert_file, files.key_file):
                self.error(self._tls_items.get("key_file", node), f"cumulocity.tls.key_file: "
                           f"{problem} (device '{device.name}')")

    def password(self, items: dict, where: str) -> str | None:
        """`<where>.password` or the content of `<where>.password_file` (never shown)."""
        if "password" in items and "password_file" in items:
            self.error(items["password_file"], f"set either {where}.password or "
                       f"{where}.password_file, not both")
            return None
        if "password" in items:
            self.warn_if_others_can_read(items["password"], self._path, self._others_read_mode,
                                         f"{where}.password is in this file")
            return self.secret_string(items["password"], f"{where}.password")
        node = items.get("password_file")
        if node is None:
            return None
        file_name = self._scalar(node)
        if not isinstance(file_name, str) or checks.readable_file(file_name):
            self.error(node, f"{where}.password_file: cannot read that file; it must name a "
                       f"readable file {NOT_SHOWN}")
            return None
        self.warn_if_others_can_read(node, file_name, checks.others_can_read(file_name),
                                     f"{where}.password_file holds the password")
        try:
            return Path(file_name).read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            self.error(node, f"{where}.password_file: the file is not UTF-8 text")
        except OSError as exc:
            self.error(node, f"{where}.password_file: cannot read the file ({exc.strerror})")
        return None

    def secret_string(self, node, where: str) -> str | None:
        """A password: YAML text only. Unquoted, `0777` would become 511 and `12:30:45`
        45045 (YAML 1.1 octal and base 60): a silently wrong password. Never echoed."""
        value = self._scalar(node)
        if isinstance(value, str):
            return value
        changed = "" if isinstance(value, (type(None), _Composite, _Unreadable)) else (
            ", which changes it (unquoted, a leading 0 reads as octal, colons as base 60)")
        self.error(node, f"{where} must be a string, but YAML reads this value as "
                   f"{_read_as(value)}{changed}: put it in quotes, e.g. password: \"...\" "
                   f"{NOT_SHOWN}")
        return None

    def storage(self, top: dict) -> StorageConfig:
        items = self.section(top, "storage", (
            "backend", "path", "dsn", "max_records", "max_age_hours", "synchronous"))
        where, defaults = "storage", StorageConfig()
        backend = self.value(items, "backend", where, str, defaults.backend,
                             checks.one_of("sqlite", "postgres"))
        dsn = self.value(items, "dsn", where, str, None)
        if dsn and checks.dsn_has_password(dsn):
            self.warn_if_others_can_read(items["dsn"], self._path, self._others_read_mode,
                                         "storage.dsn holds a password")
        if backend == "postgres" and not dsn:
            self.error(items.node, "storage.backend is postgres: set storage.dsn "
                       "(e.g. postgresql://c8ysim@localhost/c8ysim)")
        return StorageConfig(
            backend=backend,
            path=self.value(items, "path", where, str, _default_state_dir(), checks.non_empty),
            dsn=dsn,
            max_records=self.value(
                items, "max_records", where, int, defaults.max_records,
                checks.in_range(100, 10**9)),
            max_age_hours=self.value(
                items, "max_age_hours", where, float, defaults.max_age_hours, checks.positive),
            synchronous=self.value(
                items, "synchronous", where, str, defaults.synchronous,
                checks.one_of("normal", "full")),
        )

    def status(self, top: dict) -> StatusConfig:
        items = self.section(top, "status", ("listen", "password_file"))
        default = StatusConfig()
        default_listen = f"{default.host}:{default.port}"
        listen = self.value(items, "listen", "status", str, default_listen, checks.check_listen)
        host, port = checks.split_listen(listen or default_listen)
        password_file = self.value(items, "password_file", "status", str, None,
                                   checks.readable_file)
        password = None
        if password_file is not None:
            try:
                password = Path(password_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError, ValueError):
                self.error(items["password_file"], f"cannot read status.password_file "
                           f"{password_file!r} as UTF-8 text")
            else:
                if not password:
                    self.error(items["password_file"], f"status.password_file "
                               f"{password_file!r} is empty; put the status page password in it")
                    password = None
        elif "password_file" not in items and listen and not checks.is_loopback(host):
            self.error(items.get("listen"), checks.NEEDS_STATUS_PASSWORD.format(listen=listen))
        return StatusConfig(host=host, port=port, password_file=password_file, password=password)

    def devices(self, top: dict) -> list[DeviceConfig]:
        node = top.get("devices")
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(node or top.node, "'devices' must be a non-empty list of "
                       "{name, type, interval_s} mappings")
            return []
        devices: list[DeviceConfig] = []
        for item in node.value:
            device = self.device(item)
            if device is None:
                continue
            if any(d.name == device.name for d in devices):
                self.error(item, f"duplicate device name '{device.name}'; names must be unique")
            elif any(d.external_id == device.external_id for d in devices):
                self.error(item, f"duplicate external_id '{device.external_id}'")
            else:
                devices.append(device)
        return devices

    def device(self, node) -> DeviceConfig | None:
        items = self.mapping(node, "a device", ("name", "type", "interval_s", "external_id",
                                                "latitude", "longitude", "altitude_m")
                             + tuple(KINDS))
        name = self.value(items, "name", "device", str, check=checks.check_device_name)
        kind = self.value(items, "type", "device", str, check=checks.one_of(*KINDS))
        interval = self.value(items, "interval_s", "device", float, 10.0,
                              checks.in_range(MIN_INTERVAL_S, 86400))
        external_id = self.value(items, "external_id", "device", str,
                                 DEFAULT_EXTERNAL_ID.replace("{name}", str(name)),
                                 checks.check_external_id)
        external_id = external_id and external_id.replace(HOST_PLACEHOLDER, hostid.host_id())
        for other in KINDS:
            if other in items and other != kind:
                self.error(items[other], f"'{other}:' parameters on a device of type '{kind}'")
        params = self.params(items.get(kind), f"device.{kind}", KINDS[kind].params if kind in KINDS else {})
        if name is None or kind is None:
            return None
        self._device_nodes.setdefault(name, items.get("external_id", node))
        place = {key: self.value(items, key, "device", float, None, checks.in_range(*bounds))
                 for key, bounds in DEVICE_PLACE_BOUNDS.items()}
        return DeviceConfig(name, kind, float(interval), external_id, params,
                            **{k: None if v is None else float(v) for k, v in place.items()})


def parse_settings(text: str, kind: str) -> tuple[tuple[tuple[str, float], ...], float | None]:
    """A device's simulation settings sent as `c8y_Configuration` text: YAML with
    `interval_s` and the parameters of its kind, checked by the config file's rules.
    Returns (parameters, interval or None); ConfigError names the line of each problem."""
    path = "the configuration text"
    root = _compose(text, path)
    if root is None:  # empty, or comments only: every setting as in the file
        return (), None
    reader = _Reader(root, path)
    catalogue = KINDS[kind].params
    items = reader.mapping(root, "the configuration", (SETTINGS_INTERVAL_KEY, *catalogue))
    interval = reader.value(items, SETTINGS_INTERVAL_KEY, "configuration", float, None,
                            checks.in_range(MIN_INTERVAL_S, 86400))
    values = {k: reader.value(items, k, "configuration", float, None, checks.positive)
              for k in items if k != SETTINGS_INTERVAL_KEY}
    if reader.problems:
        raise ConfigError(path, sorted(reader.problems, key=lambda p: p.line))
    params = tuple((k, float(v)) for k, v in values.items() if v is not None)
    return params, None if interval is None else float(interval)


class _Items(dict):
    """A mapping's entries, remembering the mapping node (for 'missing key' lines)."""

    def __init__(self, node):
        super().__init__()
        self.node = node


class _Unreadable:
    """Stands for a scalar YAML could not turn into a value (bad tag, date or number)."""

    def __init__(self, text: str):
        self.text = text[:40]

    def __repr__(self):
        return f"the unreadable value {self.text!r}"


class _Composite:
    """Stands for a list or mapping where a scalar was expected."""

    def __repr__(self):
        return "a list or mapping"


def _read_as(value) -> str:
    """What YAML made of a scalar, in words, without the value."""
    kinds = ((bool, "true/false"), (int, "a number"), (float, "a number"), (bytes, "binary "
             "data"), (type(None), "empty (null)"), (_Composite, "a list or mapping"))
    found = next((name for kind, name in kinds if isinstance(value, kind)), None)
    return found or ("something it cannot read" if isinstance(value, _Unreadable)
                     else "a date or another non-text value")


def _hide(message: str, value) -> str:
    """`message` without the value (nor its repr) of a key that may hold a secret."""
    for shown in (repr(value), str(value)):
        if len(shown) >= MIN_HIDDEN_CHARS:
            message = message.replace(shown, HIDDEN)
    return message


def _is_kind(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _kind_name(kind) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names[k] for k in kinds)


def _suggest(key: str, allowed) -> str:
    import difflib  # only for a mistyped key

    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (allowed: {', '.join(allowed)})"


class _DefaultsOf:
    """The field defaults of a config record whose required fields have none
    (`_DefaultsOf(CumulocityConfig).keepalive_s`): each default is written once, there."""

    def __init__(self, cls):
        self._cls = cls

    def __getattr__(self, name: str):
        return _default(self._cls, name)


def _default(cls, name: str):
    return cls._field_defaults[name]


def _default_state_dir() -> str:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; outside systemd fall back to /var/lib.
    return os.environ.get("STATE_DIRECTORY", "/var/lib/c8ysim").split(":")[0]
