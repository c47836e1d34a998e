"""The status page as a Bottle app, built from a `status()` callable. Only bottle importer.

`status()` returns the supervisor's view (see `Supervisor.status`); nothing here touches a
device, a buffer or the network. Everything is rendered inline: the Pi is often offline.
"""

from __future__ import annotations

import html
import json
import time
from typing import Callable

import bottle

REFRESH_S = 5
COLUMNS = ("name", "type", "state", "connection", "queued", "sent", "dropped", "last_error")


def build_app(status: Callable[[], dict], healthy: Callable[[], bool],
              history: Callable[[str], list | None] = lambda name: None) -> bottle.Bottle:
    app = bottle.Bottle()

    @app.get("/")
    def index():
        bottle.response.content_type = "text/html; charset=utf-8"
        return _render_index(status())

    @app.get("/api/status")
    def api_status():
        bottle.response.content_type = "application/json"
        return json.dumps(status())

    @app.get("/healthz")
    def healthz():
        ok = healthy()
        bottle.response.status = 200 if ok else 503
        bottle.response.content_type = "text/plain"
        return "ok\n" if ok else "supervisor loop stalled\n"

    return app


def _render_index(view: dict) -> str:
    agent = view["agent"]
    rows = "".join(_device_row(d) for d in view["devices"])
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in COLUMNS + ("last reading",))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>c8ysim status</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style></head>
<body><h1>c8ysim {_e(agent['version'])}</h1>
<p>Uplink: {_e(agent['uplink'])} &middot; config {_e(agent['config'])} &middot;
updated {_e(time.strftime('%H:%M:%S'))}</p>
<table><tr>{head}</tr>{rows}</table></body></html>
"""


def _device_row(device: dict) -> str:
    cells = "".join(f"<td>{_e(device.get(c))}</td>" for c in COLUMNS)
    reading = device.get("last_reading") or {}
    shown = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in reading.items() if k != "time")
    return f"<tr>{cells}<td>{_e(shown)}</td></tr>"


def _e(value) -> str:
    return html.escape("" if value is None else str(value))
