"""The `c8ysim` command line and the agent's composition root.

`c8ysim run` loads the config, sets up logging and hands the supervisor what it needs
(how to run a device child, how to build the status app) so that the supervisor itself
never imports the modules that open connections.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from c8ysim import __version__, buffer_cli, config, diag, exits, logs

from c8ysim.status import cli as status_cli

MAX_TOPIC_BYTES = 256  # Cumulocity's topics are short; MQTT allows 65 535, paho crashes on more


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.handler(args)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, told the terminal's width: argparse's own finds it with
    `import shutil`, which imports bz2 and lzma (~4 ms, and their libraries in every
    process of the agent, which builds this parser before it forks)."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """As shutil.get_terminal_size: $COLUMNS, else the terminal of stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, as their parser_class, its subcommands') with _HelpFormatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="c8ysim", description="Simulated energy devices connected to Cumulocity IoT.")
    parser.add_argument("--version", action="version", version=f"c8ysim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the agent (the daemon)")
    run.add_argument("--config", help=f"config file (default ${config.CONFIG_ENV_VAR} "
                                      f"or {config.DEFAULT_CONFIG_PATH})")
    run.set_defaults(handler=_run)
    check = commands.add_parser("check-config", help="validate a config file; exit 78 if bad")
    check.add_argument("path", nargs="?", help="config file to check")
    check.set_defaults(handler=_check_config)
    status_cli.add_parser(commands)
    send = commands.add_parser(
        "send-test", help="queue one test message for a device's MQTT session")
    send.add_argument("--config", help="config file (as for run)")
    send.add_argument("--device", required=True, help="device name from the config")
    send.add_argument("--topic", required=True, help="MQTT topic, e.g. s/us")
    send.add_argument("--message", required=True, help="payload text, e.g. 400,c8y_Test,hi")
    send.set_defaults(handler=_send_test)
    backfill = commands.add_parser(
        "backfill", help="queue a device's past readings (true timestamps) for sending")
    backfill.add_argument("--config", help="config file (as for run)")
    backfill.add_argument("--device", required=True, help="device name from the config")
    backfill.add_argument("--since", required=True, help="how far back, e.g. 24h, 90m, 7d")
    backfill.set_defaults(handler=_backfill)
    register = commands.add_parser(
        "register", help="list the external IDs to enter under Device management > "
                         "Registration, and which devices have their credentials")
    register.add_argument("--config", help="config file (as for run)")
    register.set_defaults(handler=_register)
    buffer_cli.add_parser(commands)
    diag.add_parser(commands)
    return parser


def _load_or_report(path: str) -> config.Config | None:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        # Under systemd (stderr is the journal) mark the lines as errors (<3>).
        prefix = "<3>" if os.environ.get("JOURNAL_STREAM") else ""
        print("\n".join(prefix + line for line in str(exc).splitlines()), file=sys.stderr)
        return None


def _check_config(args) -> int:
    path = config.config_path(args.path)
    cfg = _load_or_report(path)
    if cfg is None:
        return exits.CONFIG
    print(status_cli.table([[d.name, d.type, d.external_id] for d in cfg.devices],
                           ("DEVICE", "TYPE", "EXTERNAL ID (the MQTT client ID)")))
    print(f"{path}: OK")
    return 0


def _run(args) -> int:
    path = config.config_path(args.config)
    logs.setup("info", "supervisor")  # the config's warnings are log lines (<4>) too
    cfg = _load_or_report(path)
    if cfg is None:
        return exits.CONFIG
    logs.setup(cfg.log_level, "supervisor")
    # Import the device side here, before any fork: the children share these pages.
    from c8ysim import group, notify, supervisor
    from c8ysim.status.deferred import DeferredApp  # bottle comes with the first request
    from c8ysim.storage import ledger, memory, sqlite, tiered  # noqa: F401 - preloaded likewise
    # Connecting resolves the host name through the idna codec, which imports stringprep's
    # tables: ~0.5 MB of private memory in every child if it is first imported there.
    import encodings.idna  # noqa: F401
    # The models (sim.build_model imports them lazily): ~1.2 MB of each child's private
    # memory when every child imports them itself.
    from c8ysim.sim import devices as _models  # noqa: F401
    # A device's first work, once here: what every child would otherwise copy (issue 18).
    from c8ysim import warmup
    warmup.warm_up(cfg)
    try:
        agent = supervisor.Supervisor(cfg, group.run_child, DeferredApp, config.load,
                                      notify.Notifier())
        return agent.run()
    except OSError as exc:  # e.g. the status port is taken
        print(f"c8ysim: cannot start: {exc}", file=sys.stderr)
        return 1


def _register(args) -> int:
    """Per device: its name, the external ID to register, whether its login is stored."""
    from c8ysim.uplink import credentials

    cfg = _load_or_report(config.config_path(args.config))
    if cfg is None:
        return exits.CONFIG
    bootstrap = cfg.cumulocity.bootstrap if cfg.cumulocity else None
    if bootstrap is None:
        print("c8ysim register: cumulocity.bootstrap is not set, so the devices do not "
              "register themselves: they log in with the configured credentials (or "
              "certificates)", file=sys.stderr)
    code = exits.OK
    rows = []
    for device in cfg.devices:
        path = credentials.path_for(cfg.storage.path, device.name)
        try:
            stored = ("not used (no cumulocity.bootstrap)" if bootstrap is None else
                      "stored" if credentials.exists(path) else "none: not registered yet")
        except OSError as exc:
            stored = f"unknown: cannot look into {path.parent} ({exc.strerror})"
            code = exits.FAILURE
        rows.append([device.name, device.external_id, stored])
    if bootstrap is not None:
        print("In Cumulocity, add each external ID without credentials under Device "
              "management > Registration, then accept the device once it asks.")
    print(status_cli.table(rows, ("DEVICE", "EXTERNAL ID", "CREDENTIALS")))
    return code


