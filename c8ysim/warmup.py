"""A device's first work, done once in the supervisor before it forks (issue 18).

A forked child shares the supervisor's memory until it writes to it; every page it writes is
copied and counted again, per child. Part of what a child writes in its first seconds is
work the supervisor can do once for all of them: building the site's models fills
module-level caches (the heat pump's annual heating degree hours take ~10 ms and stay
cached), CPython 3.11 counts the calls of every function until it specialises its code and
then rewrites the code object in place, and the first readings set up what formatting them
needs. `warm_up(config)` builds the model of one device per kind and steps it a few times,
turning the readings into SmartREST lines, the model state into JSON and a heartbeat summary,
as a device's tick does. Nothing here opens a file, socket or thread (the fork discipline of
architecture.md); whatever fails is logged at debug level and skipped.

Measured (bench/bench_footprint.py, distinct pages): ~0.3 MB less per child, for ~10 ms more
from exec to READY=1. Warming the SQLite buffer, the session and a paho client as well saved
nothing measurable and cost another ~10 ms: left out.
"""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger(__name__)

STEPS = 8  # model steps per kind: CPython 3.11 specialises a function's code after 8 calls
STEP_S = 60.0


def warm_up(config) -> None:
    """Step one model per device kind (see the module docstring); never raises."""
    started = time.perf_counter()
    kinds = {}
    for device in config.devices:
        kinds.setdefault(device.type, device)
    for device in kinds.values():
        try:
            _step_model(config, device)
        except Exception as exc:  # noqa: BLE001 - a warm-up may fail; the agent may not
            log.debug("warm-up of %s skipped: %r", device.name, exc)
    log.debug("warm-up of %d device kinds took %.0f ms", len(kinds),
              (time.perf_counter() - started) * 1000)


def _step_model(config, device) -> None:
    from c8ysim import device as device_module, sim
    from c8ysim.heartbeat import Heartbeat
    from c8ysim.uplink import smartrest

    model = sim.build_model(config.site, device.name)
    state = model.initial_state()
    t = round(time.time() // STEP_S * STEP_S - STEPS * STEP_S, 3)
    for _ in range(STEPS):
        t += STEP_S
        state, reading = model.step(state, t, STEP_S)
        state = {**state, "t": t}
        [line.encode() for line in smartrest.reading_lines(reading)]
        json.dumps(state)
        summary = device_module._summary(reading)
    Heartbeat(pid=0, time=time.time(), last_reading=summary).encode()
