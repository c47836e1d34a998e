"""The `c8ysim` command line and the agent's composition root.

`c8ysim run` loads the config, sets up logging and hands the supervisor what it needs
(how to run a device child, how to build the status app) so that the supervisor itself
never imports the modules that open connections.
"""

from __future__ import annotations

import argparse
import sys

from agent import __version__, config, logs

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


def _load_or_report(path: str) -> config.Config | None:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _check_config(args) -> int:
    path = config.config_path(args.path)
    if _load_or_report(path) is None:
        return config.EX_CONFIG
    print(f"{path}: OK")
    return 0


def _run(args) -> int:
    path = config.config_path(args.config)
    cfg = _load_or_report(path)
    if cfg is None:
        return config.EX_CONFIG
    logs.setup(cfg.log_level, "supervisor")
    # Import the device side here, before any fork: the children share these pages.
    from agent import device, http, notify, supervisor

    try:
        agent = supervisor.Supervisor(cfg, device.run_child, http.build_app, config.load,
                                      notify.Notifier())
        return agent.run()
    except OSError as exc:  # e.g. the status port is taken
        print(f"c8ysim: cannot start: {exc}", file=sys.stderr)
        return 1
