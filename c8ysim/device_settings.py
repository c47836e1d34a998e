"""A device's simulation settings as Cumulocity's Configuration tab shows them (113 / 513).

The text is YAML: `interval_s` and every parameter of the device's kind, at the values in
force. Precedence: a value set from Cumulocity wins over the YAML file's value for that key;
every other key follows the file (a reload applies it). Only the values that differ from the
file's are kept (in the device's live file, `c8ysim.live`), so sending back the file's
values ends the override, and `c8ysim status` lists what is overridden.
"""

from __future__ import annotations

from c8ysim import config as config_module
from c8ysim.config import ConfigError, DeviceConfig
from c8ysim.kinds import KINDS
from c8ysim.live import LiveFiles

HEADER = ("# c8ysim {kind} '{name}': simulation settings. Values set here override\n"
          "# {path} until they equal its values again.\n")


def effective(device: DeviceConfig, overrides: dict[str, float],
              interval_override: float | None) -> tuple[dict[str, float], float]:
    """(every parameter of the kind at the value in force, interval_s in force)."""
    params = {**KINDS[device.type].params, **dict(device.params), **overrides}
    return params, interval_override if interval_override is not None else device.interval_s


def render(device: DeviceConfig, path: str, overrides: dict[str, float],
           interval_override: float | None) -> str:
    """The configuration text of the 113."""
    params, interval = effective(device, overrides, interval_override)
    lines = [f"{config_module.SETTINGS_INTERVAL_KEY}: {interval:g}"]
    lines += [f"{key}: {value:g}" for key, value in params.items()]
    return HEADER.format(kind=device.type, name=device.name, path=path) + "\n".join(lines) + "\n"


def apply(text: str, device: DeviceConfig, live: LiveFiles) -> tuple[bool, str]:
    """Check `text` and store what differs from the file; (False, the problems) if invalid,
    (True, what changed) after storing. OSError: it could not be stored."""
    try:
        params, interval = config_module.parse_settings(text, device.type)
    except ConfigError as exc:
        return False, "; ".join(f"line {p.line}: {p.message}" for p in exc.problems)
    in_file = {**KINDS[device.type].params, **dict(device.params)}
    overrides = {k: v for k, v in params if v != in_file[k]}
    interval_override = interval if interval is not None and interval != device.interval_s \
        else None
    live.set_settings(overrides, interval_override)
    changed = [f"{k}={v:g}" for k, v in overrides.items()]
    if interval_override is not None:
        changed.insert(0, f"interval_s={interval_override:g}")
    return True, ("overriding " + ", ".join(changed)) if changed else \
        "all settings as in the YAML file"
