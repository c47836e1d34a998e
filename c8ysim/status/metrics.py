"""`GET /metrics`: the supervisor's view as Prometheus text exposition format 0.0.4.

Built by hand (no prometheus_client at runtime): one HELP/TYPE block per family, one sample
per device labelled `device="<name>"`. A value the view does not have yet (no beat, no
reading) is left out rather than reported as 0 or NaN.
"""

from __future__ import annotations

import math

from c8ysim.states import ChildState
from c8ysim.status import view as status_view

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CHILD_STATES = tuple(state.value for state in ChildState)

# (name, type, help, value of one device's status dict)
DEVICE_FAMILIES = (
    ("c8ysim_connected", "gauge", "1 while the device's MQTT session is online.",
     lambda d: None if d.get("connected") is None else int(bool(d.get("connected")))),
    ("c8ysim_queued", "gauge", "Rows waiting in the device's buffer.",
     lambda d: d.get("queued")),
    ("c8ysim_oldest_queued_age_seconds", "gauge", "Age of the oldest buffered row.",
     lambda d: d.get("oldest_queued_age_s")),
    ("c8ysim_inflight", "gauge", "Rows published and not yet acknowledged.",
     lambda d: d.get("inflight")),
    ("c8ysim_sent_total", "counter", "Rows acknowledged by the broker (since the child started).",
     lambda d: d.get("sent")),
    ("c8ysim_dropped_total", "counter", "Rows dropped by the buffer's size or age bounds.",
     lambda d: d.get("dropped")),
    ("c8ysim_quarantined_total", "counter", "Rows set aside because they can never be sent.",
     lambda d: d.get("quarantined")),
    ("c8ysim_lost_total", "counter",
     "Rows known lost with their buffer file (moved aside, deleted) or held in memory.",
     lambda d: d.get("lost")),
    ("c8ysim_reconnects_total", "counter", "MQTT reconnects (since the child started).",
     lambda d: d.get("reconnects")),
    ("c8ysim_restarts_total", "counter", "Times the supervisor restarted the device's child "
     "(after a death or for a c8y_Restart).", lambda d: d.get("restarts")),
    ("c8ysim_inbound_dropped_total", "counter", "Broker messages (s/ds, s/e) dropped unread: "
     "over the size limit or the rate budget (since the child started).",
     lambda d: d.get("inbound_dropped")),
    ("c8ysim_inbound_ignored_total", "counter", "Operation lines from the broker ignored: "
     "malformed, for another device or unsupported (since the child started).",
     lambda d: d.get("inbound_ignored")),
    ("c8ysim_rejected_total", "counter", "Lines the platform rejected after acknowledging "
     "them (its s/e error lines; since the child started).", lambda d: d.get("rejected")),
    ("c8ysim_drain_rate_lines_per_second", "gauge", "Lines per second a backlog drains at "
     "now: found from the PUBACK latency, below max_lines_per_s.",
     lambda d: d.get("drain_rate")),
    ("c8ysim_last_ack_timestamp_seconds", "gauge", "Wall-clock time of the last broker ack.",
     lambda d: d.get("last_ack")),
    ("c8ysim_power_watts", "gauge", "Power now: + drawn from the grid side, - delivered.",
     lambda d: status_view.power_w(d.get("last_reading"))),
)


def render(view: dict) -> str:
    devices = view.get("devices", [])
    agent = view.get("agent", {})
    lines = _family("c8ysim_build_info", "gauge", "The running agent's version.",
                    [({"version": agent.get("version", "")}, 1)])
    lines += _family("c8ysim_uptime_seconds", "gauge", "Seconds since the supervisor started.",
                     [({}, agent.get("uptime_s"))])
    lines += _family("c8ysim_device_state", "gauge", "1 for the supervisor's state of the "
                     "device's child process.",
                     [({"device": d.get("name"), "state": s}, int(d.get("state") == s))
                      for d in devices for s in CHILD_STATES])
    for name, kind, text, value_of in DEVICE_FAMILIES:
        lines += _family(name, kind, text, [({"device": d.get("name")}, value_of(d))
                                            for d in devices])
    lines += _family("c8ysim_energy_kwh", "gauge", "Energy registers: import (A+) and export "
                     "(A-), kWh.",
                     [({"device": d.get("name"), "register": register}, kwh)
                      for d in devices
                      for register, kwh in status_view.energy_kwh(d.get("last_reading")).items()])
    return "\n".join(lines) + "\n"


def _family(name: str, kind: str, text: str, samples) -> list[str]:
    lines = [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        lines.append(f"{name}{_labels(labels)} {value!r}")
    return lines


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
