"""The inventory: devices (managed objects) and what they declared.

Owns the ``Device`` of each client key: creation by ``100`` (optionally
delayed, to expose agents that do not wait for its PUBACK), the readiness
rule "device exists and its creation took effect", and the inventory
fragments set by 110, 112, 113, 114, 117 and 122.  Also hands out the platform IDs
shared by managed objects and operations.
"""

from __future__ import annotations

import dataclasses
import itertools
import time


@dataclasses.dataclass
class Device:
    """A managed object created by ``100``."""

    id: str
    name: str
    type: str
    mo_id: str
    ready_at: float = 0.0
    hardware: list[str] | None = None
    supported_operations: list[str] | None = None
    required_interval: int | None = None
    agent: list[str] | None = None
    position: list[str] | None = None  # 112: latitude, longitude, altitude, accuracy
    configuration: str | None = None  # 113: c8y_Configuration.config


class Inventory:
    """Devices by client key; lives in the server thread."""

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self._ids = itertools.count(1001)

    def new_id(self) -> str:
        """The next platform ID (managed objects and operations share them)."""
        return str(next(self._ids))

    def get(self, key: str) -> Device | None:
        return self.devices.get(key)

    def ready(self, key: str) -> bool:
        """The device exists and its creation has taken effect."""
        device = self.devices.get(key)
        return device is not None and device.ready_at <= time.monotonic()

    def create(self, key: str, name: str, dtype: str, delay: float) -> None:
        """Create the device of ``100`` with the platform's defaults."""
        self.devices[key] = Device(
            id=key, name=name or f"MQTT Device {key}", type=dtype or "c8y_MQTTDevice",
            mo_id=self.new_id(), ready_at=time.monotonic() + delay)

    def apply(self, key: str, tid: int, args: list[str]) -> None:
        """Store what 110, 112, 113, 114, 117 (first one only) and 122 declare."""
        device = self.devices[key]
        if tid == 110:
            device.hardware = args
        elif tid == 114:
            device.supported_operations = [a for a in args if a]
        elif tid == 117 and device.required_interval is None:
            device.required_interval = int(args[0])
        elif tid == 122:
            device.agent = args
        elif tid == 112:
            device.position = args
        elif tid == 113:
            device.configuration = args[0] if args else ""
