"""The status page as a Bottle app, built from the supervisor's callables. Only bottle importer.

`status()` returns the supervisor's view (see `Supervisor.status`), `history(name)` a device's
recent readings oldest first (None: no such device), `healthy()` whether the supervisor loop
turns. Nothing here touches a device, a buffer or the network, and nothing blocks: every
request renders from memory inside the supervisor's loop (see status/server.py).

Endpoints: `/` (device cards, refreshing itself from `/cards`), `/data` (readings table,
`?format=csv`), `/api/status`, `/api/devices/<name>/readings`, `/metrics`, `/healthz`,
`/readyz`. Bad query parameters give 400 with a message, unknown devices 404, never a 500.
With `auth` (user, password: the supervisor passes ("c8ysim", status.password_file's text))
every path but `/healthz` asks for HTTP basic auth, compared in constant time. `/healthz`
stays open for systemd and monitoring probes that hold no credentials: it says only "ok" or
"supervisor loop stalled". `/readyz` names devices and their trouble, so it is guarded.
The bottle API used here exists in bottle 0.12 (Debian 12) and 0.13.
"""

from __future__ import annotations

import csv
import hmac
import io
import itertools
import json
import math
import time
from datetime import datetime
from typing import Callable
from urllib.parse import parse_qsl

import bottle

from c8ysim.status import html as status_html, metrics as status_metrics
from c8ysim.status import view as status_view

DEFAULT_READINGS_LIMIT = 1000
MAX_READINGS_LIMIT = 10_000
DATA_PAGE_ROWS = 50
CSV_PAGE_ROWS = 1000  # bounds what one request costs the supervisor loop (~15 ms here)
DATA_WINDOWS = {"5m": ("last 5 min", 300.0), "15m": ("last 15 min", 900.0),
                "1h": ("last hour", 3600.0)}
MAX_QUERY_FIELDS = 20
OPEN_PATHS = frozenset({"/healthz"})  # liveness probes hold no credentials; it tells nothing
HTML = "text/html; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
# Only our own inline style and script run: the hashes pin them (an escaping slip elsewhere
# could not inject a working script).
CSP = (f"default-src 'none'; style-src '{status_html.STYLE_HASH}'; "
       f"script-src '{status_html.SCRIPT_HASH}'; connect-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'")


class BadRequest(Exception):
    """A query parameter we cannot use; the message says which and what is expected."""


def build_app(status: Callable[[], dict], healthy: Callable[[], bool],
              history: Callable[[str], list | None] = lambda name: None,
              auth: tuple[str, str] | None = None, now: Callable[[], float] | None = None
              ) -> bottle.Bottle:
    """The WSGI app. `auth` (user, password) turns on HTTP basic auth for all but /healthz;
    `now` (wall clock, epoch seconds) is for tests."""
    clock = now or time.time
    app = bottle.Bottle()
    if auth:
        app.install(_basic_auth(*auth))

    def histories(view: dict) -> dict[str, list]:
        return {d["name"]: history(d["name"]) or [] for d in view.get("devices", [])}

    @app.get("/")
    def index():
        view = status()
        return _reply(status_html.index(view, histories(view), clock()), HTML)

    @app.get("/cards")
    def cards():
        view = status()
        return _reply(status_html.cards(view, histories(view), clock()), HTML)

    @app.get("/data")
    def data():
        view = status()
        try:
            return _data(view, history, clock())
        except BadRequest as exc:
            return _reply(status_html.error_page(view, 400, str(exc)), HTML, 400)
        except LookupError as exc:
            return _reply(status_html.error_page(view, 404, str(exc.args[0])), HTML, 404)

    @app.get("/api/status")
    def api_status():
        return _reply(json.dumps(status()), JSON)

    @app.get("/api/devices/<name>/readings")
    def api_readings(name):
        rows = history(name)
        if rows is None:
            return _reply(json.dumps({"error": f"no device named {name!r}"}), JSON, 404)
        try:
            query = _query(("since", "until", "limit"))
            since, until = _time_param(query, "since"), _time_param(query, "until")
            limit = _int_param(query, "limit", DEFAULT_READINGS_LIMIT, 1, MAX_READINGS_LIMIT)
            if since is not None and until is not None and since > until:
                raise BadRequest("since must not be later than until")
        except BadRequest as exc:
            return _reply(json.dumps({"error": str(exc)}), JSON, 400)
        chosen = status_view.window(rows, since, until)[::-1][:limit]
        return _reply(json.dumps({"device": name, "since": since, "until": until,
                                  "count": len(chosen), "readings": chosen}), JSON)

    @app.get("/metrics")
    def metrics():
        return _reply(status_metrics.render(status()), status_metrics.CONTENT_TYPE)

    @app.get("/healthz")
    def healthz():
        ok = healthy()
        return _reply("ok\n" if ok else "supervisor loop stalled\n", TEXT, 200 if ok else 503)

    @app.get("/readyz")
    def readyz():
        problems = ([] if healthy() else ["supervisor loop stalled"])
        problems += status_view.readiness(status())
        text = "ready\n" if not problems else "".join(f"{p}\n" for p in problems)
        return _reply(text, TEXT, 503 if problems else 200)

    @app.error(400)
    @app.error(401)
    @app.error(404)
    @app.error(405)
    @app.error(500)
    def plain_error(error):
        bottle.response.content_type = TEXT
        return f"{error.status_line}\n"

    return app


