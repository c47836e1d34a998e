"""`c8ysim status [--json]`: the running agent's devices, read from its own status page.

Reads `GET /api/status` on the config's `status.listen` address (a wildcard listen address
is reached over loopback), with the credentials of `status.password_file` when it is set
(HTTP basic auth as user c8ysim; sent in a header, never printed), and prints a table, or
the JSON as it came with `--json`.
Exit codes: 0 shown, 3 the agent is not running (nothing answers; as `systemctl status`),
78 the config cannot be read, 1 something else answered.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys

from c8ysim import config, exits

from c8ysim.status import view as sv

TIMEOUT_S = 3.0
COLUMNS = ("DEVICE", "EXTERNAL ID", "TYPE", "STATE", "QUEUED", "OLDEST", "SENT", "DROPPED", "LOST", "POWER",
           "LAST ACK")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "status", help="show the running agent's devices (from its status page)")
    parser.add_argument("--config", help=f"config file (default ${config.CONFIG_ENV_VAR} "
                                         f"or {config.DEFAULT_CONFIG_PATH})")
    parser.add_argument("--json", action="store_true", help="print /api/status as JSON")
    parser.set_defaults(handler=run)
    return parser


def run(args) -> int:
    path = config.config_path(args.config)
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return exits.CONFIG
    import urllib.error  # here, not at the top: `c8ysim run` would pay ~16 ms for it
    import urllib.request

    address = _address(cfg.status.host, cfg.status.port)
    try:
        with urllib.request.urlopen(request(cfg.status, "/api/status"),
                                    timeout=TIMEOUT_S) as r:
            view = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        hint = ""
        if exc.code == 401:
            hint = (" (it refused the password of status.password_file: is it the one the "
                    "agent was started or reloaded with?)" if cfg.status.auth else
                    " (the status page asks for credentials: set status.password_file)")
        print(f"c8ysim status: {address} answered {exc.code} {exc.reason}{hint}",
              file=sys.stderr)
        return exits.FAILURE
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"c8ysim is not running (nothing answers on {address}): "
              f"{getattr(reason, 'strerror', None) or reason}\n"
              "start it with: systemctl start c8ysim", file=sys.stderr)
        return exits.NOT_RUNNING
    except ValueError:
        print(f"c8ysim status: {address} did not answer with c8ysim's JSON", file=sys.stderr)
        return exits.FAILURE
    print(json.dumps(view, indent=2) if args.json else render(view))
    return exits.OK


def render(view: dict) -> str:
    agent = view.get("agent", {})
    head = (f"c8ysim {agent.get('version', '?')}  pid {agent.get('pid', '?')}  up "
            f"{sv.fmt_age(agent.get('uptime_s'))}  uplink {agent.get('uplink', '?')}  "
            f"config {agent.get('config', '?')}")
    devices = view.get("devices", [])
    rows = [_row(d) for d in devices]
    notes = [f"{d.get('name')}: {what} {text}" for d in devices
             for what, text in (("faults:", sv.fmt_faults(d)),
                                ("set from Cumulocity (wins over the YAML file):",
                                 sv.fmt_overrides(d))) if text]
    return (head + "\n\n" + table(rows, COLUMNS) + "".join("\n" + n for n in notes) +
            "\n\npower: + drawn from the grid side, - delivered (PV output, grid export)")


def _row(device: dict) -> list[str]:
    _level, label = sv.health(device)
    last_ack = device.get("last_ack")
    return [str(device.get("name")), str(device.get("external_id") or sv.MISSING),
            str(device.get("type") or sv.MISSING), label,
            _n(device.get("queued")), sv.fmt_age(device.get("oldest_queued_age_s")),
            _n(device.get("sent")), _n(device.get("dropped")), _n(device.get("lost")),
            sv.fmt_power(sv.power_w(device.get("last_reading"))),
            sv.fmt_since(last_ack) if last_ack else sv.MISSING]


def _n(value) -> str:
    return sv.MISSING if value is None else str(value)


def table(rows: list[list[str]], header) -> str:
    """Left-aligned columns two spaces apart."""
    lines = [list(header)] + rows
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in lines)


def request(status, path: str):
    """A urllib Request for `path` on the status page of `status` (a config.StatusConfig),
    carrying its basic-auth credentials when it has them."""
    import urllib.request
    url = f"http://{_address(status.host, status.port)}{path}"
    headers = {}
    if status.auth:
        user, password = status.auth
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    return urllib.request.Request(url, headers=headers)


def _address(host: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
