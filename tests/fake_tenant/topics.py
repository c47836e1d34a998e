"""Which topics exist on the fake platform, in both directions.

Owns the upstream topic patterns (SmartREST ``s/us`` and its transient,
quiescent, CEP and child forms; JSON via MQTT; topics that are only recorded)
and the subscription rule: only exact Cumulocity downstream topics are granted,
the device-specific ones only once the device exists.
"""

from __future__ import annotations

import re

SMARTREST_UP = re.compile(r"^([stqc])/us(?:/(.+))?$")
JSON_UP = re.compile(
    r"^(?:[tqc]/)?(measurement/measurements|event/events|alarm/alarms"
    r"|inventory/managedObjects)(/.+)?$")
OTHER_UP = re.compile(r"^(s/ucr|s/uat|s/ud(/.+)?|[stqc]/uc/.+|s/ut/.+)$")

# downstream topics a client may subscribe to; the first set needs the device
NEEDS_DEVICE_TOPICS = {"s/ds", "s/dat", "s/dd", "devicecontrol/notifications"}
FREE_TOPICS = {"s/e", "s/dt", "s/dcr", "error"}

REFUSED = 0x80

# what the bootstrap user may use (ref §1.5): nothing else
BOOTSTRAP_UP = {"s/ucr"}
BOOTSTRAP_DOWN = {"s/dcr"}


def grant(topic_filter: str, qos: int, device_ready: bool) -> tuple[int, str | None]:
    """SUBACK code for one filter, and the violation if it is refused."""
    if not topic_filter or "+" in topic_filter or "#" in topic_filter:
        return REFUSED, (f"SUBSCRIBE {topic_filter!r}: wildcards/invalid filters "
                         "are not granted (subscribe exact topics)")
    if topic_filter in NEEDS_DEVICE_TOPICS or topic_filter.startswith("s/dc/"):
        if not device_ready:
            return REFUSED, (f"SUBSCRIBE {topic_filter} before the device exists "
                             "(publish 100 and wait for PUBACK first)")
        return qos, None
    if topic_filter in FREE_TOPICS:
        return qos, None
    return REFUSED, f"SUBSCRIBE to non-Cumulocity topic {topic_filter!r}"


def grant_bootstrap(topic_filter: str, qos: int) -> tuple[int, str | None]:
    """SUBACK code for the bootstrap user's filter, and the violation if refused."""
    if topic_filter in BOOTSTRAP_DOWN:
        return qos, None
    return REFUSED, (f"the bootstrap user subscribed {topic_filter!r} (it may only "
                     f"subscribe {', '.join(BOOTSTRAP_DOWN)})")
