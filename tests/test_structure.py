"""The seams that keep the house easy to change: the device-type registry and the device view.

- every device type in `c8ysim.kinds` builds a model that reads as the type says, and what
  the YAML may set for it is what the models read;
- the status package reads no key of a device view that nobody writes: each one is a field
  of the heartbeat or one the supervisor adds (`c8ysim.heartbeat.DEVICE_VIEW_FIELDS`), and
  the supervisor's view has exactly those.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from c8ysim import config, supervisor
from c8ysim.heartbeat import DEVICE_VIEW_FIELDS, Heartbeat, Link
from c8ysim.kinds import KINDS
from c8ysim.sim import DeviceSpec, Site, build_model
from c8ysim.states import ChildState

ROOT = Path(__file__).resolve().parent.parent
# `device.get("key")`, `d["key"]`: how the status code reads a device of the view.
DEVICE_KEY = re.compile(r"\b(?:device|d)(?:\.get\(|\[)\"([a-z_]+)\"")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_builds_its_model_and_reads_as_its_type(kind):
    site = Site(52.5, 13.4, "Europe/Berlin", 7, devices=(DeviceSpec(kind, "it"),))
    model = build_model(site, "it")
    _state, reading = model.step(model.initial_state(), 1_717_243_200.0, 10.0)
    assert reading.type == KINDS[kind].c8y_type and reading.series


def device_yaml(kind: str, params: dict) -> str:
    lines = "".join(f"\n      {key}: {value}" for key, value in params.items())
    return (f"site: {{latitude: 52.5, longitude: 13.4}}\ndevices:\n  - name: it\n"
            f"    type: {kind}" + (f"\n    {kind}:{lines}" if params else ""))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_kind_takes_exactly_its_parameters_from_the_yaml(kind):
    chosen = {key: value * 1.5 for key, value in KINDS[kind].params.items()}
    assert dict(config.parse(device_yaml(kind, chosen)).site.device("it").params) == chosen
    with pytest.raises(config.ConfigError, match="unknown key 'no_such_param'"):
        config.parse(device_yaml(kind, {**chosen, "no_such_param": 1}))


def test_the_models_read_exactly_the_parameters_the_registry_declares():
    read = set()
    for path in (ROOT / "c8ysim/sim").glob("*.py"):
        read |= set(re.findall(r"\.param\(\"([a-z_]+)\"\)", path.read_text()))
    declared = {key for kind in KINDS.values() for key in kind.params}
    assert read == declared


def test_the_status_package_reads_only_keys_the_view_has():
    read = set()
    for path in (ROOT / "c8ysim/status").glob("*.py"):
        read |= set(DEVICE_KEY.findall(path.read_text()))
    assert read and "reconnects" in read  # the pattern finds what it should
    assert read <= DEVICE_VIEW_FIELDS, read - DEVICE_VIEW_FIELDS


def test_the_supervisors_device_view_has_exactly_the_declared_fields():
    cfg = config.parse("site: {latitude: 52.5, longitude: 13.4}\ndevices:\n"
                       "  - {name: pv, type: pv}\n  - {name: hp, type: heatpump}\n")
    agent = supervisor.Supervisor(cfg, None, None, config.load, None)
    agent.children = {
        "pv": supervisor.Child("pv", ChildState.RUNNING, pid=42,
                               beat=Heartbeat(pid=42, time=time.time(), connection=Link.ONLINE)),
        "hp": supervisor.Child("hp", ChildState.BACKOFF, next_start_at=time.monotonic() + 3)}
    views = {d["name"]: d for d in agent.status()["devices"]}
    assert set(views["hp"]) == DEVICE_VIEW_FIELDS  # backoff: with retry_in_s
    assert set(views["pv"]) == DEVICE_VIEW_FIELDS - {"retry_in_s"}
    assert views["pv"]["connection"] == "online" and views["pv"]["lost"] == 0
    # before its first beat a device's counters are unknown, not 0
    assert views["hp"]["connection"] is None and views["hp"]["lost"] is None
    assert views["hp"]["connected"] is False


def test_a_heartbeat_survives_the_wire_and_a_stranger_is_refused():
    beat = Heartbeat(pid=7, time=1.5, queued=3, connection=Link.AUTH_FAILED,
                     last_reading={"time": 1.0, "f.s": 2.0}, units={"f.s": "W"})
    assert Heartbeat.decode(beat.encode()) == beat
    # A named tuple's own names are no fields: `_fields`, `count` (a tuple method) and
    # `__class__` are refused like any unknown key, as is a list of 31 values.
    for stranger in (b"", b"[]", b'{"nope": 1}', b'{"connection": "sideways"}', b"\xff",
                     b'{"_fields": []}', b'{"count": 1}', b'{"__class__": 1}',
                     str(list(range(len(Heartbeat._fields)))).encode()):
        with pytest.raises(ValueError):
            Heartbeat.decode(stranger)
