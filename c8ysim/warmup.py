"""A device's first work, done once in the supervisor before it forks (issue 18).

A forked child shares the supervisor's memory until it writes to it; every page it writes is
copied and counted again, per child. Much of what a child writes in its first seconds is
work the supervisor could have done once for all of them:

- CPython 3.11 counts calls of every function until it specialises ("quickens") its code,
  and rewrites the code object when it does: a function that first runs in the child copies
  the pages its code sits on in every child;
- first uses fill module-level caches and lazily built tables in place (regular
  expressions, codec and time-zone look-ups, SQLite's global state, the sizes of types the
  first `struct`/`ctypes`/`json` calls see, paho's client set-up);
- and the objects those first calls allocate land in the free space the supervisor's heap
  inherited, copying a page for each small object.

`warm_up(config)` runs a device's work without a device: one device per kind builds its
model and steps it, the readings become SmartREST lines that go through a throwaway SQLite
buffer (put, peek, ack, stats: the tick and the drain), a session is built and reports its
status for a heartbeat, and a paho client is made and thrown away. Nothing connects: no
socket, thread or database stays open (the fork discipline of architecture.md). Whatever
fails here is logged at debug level and skipped; the agent starts the same either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import random
import tempfile
import time

log = logging.getLogger(__name__)

STEPS = 12  # model steps per kind: enough for CPython 3.11 to specialise the hot code
STEP_S = 60.0


def warm_up(config) -> None:
    """Run each device kind's work once (see the module docstring); never raises."""
    started = time.perf_counter()
    kinds_done: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="c8ysim-warmup-") as scratch:
        for device in config.devices:
            if device.type in kinds_done:
                continue
            kinds_done.add(device.type)
            try:
                _one_device(config, device, scratch)
            except Exception as exc:  # noqa: BLE001 - a warm-up may fail; the agent may not
                log.debug("warm-up of %s skipped: %r", device.name, exc)
    log.debug("warm-up of %d device kinds took %.0f ms", len(kinds_done),
              (time.perf_counter() - started) * 1000)


def _one_device(config, device, scratch: str) -> None:
    from c8ysim import device as device_module, sim
    from c8ysim.heartbeat import Heartbeat
    from c8ysim.storage import open_buffer
    from c8ysim.uplink import smartrest

    model = sim.build_model(config.site, device.name)
    state = model.initial_state()
    storage = dataclasses.replace(config.storage, backend="sqlite", path=scratch)
    buffer = open_buffer(storage, device.name, guest=True)
    try:
        t = round(time.time() // STEP_S * STEP_S - STEPS * STEP_S, 3)
        summary = None
        for _ in range(STEPS):
            t += STEP_S
            state, reading = model.step(state, t, STEP_S)
            state = {**state, "t": t}
            rows = [(smartrest.UPSTREAM_TOPIC, line.encode(), t)
                    for line in smartrest.reading_lines(reading)]
            buffer.put_many(rows, meta={device_module.MODEL_STATE_KEY: json.dumps(state)})
            summary = device_module._summary(reading)
        records = buffer.peek(100)
        buffer.ack([r.id for r in records])
        stats = buffer.stats(time.time())
        session = _session(config, device, buffer)
        uplink = session.status() if session else {}
        Heartbeat(pid=0, time=time.time(), queued=stats.depth, last_reading=summary,
                  buffer_backend=stats.backend, **uplink).encode()
    finally:
        buffer.close()
    _paho_client(device)


def _session(config, device, buffer):
    """The device's session, built (not connected) as its child builds it."""
    from c8ysim import __version__
    from c8ysim.kinds import KINDS
    from c8ysim.uplink.session import Registration, Session
    from c8ysim.uplink.transport import Endpoint

    c8y = config.cumulocity
    if c8y is None:
        return None
    endpoint = Endpoint(host=c8y.host, port=c8y.port, client_id=device.external_id,
                        username=None, password=None, keepalive_s=c8y.keepalive_s)
    registration = Registration(
        name=device.name, type=KINDS[device.type].c8y_type, serial=device.external_id,
        model=f"c8ysim {device.type}", revision=__version__,
        supported_operations=("c8y_Restart",), required_interval_min=10)
    return Session(endpoint, registration, buffer, queue.SimpleQueue(), 1.0, random.Random())


def _paho_client(device) -> None:
    """A paho client made and dropped: its first construction sets up paho's tables."""
    from c8ysim.uplink.transport import Connection, Endpoint

    endpoint = Endpoint(host="127.0.0.1", port=1, client_id=device.external_id,
                        username="warm-up", password="warm-up", keepalive_s=60)
    Connection(endpoint, queue.SimpleQueue(), 0, 24).close()