def _send_test(args) -> int:
    """Append the message to the device's own buffer: the running device sends it in order,
    through its session, like any reading (and keeps it through an outage)."""
    from c8ysim.storage import StorageConfigError, open_buffer
    from c8ysim.storage.store import StoreError
    from c8ysim.uplink.smartrest import MAX_PAYLOAD_BYTES

    cfg = _load_or_report(config.config_path(args.config))
    if cfg is None:
        return exits.CONFIG
    names = [d.name for d in cfg.devices]
    problem = _send_test_problem(args, names, MAX_PAYLOAD_BYTES)
    if problem:
        print(f"c8ysim send-test: {problem}", file=sys.stderr)
        return exits.USAGE
    _become_state_owner(cfg)
    try:
        buffer = open_buffer(cfg.storage, args.device, guest=True)
        try:
            buffer.put_many([(args.topic, args.message.encode(), time.time())])
        finally:
            buffer.close()
    except (StoreError, StorageConfigError) as exc:
        print(f"c8ysim send-test: cannot queue the message: {exc}", file=sys.stderr)
        return exits.FAILURE
    print(f"queued for {args.device} on {args.topic} ({len(args.message.encode())} bytes); "
          "it is sent as soon as the device is online")
    return 0


def _send_test_problem(args, names: list[str], max_bytes: int) -> str | None:
    if args.device not in names:
        return f"no device '{args.device}' in the config (devices: {', '.join(names)})"
    for what, text in (("topic", args.topic), ("message", args.message)):
        try:
            text.encode()
        except UnicodeEncodeError:
            return f"the {what} is not valid UTF-8"
    shown = logs.one_line(args.topic, 80)
    if not args.topic or any(c in args.topic for c in "+#") or not args.topic.isprintable():
        return (f"'{shown}' is not a topic to publish to: no '+', '#', control characters "
                "or empty topics")
    if len(args.topic.encode()) > MAX_TOPIC_BYTES:
        return f"the topic is longer than {MAX_TOPIC_BYTES} bytes"
    if args.topic.startswith("$"):
        return "topics starting with '$' are reserved for the broker"
    if len(args.message.encode()) > max_bytes:
        return f"the message is longer than the {max_bytes}-byte MQTT payload limit"
    return None


def _become_state_owner(cfg: config.Config) -> None:
    """Run as root? Write the SQLite files as the user owning the state directory (the
    service user), or the service could no longer open the WAL files root creates."""
    path = cfg.storage.path
    if cfg.storage.backend != "sqlite" or os.geteuid() != 0 or not os.path.isdir(path):
        return
    owner = os.stat(path)
    if owner.st_uid != 0:
        os.setgid(owner.st_gid)
        os.setuid(owner.st_uid)


def _backfill(args) -> int:
    """Generate the device's readings from `--since` ago until now into its buffer."""
    from c8ysim import backfill
    from c8ysim.storage import StorageConfigError, open_buffer
    from c8ysim.storage.store import StoreError

    cfg = _load_or_report(config.config_path(args.config))
    if cfg is None:
        return exits.CONFIG
    try:
        span_s = backfill.parse_span(args.since)
        device = cfg.device(args.device)
    except (ValueError, StopIteration) as exc:
        names = ", ".join(d.name for d in cfg.devices)
        print(f"c8ysim backfill: {exc or 'no such device'} (devices: {names})", file=sys.stderr)
        return exits.USAGE
    _become_state_owner(cfg)
    now = time.time()
    readings = backfill.count(now - span_s, now, device.interval_s)
    try:
        buffer = open_buffer(cfg.storage, device.name, guest=True)
    except StorageConfigError as exc:
        print(f"c8ysim backfill: {exc}", file=sys.stderr)
        return exits.CONFIG
    try:
        return _backfill_into(buffer, cfg, device, args.since, span_s, now, readings)
    except StoreError as exc:
        print(f"c8ysim backfill: the buffer cannot take the readings ({exc}); what was "
              "queued before stays queued", file=sys.stderr)
        return exits.FAILURE
    finally:
        buffer.close()


def _backfill_into(buffer, cfg, device, since: str, span_s: float, now: float,
                   readings: int) -> int:
    from c8ysim import backfill
    from c8ysim.device import load_model_state

    before = buffer.stats(now)
    room = cfg.storage.max_records - before.depth
    if readings > room:  # each reading is at least one line
        print(f"c8ysim backfill: {readings} readings of {device.name} do not fit: "
              f"{before.depth} rows are queued and storage.max_records is "
              f"{cfg.storage.max_records}, so the oldest would be dropped; choose a shorter "
              "--since or raise storage.max_records", file=sys.stderr)
        return exits.USAGE
    from c8ysim.live import LiveFiles

    # the site as it was: the YAML's daily scenarios and the faults started from Cumulocity
    site = LiveFiles(cfg.storage.path).read().site(cfg.site)
    history = backfill.readings(site, device.name, now - span_s, now, device.interval_s,
                                load_model_state(buffer))
    lines = backfill.store(buffer, history, now)
    dropped = buffer.stats(time.time()).dropped - before.dropped
    print(f"queued {readings} readings ({lines} lines) of {device.name} from the last "
          f"{since}; the running device sends them after what is already queued")
    if dropped:
        print(f"c8ysim backfill: {dropped} of the oldest queued rows were dropped to stay "
              "within storage.max_records", file=sys.stderr)
    return 0