# -- the data view ------------------------------------------------------------------------

def _data(view: dict, history: Callable, now: float) -> str:
    query = _query(("device", "window", "page", "format"))
    device, key = query.get("device", ""), query.get("window", "") or "1h"
    if key not in DATA_WINDOWS:
        raise BadRequest(f"window must be one of {', '.join(DATA_WINDOWS)}")
    fmt = query.get("format", "") or "html"
    if fmt not in ("html", "csv"):
        raise BadRequest("format must be html or csv")
    chosen = _recent(view, history, device, now - DATA_WINDOWS[key][1])
    total = sum(len(rows) for rows in chosen.values())
    per_page = CSV_PAGE_ROWS if fmt == "csv" else DATA_PAGE_ROWS
    page = _int_param(query, "page", 1, 1, 10**9)
    start = (page - 1) * per_page
    rows = list(itertools.islice(status_view.newest_first(chosen), start, start + per_page))
    form = {"device": device, "window": key, "windows": DATA_WINDOWS,
            "csv_pages": max(1, math.ceil(total / CSV_PAGE_ROWS))}
    pager = {"page": page, "pages": max(1, math.ceil(total / per_page)), "total": total,
             "per_page": per_page}
    if fmt == "csv":
        name = f"readings-{device or 'all'}-{key}" + (f"-{page}" if page > 1 else "")
        return _reply(_csv(rows), "text/csv; charset=utf-8",
                      headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    return _reply(status_html.data_page(view, rows, form, pager), HTML)


def _recent(view: dict, history: Callable, device: str, since: float) -> dict[str, list]:
    """{device: its readings since `since`} for one device ("" = every device)."""
    names = [device] if device else [d["name"] for d in view.get("devices", [])]
    chosen = {}
    for name in names:
        rows = history(name)
        if rows is None:
            raise LookupError(f"no device named {name!r}")
        chosen[name] = status_view.window(rows, since, None)
    return chosen


def _csv(rows) -> str:
    rows = list(rows)
    keys = sorted({k for _, reading in rows for k in reading if k != "time"})
    power_keys: dict[str, dict] = {}  # per device, found once (the hot loop runs ~10^4 times)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["time_iso", "time", "device", "power_w", *keys])
    for name, reading in rows:
        if name not in power_keys:
            power_keys[name] = status_view.energy_keys(reading)
        power = status_view.power_w(reading, power_keys[name])
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(reading["time"]))
        writer.writerow([stamp, reading["time"], name, "" if power is None else power]
                        + [reading.get(k, "") for k in keys])
    return out.getvalue()


# -- parameters ---------------------------------------------------------------------------

def _query(allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string as {name: last value}; unknown names are an error (typos show)."""
    try:
        pairs = parse_qsl(bottle.request.environ.get("QUERY_STRING", ""),
                          keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise BadRequest(f"too many query parameters (at most {MAX_QUERY_FIELDS})") from None
    unknown = sorted({k for k, _ in pairs if k not in allowed})
    if unknown:
        raise BadRequest(f"unknown parameter {_short(unknown[0])}; allowed: "
                         f"{', '.join(allowed)}")
    return dict(pairs)


def _time_param(query: dict, key: str) -> float | None:
    """Seconds since the epoch or ISO 8601 (without an offset: the agent's local time)."""
    text = query.get(key, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError, OSError):
            raise BadRequest(f"{key}={_short(text)} is not a time: use seconds since the "
                             "epoch or ISO 8601 such as 2024-05-01T12:00:00Z") from None
    if not math.isfinite(value):
        raise BadRequest(f"{key} must be a finite number of seconds")
    return value


def _int_param(query: dict, key: str, default: int, low: int, high: int) -> int:
    text = query.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{key}={_short(text)} is not a whole number") from None
    if not low <= value <= high:
        raise BadRequest(f"{key} must be between {low} and {high}")
    return value


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# -- responses ----------------------------------------------------------------------------

def _reply(body: str, content_type: str, status: int = 200, headers: dict | None = None) -> str:
    response = bottle.response
    response.status = status
    response.content_type = content_type
    response.set_header("Cache-Control", "no-store")
    response.set_header("X-Content-Type-Options", "nosniff")
    if content_type == HTML:
        response.set_header("Content-Security-Policy", CSP)
    for name, value in (headers or {}).items():
        response.set_header(name, value)
    return body


def _basic_auth(user: str, password: str):
    expected = (user.encode(), password.encode())

    def plugin(callback):
        def wrapper(*args, **kwargs):
            given = bottle.request.auth
            if bottle.request.path not in OPEN_PATHS and not (given and _same(given, expected)):
                error = bottle.HTTPError(401, "credentials required")
                error.set_header("WWW-Authenticate", 'Basic realm="c8ysim", charset="UTF-8"')
                return error
            return callback(*args, **kwargs)
        return wrapper
    return plugin


def _same(given: tuple[str, str], expected: tuple[bytes, bytes]) -> bool:
    user_ok = hmac.compare_digest(given[0].encode(errors="replace"), expected[0])
    password_ok = hmac.compare_digest(given[1].encode(errors="replace"), expected[1])
    return user_ok and password_ok
