"""The status page: every endpoint of the Bottle app served by a real StatusServer in a
selectors loop, fed plain status/history data; the `c8ysim status` command; a stalled client
never blocking the loop; and one end-to-end run against the real agent and mosquitto."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import re
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from c8ysim import config as config_module, exits
from c8ysim.heartbeat import Heartbeat, Link
from c8ysim.status import app as http, cli as status_cli, html as status_html
from c8ysim.status import metrics as status_metrics, view as status_view
from c8ysim.status.app import build_app
from c8ysim.status.server import StatusServer
from conftest import REPO, free_port, wait_until, write_config
from fuzzing import fuzz_settings

SINGLE = "c8y_SinglePhaseEnergyMeasurement"
THREE = "c8y_ThreePhaseEnergyMeasurement"
HOUR_S, STEP_S = 3600, 5


def reading(kind: str, t: float, watts: float) -> dict:
    """A reading shaped like the device models' heartbeat summary: a single-phase inverter,
    a three-phase heat pump and grid meter (with per-phase series, `P+:1`, `voltage:2`)."""
    if kind == "pv":
        return {"time": t, f"{SINGLE}.P-": watts, f"{SINGLE}.A-": 12.5,
                "c8y_VoltageMeasurement.voltage": 231.2,
                "c8y_CurrentMeasurement.current": round(abs(watts) / 231.2, 3),
                "c8y_TemperatureMeasurement.T": 31.5, "c8ysim_Irradiance.planeOfArray": 640.0}
    phases = ([watts / 3] * 3 if kind == "heatpump"
              else [watts * 0.5 + 200.0, watts * 0.5 - 150.0, -50.0])
    base = {"time": t, **{f"c8y_VoltageMeasurement.voltage:{n}": 231.0 + n for n in (1, 2, 3)},
            **{f"c8y_CurrentMeasurement.current:{n}": round(abs(w) / 231.0, 3)
               for n, w in enumerate(phases, 1)}}
    if kind == "heatpump":
        return {**base, f"{THREE}.P+": watts, **{f"{THREE}.P+:{n}": w for n, w in enumerate(phases, 1)},
                f"{THREE}.A+": 3.25, "c8ysim_HeatPumpTemperature.outdoor": 4.5,
                "c8ysim_HeatPumpTemperature.flow": 39.6, "c8ysim_HeatPumpTemperature.return": 37.1,
                "c8ysim_ThermalPower.heat": watts * 3.2, "c8ysim_ThermalEnergy.heat": 10.4,
                "c8ysim_COP.COP": 3.2}
    return {**base, f"{THREE}.P+": sum(max(w, 0.0) for w in phases),
            f"{THREE}.P-": sum(max(-w, 0.0) for w in phases),
            **{f"{THREE}.P+:{n}": max(w, 0.0) for n, w in enumerate(phases, 1)},
            **{f"{THREE}.P-:{n}": max(-w, 0.0) for n, w in enumerate(phases, 1)},
            f"{THREE}.A+": 100.5, f"{THREE}.A-": 20.25}


def history_of(kind: str, now: float, span_s: float = HOUR_S) -> list[dict]:
    """A full history, oldest first, one reading per STEP_S; power a smooth wave."""
    times = [now - span_s + i * STEP_S for i in range(int(span_s / STEP_S))]
    return [reading(kind, t, round(1000 + 800 * math.sin(t / 600) * (-1 if kind == "grid"
                                                                       else 1), 1))
            for t in times]


UNITS = {"voltage": "V", "current": "A", "P+": "W", "P-": "W", "A+": "kWh", "A-": "kWh",
         "planeOfArray": "W/m2", "T": "C", "outdoor": "C", "flow": "C", "return": "C",
         "COP": ""}


def unit_of(key: str) -> str:
    """The unit of "<fragment>.<series>", as the heartbeat's `units` carries it."""
    fragment, _, series = key.partition(".")
    if fragment in ("c8ysim_ThermalPower", "c8ysim_ThermalEnergy"):
        return "W" if fragment.endswith("Power") else "kWh"
    return UNITS[series.partition(":")[0]]


def device(name: str, kind: str, now: float, **extra) -> dict:
    """One device of the supervisor's view: a heartbeat's fields and the supervisor's."""
    last = reading(kind, now - 1, {"pv": 1200.0, "heatpump": 800.0, "grid": -300.0}[kind])
    beat = Heartbeat(
        pid=4242, time=now - 0.5, connection=Link.ONLINE, connected=True,
        connected_since=now - 600, inflight=2, sent=1234, reconnects=1, last_ack=now - 1.5,
        queued=3, oldest_queued_age_s=2.5, last_reading=last,
        units={key: unit_of(key) for key in last if key != "time"})
    return {**beat._asdict(), "name": name, "type": kind,
            "external_id": f"c8ysim-{name}", "state": "running", "restarts": 0,
            "last_exit": None, **extra}


class Site:
    """Plain status/history data standing in for the supervisor (data, not a mock)."""

    def __init__(self, now: float | None = None, devices: list[dict] | None = None):
        self.now = time.time() if now is None else now
        self.devices = devices if devices is not None else [
            device("pv-roof", "pv", self.now), device("heatpump", "heatpump", self.now),
            device("grid-meter", "grid", self.now)]
        self.histories = {d["name"]: history_of(d["type"], self.now)
                          for d in self.devices if "type" in d}
        self.alive = True

    def status(self) -> dict:
        return {"agent": {"version": "0.1.0", "pid": 1, "started": self.now - 7200,
                          "uptime_s": 7200.0, "config": "/etc/c8ysim.yaml",
                          "uplink": "localhost:1883"},
                "devices": self.devices}

    def history(self, name: str):
        return self.histories.get(name) if any(d["name"] == name for d in self.devices) \
            else None


class LoopThread:
    """Runs a selectors loop like the supervisor's, counting its turns."""

    def __init__(self, site: Site | None = None, **app_options):
        self.site = site or Site()
        app_options.setdefault("now", lambda: self.site.now)
        app = build_app(self.site.status, lambda: self.site.alive, self.site.history,
                        **app_options)
        self.selector = selectors.DefaultSelector()
        self.server = StatusServer(app, "127.0.0.1", 0, self.selector)
        self.turns, self.running = 0, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            for key, _ in self.selector.select(0.05):
                key.data()
            self.server.expire(time.monotonic())
            self.turns += 1

    def get(self, path: str, headers: dict | None = None):
        """(status, headers, body) also for error statuses."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.server.port}{path}",
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def raw(self, request: bytes) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=2) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    def close(self):
        self.running = False
        self.thread.join(2)
        self.server.close()


@pytest.fixture
def loop():
    server = LoopThread()
    yield server
    server.close()


# -- pages ----------------------------------------------------------------------------------

def test_api_status_is_the_supervisor_view(loop):
    status, headers, body = loop.get("/api/status")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == json.loads(json.dumps(loop.site.status()))
    assert headers["Cache-Control"] == "no-store"


def test_index_has_a_card_per_device_a_site_summary_and_sparklines(loop):
    status, headers, body = loop.get("/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.count('<article class="card ok"') == 3
    assert page.count('<svg class="spark"') == 3 and page.count("<polyline") == 3
    for name in ("pv-roof", "heatpump", "grid-meter"):
        assert f'data-device="{name}"' in page
    summary = page[page.index('class="summary"'):page.index('class="cards"')]
    assert "PV now</span><b>1.20 kW" in summary
    assert "heat pump now</span><b>800 W" in summary
    assert "grid export now</span><b>300 W" in summary
    assert "1.20 kW <small>generating" in page and "300 W <small>exporting" in page
    assert "1\u202f234" in page and "231.2\u202fV" in page  # sent, last reading


def test_index_is_self_contained_and_refreshes_with_and_without_javascript(loop):
    _, headers, body = loop.get("/")
    page = body.decode()
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert f"'{status_html.SCRIPT_HASH}'" in policy and f"<script>{status_html.JS}</script>" in page
    assert '<noscript><meta http-equiv="refresh"' in page
    assert "fetch('cards'" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "nothing from elsewhere"
    assert "<link" not in page
    status, _, fragment = loop.get("/cards")
    assert status == 200 and b"<html" not in fragment and fragment.count(b"<article") == 3


def test_card_states_and_missing_fields_show_a_dash():
    now = time.time()
    devices = [
        device("a", "pv", now, state="backoff", retry_in_s=12.3, pid=None, connected=False),
        device("b", "pv", now, state="fatal", last_exit="exit code 78"),
        device("c", "pv", now, connection="auth_failed", connected=False),
        device("d", "pv", now, degraded="buffer full"),
        {"name": "e<x>", "state": "starting"},  # a child that has not sent a heartbeat yet
    ]
    page = status_html.index(Site(now, devices).status(), {}, now)
    assert "restarting in 12 s" in page and "FATAL" in page and "auth failed" in page
    assert "degraded: buffer full" in page and "e&lt;x&gt;" in page and "e<x>" not in page
    card = page[page.index('data-device="e&lt;x&gt;"'):]
    assert card.count("\u2014") >= 8 and "no reading yet" in card


def test_card_shows_lost_rows_and_what_the_session_dropped_or_ignored_from_the_broker():
    now = time.time()
    site = Site(now, [device("pv-roof", "pv", now, lost=7, inbound_dropped=3,
                             inbound_ignored=1234)])
    page = status_html.index(site.status(), {}, now)
    assert "<dt>lost</dt><dd>7</dd>" in page
    assert "<dt>broker msgs dropped</dt><dd>3</dd>" in page
    assert "<dt>broker lines ignored</dt><dd>1\u202f234</dd>" in page


def test_power_is_found_in_whichever_energy_fragment_is_present():
    assert status_view.power_w({"time": 1, f"{THREE}.P+": 500, f"{THREE}.P-": 0}) == 500
    assert status_view.power_w({"time": 1, f"{SINGLE}.P-": 700}) == -700
    assert status_view.power_w({"time": 1, "c8ysim_HeatPump.heatPower": 3000}) is None
    assert status_view.energy_kwh(reading("grid", 1, 0)) == {"import": 100.5, "export": 20.25}
    keys = status_view.energy_keys(reading("pv", 1, 5))
    assert status_view.power_w(reading("grid", 1, 40), keys) == 40  # keys of another kind


def test_per_phase_series_are_shown_per_phase_and_never_taken_for_the_totals():
    grid = reading("grid", 1, 600.0)  # L1 +500, L2 +150, L3 -50: P+ 650, P- 50
    assert status_view.energy_keys(grid) == {key: f"{THREE}.{key}" for key in ("P+", "P-", "A+", "A-")}
    assert status_view.power_w(grid) == 600.0
    history = [reading("grid", t, 600.0) for t in range(100, 160, 5)]
    assert status_view.power_buckets(history, 160, 60, 12)[0] == (0, 600.0)
    labels = {label: unit for label, unit, _ in
              status_view.series_items(grid, {key: unit_of(key) for key in grid if key != "time"})}
    assert labels["power in L1"] == "W" and labels["power out L3"] == "W"
    assert labels["voltage L2"] == "V" and labels["current L3"] == "A"
    hp = reading("heatpump", 1, 900.0)
    labels = [label for label, _, _ in status_view.series_items(hp, None)]
    assert {"heat output", "heat delivered", "outdoor", "flow", "return", "COP"} <= set(labels)
    assert len(labels) == len(set(labels))  # no two series share a label


def test_the_data_table_shows_a_three_phase_devices_voltages_and_currents(loop):
    page = loop.get("/data?device=grid-meter&window=5m")[2].decode()
    assert "<td>232\u202fV / 233\u202fV / 234\u202fV</td>" in page
    assert "power in L1" in page and "voltage L1" not in page  # in its column, not "other"


@pytest.mark.parametrize("watts, text", [
    (None, "\u2014"), (-0.0, "0 W"), (-0.4, "0 W"), (712.4, "712 W"), (-999.6, "-1.00 kW"),
    (1234.5, "1.23 kW")])
def test_power_formatting(watts, text):
    assert status_view.fmt_power(watts) == text


@pytest.mark.parametrize("seconds, text", [
    (None, "\u2014"), (-3, "0 s"), (42.7, "42 s"), (300, "5 min"), (7800, "2 h 10 min"),
    (3 * 86400 + 4 * 3600, "3 d 4 h")])
def test_age_formatting(seconds, text):
    assert status_view.fmt_age(seconds) == text


# -- the data view --------------------------------------------------------------------------

def test_data_view_filters_by_device_and_window_newest_first_and_pages(loop):
    page = loop.get("/data?device=heatpump&window=5m")[2].decode()
    times = re.findall(r"<tr><td>([\d: -]+)</td><td>heatpump</td>", page)
    newest = loop.site.histories["heatpump"][-1]["time"]
    assert len(times) == 50 and times[0] == status_view.fmt_clock(newest)
    assert "grid-meter</td>" not in page and "rows 1\u201350 of 60" in page
    assert 'href="data?device=heatpump&amp;window=5m&amp;page=2"' in page
    second = loop.get("/data?device=heatpump&window=5m&page=2")[2].decode()
    assert len(re.findall(r"<td>heatpump</td>", second)) == 10
    everything = loop.get("/data")[2].decode()
    assert "of 2\u202f160" in everything and "<td>grid-meter</td>" in everything


def test_data_view_csv_has_the_same_rows(loop):
    status, headers, body = loop.get("/data?device=grid-meter&window=15m&format=csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == 180 and {r["device"] for r in rows} == {"grid-meter"}
    stamps = [float(r["time"]) for r in rows]
    assert stamps == sorted(stamps, reverse=True)
    first = loop.site.histories["grid-meter"][-1]
    assert float(rows[0][f"{THREE}.A+"]) == first[f"{THREE}.A+"]
    assert float(rows[0]["power_w"]) == status_view.power_w(first)


def test_csv_comes_in_bounded_pages(loop, monkeypatch):
    monkeypatch.setattr(http, "CSV_PAGE_ROWS", 100)
    page = loop.get("/data?device=pv-roof&window=15m")[2].decode()
    assert "CSV 1/2</a>" in page and "format=csv&amp;page=2" in page
    first, second = (list(csv.DictReader(io.StringIO(loop.get(
        f"/data?device=pv-roof&window=15m&format=csv&page={n}")[2].decode()))) for n in (1, 2))
    assert len(first) == 100 and len(second) == 80
    assert float(first[-1]["time"]) > float(second[0]["time"])


@pytest.mark.parametrize("query, code, message", [
    ("window=2d", 400, "window must be one of"),
    ("page=0", 400, "page must be between"),
    ("page=x", 400, "not a whole number"),
    ("format=xml", 400, "format must be"),
    ("color=red", 400, "unknown parameter"),
    ("device=%3Cscript%3E", 404, "no device named &#x27;&lt;script&gt;&#x27;"),
])
def test_data_view_rejects_bad_parameters_with_a_message(loop, query, code, message):
    status, _, body = loop.get(f"/data?{query}")
    assert status == code and message in body.decode()


# -- the readings API -----------------------------------------------------------------------

def test_readings_api_filters_and_limits(loop):
    rows = loop.site.histories["pv-roof"]
    since, until = rows[100]["time"], rows[199]["time"]
    status, _, body = loop.get(f"/api/devices/pv-roof/readings?since={since}&until={until}")
    answer = json.loads(body)
    assert status == 200 and answer["count"] == 100
    assert answer["readings"] == rows[100:200][::-1]  # newest first
    answer = json.loads(loop.get("/api/devices/pv-roof/readings?limit=3")[2])
    assert answer["readings"] == rows[-3:][::-1]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rows[-10]["time"] - 0.5))
    answer = json.loads(loop.get(f"/api/devices/pv-roof/readings?since={iso}")[2])
    assert answer["count"] == 10


@pytest.mark.parametrize("query, message", [
    ("since=yesterday", "since='yesterday' is not a time"),
    ("until=nan", "until must be a finite number"),
    ("limit=0", "limit must be between 1 and 10000"),
    ("limit=2.5", "not a whole number"),
    ("since=20&until=10", "since must not be later than until"),
    ("sinse=10", "unknown parameter 'sinse'"),
    ("&".join(f"limit={i}" for i in range(1, 30)), "too many query parameters"),
])
def test_readings_api_bad_parameters_are_400_with_a_message(loop, query, message):
    status, headers, body = loop.get(f"/api/devices/pv-roof/readings?{query}")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert message in json.loads(body)["error"]


def test_readings_api_unknown_device_is_404(loop):
    status, _, body = loop.get("/api/devices/nope/readings")
    assert status == 404 and "no device named 'nope'" in json.loads(body)["error"]


QUERY_CHARS = st.sampled_from(list("=&;%+-.:TZ0123456789aeEinfsylmtu_ \t\x00\u00e9\u20ac#?/"))


@fuzz_settings(examples_in_make_test=300)
@given(name=st.sampled_from(["pv-roof", "nope", "%2e%2e", "pv-roof%00", "%C3%A9", "x%ZZ"]),
       query=st.one_of(
           st.text(QUERY_CHARS, max_size=60),
           st.lists(st.tuples(st.sampled_from(["since", "until", "limit", "x", ""]),
                              st.one_of(st.integers(-10**20, 10**20).map(str),
                                        st.floats().map(repr),
                                        st.datetimes().map(lambda d: d.isoformat()),
                                        st.text(QUERY_CHARS, max_size=12))),
                    max_size=4).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv))))
def test_readings_api_never_fails_on_any_query(shared_loop, name, query):
    target = f"/api/devices/{name}/readings?{query}".replace(" ", "%20").encode("utf-8")
    status, body = shared_loop.raw(b"GET " + target + b" HTTP/1.0\r\n\r\n")
    assert status in (200, 400, 404), (status, body)
    if body.startswith(b"{"):  # else the server or the router refused the path itself
        answer = json.loads(body)
        assert ("readings" in answer) if status == 200 else answer["error"]
    else:
        assert status != 200


@pytest.fixture(scope="module")
def shared_loop():
    server = LoopThread()
    yield server
    server.close()


# -- metrics and probes ---------------------------------------------------------------------

def test_metrics_parse_with_prometheus_client(loop):
    loop.site.devices[1] = {**loop.site.devices[1], "inbound_dropped": 2}
    loop.site.devices[2] = {**loop.site.devices[2], "inbound_ignored": 5}
    status, headers, body = loop.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}

    def value(name, device, **labels):
        return samples[(name, tuple(sorted({"device": device, **labels}.items())))]

    assert value("c8ysim_connected", "pv-roof") == 1
    assert value("c8ysim_queued", "heatpump") == 3
    assert value("c8ysim_sent_total", "grid-meter") == 1234
    assert value("c8ysim_dropped_total", "pv-roof") == 0
    assert value("c8ysim_lost_total", "pv-roof") == 0
    assert value("c8ysim_inbound_dropped_total", "heatpump") == 2
    assert value("c8ysim_inbound_ignored_total", "grid-meter") == 5
    assert value("c8ysim_reconnects_total", "pv-roof") == 1
    assert value("c8ysim_last_ack_timestamp_seconds", "pv-roof") == loop.site.now - 1.5
    assert value("c8ysim_power_watts", "pv-roof") == -1200
    assert value("c8ysim_power_watts", "grid-meter") == -300
    assert value("c8ysim_energy_kwh", "grid-meter", register="import") == 100.5
    assert value("c8ysim_energy_kwh", "grid-meter", register="export") == 20.25
    assert value("c8ysim_energy_kwh", "pv-roof", register="export") == 12.5
    assert ("c8ysim_energy_kwh", (("device", "pv-roof"), ("register", "import"))) not in samples
    assert value("c8ysim_device_state", "heatpump", state="running") == 1
    assert value("c8ysim_device_state", "heatpump", state="fatal") == 0


def test_metrics_leave_out_unknown_values_and_escape_labels():
    site = Site(devices=[{"name": 'we"ird\\name', "state": "starting"}])
    text = status_metrics.render(site.status())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["c8ysim_queued"].samples == []
    state = families["c8ysim_device_state"].samples
    assert {s.labels["device"] for s in state} == {'we"ird\\name'}


def test_healthz_and_readyz(loop):
    assert loop.get("/healthz")[:1] == (200,) and loop.get("/readyz")[2] == b"ready\n"
    loop.site.devices[0] = {**loop.site.devices[0], "state": "backoff", "retry_in_s": 3.0}
    loop.site.devices[1] = {**loop.site.devices[1], "queued": 10_000}
    status, _, body = loop.get("/readyz")
    assert status == 503
    assert body.decode().splitlines() == ["pv-roof: backoff",
                                          "heatpump: 10000 queued (limit 10000)"]
    loop.site.alive = False
    assert loop.get("/healthz")[0] == 503
    assert b"supervisor loop stalled" in loop.get("/readyz")[2]


def test_basic_auth_guards_everything_but_healthz():
    server = LoopThread(auth=("admin", "s3cr\u00e9t"))
    right = {"Authorization": "Basic " + b64encode("admin:s3cr\u00e9t".encode()).decode()}
    try:
        status, headers, _ = server.get("/api/status")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        for wrong in (b"admin:nope", b"admin", b"nobody:s3cr\xc3\xa9t", b"admin:s3cr\xe9t",
                      b"\xff\xfe:\x00"):
            header = {"Authorization": "Basic " + b64encode(wrong).decode()}
            assert server.get("/metrics", header)[0] == 401, wrong
        for garbage in ("Basic", "Basic !!!", "Bearer x", "Basic " + "A" * 5000):
            assert server.get("/api/status", {"Authorization": garbage})[0] == 401
        assert server.get("/metrics", right)[0] == 200
        # /readyz names devices and their trouble: guarded. /healthz says only ok/stalled.
        assert server.get("/readyz")[0] == 401 and server.get("/readyz", right)[0] == 200
        for path in ("/", "/cards", "/data", "/data?format=csv",
                     "/api/devices/pv-roof/readings"):
            assert server.get(path)[0] == 401, path
            assert server.get(path, right)[0] == 200, path
        status, _, body = server.get("/healthz")
        assert (status, body) == (200, b"ok\n")
    finally:
        server.close()


# -- speed and robustness -------------------------------------------------------------------

def test_index_renders_ten_devices_with_a_full_hour_in_a_few_ms():
    now = time.time()
    kinds = ["pv", "heatpump", "grid"]
    site = Site(now, [device(f"dev-{i}", kinds[i % 3], now) for i in range(10)])
    app = build_app(site.status, lambda: True, site.history, now=lambda: now)
    timings = {}
    for path in ("/", "/cards", "/data", "/metrics", "/api/status"):
        runs = []
        for _ in range(15):
            started = time.perf_counter()
            body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": path,
                                 "QUERY_STRING": ""}, lambda *a: None))
            runs.append(time.perf_counter() - started)
        timings[path] = statistics.median(runs) * 1000
        assert body
    print("render ms (median of 15):", {k: round(v, 2) for k, v in timings.items()})
    assert timings["/"] < 50, timings  # a few ms here; generous for a busy shared machine


def test_idle_and_slow_clients_do_not_stall_the_loop(loop):
    idle = [socket.create_connection(("127.0.0.1", loop.server.port)) for _ in range(5)]
    try:
        idle[0].sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")  # never finishes
        turns = loop.turns
        started = time.monotonic()
        assert loop.get("/healthz")[0] == 200
        assert time.monotonic() - started < 0.5
        time.sleep(0.3)
        assert loop.turns > turns + 3
    finally:
        for sock in idle:
            sock.close()


def test_unknown_path_is_404_and_garbage_is_400(loop):
    assert loop.get("/nope")[0] == 404
    assert loop.raw(b"\x00\x01garbage\r\n\r\n")[0] == 400


# -- `c8ysim status` ------------------------------------------------------------------------

def run_cli(config_path, *argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="c8ysim")
    status_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["status", "--config", str(config_path), *argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.handler(args)
    return code, out.getvalue(), err.getvalue()


def test_status_command_prints_a_table_and_json(loop, tmp_path):
    config = write_config(tmp_path, free_port(), loop.server.port)
    code, out, _ = run_cli(config)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("c8ysim 0.1.0")
    header = next(i for i, line in enumerate(lines) if line.startswith("DEVICE"))
    assert lines[header + 1].split()[:5] == ["pv-roof", "c8ysim-pv-roof", "pv", "online", "3"]
    assert "1.20 kW" in out and "-300 W" in out
    code, out, _ = run_cli(config, "--json")
    assert code == 0 and json.loads(out) == json.loads(json.dumps(loop.site.status()))


def test_status_command_says_clearly_when_the_agent_is_not_running(tmp_path):
    port = free_port()
    code, out, err = run_cli(write_config(tmp_path, free_port(), port))
    assert code == exits.NOT_RUNNING == 3 and out == ""
    assert f"c8ysim is not running (nothing answers on 127.0.0.1:{port})" in err
    code, _, err = run_cli(tmp_path / "missing.yaml")
    assert code == 78 and "cannot read the config file" in err


# -- end to end -----------------------------------------------------------------------------

PASSWORD = "pw-9f3b7c1e-never-shown"


def test_every_endpoint_of_the_real_agent(tmp_path, mosquitto, agent_factory):
    port = free_port()
    config = write_config(tmp_path, mosquitto.port, port)
    config.write_text(config.read_text().replace("password: secret", f"password: {PASSWORD}"))
    agent = agent_factory(config, port).start()
    wait_until(lambda: all(d.get("connected") and d.get("last_reading")
                           for d in agent.devices().values()) and len(agent.devices()) == 3,
               15, what="three connected devices with readings")
    wait_until(lambda: all(json.loads(agent.get(f"/api/devices/{name}/readings"))["count"]
                           for name in agent.devices()), 10, what="history")
    pages = {path: agent.get(path) for path in (
        "/", "/cards", "/data", "/data?format=csv", "/data?device=pv-roof&window=5m",
        "/api/status", "/api/devices/pv-roof/readings?limit=5", "/metrics", "/readyz")}
    assert all(body for body in pages.values()), [p for p, b in pages.items() if not b]
    for body in pages.values():
        assert PASSWORD.encode() not in body
    assert pages["/"].count(b"<article class=") == 3 and pages["/"].count(b"<svg") == 3
    assert pages["/readyz"] == b"ready\n" and agent.get("/healthz") == 200
    metrics = {f.name: f for f in text_string_to_metric_families(pages["/metrics"].decode())}
    assert {s.labels["device"] for s in metrics["c8ysim_connected"].samples} == \
        {"pv-roof", "heatpump", "grid-meter"}
    assert {s.value for s in metrics["c8ysim_connected"].samples} == {1}
    for family in ("c8ysim_lost", "c8ysim_inbound_dropped", "c8ysim_inbound_ignored"):
        assert {(s.labels["device"], s.value) for s in metrics[family].samples} == \
            {("pv-roof", 0), ("heatpump", 0), ("grid-meter", 0)}, family
    assert len(metrics["c8ysim_power_watts"].samples) == 3
    assert json.loads(pages["/api/devices/pv-roof/readings?limit=5"])["count"] >= 1
    assert agent.get("/api/devices/nope/readings") is None  # 404
    code, out, _ = run_cli(config)
    assert code == 0 and out.count("online") == 3 and PASSWORD not in out
    agent.stop()
    code, _, err = run_cli(config)
    assert code == 3 and "not running" in err


def with_status_password(config, port: int, password_file) -> None:
    """Turn on the status page's basic auth in a conftest.write_config config."""
    config.write_text(config.read_text().replace(
        f"'127.0.0.1:{port}'}}", f"'127.0.0.1:{port}', password_file: '{password_file}'}}"))


def test_status_command_sends_the_password_file_credentials(tmp_path, mosquitto,
                                                             agent_factory):
    port, secret = free_port(), tmp_path / "status-password"
    secret.write_text("st-pw-61c0e2\n")
    secret.chmod(0o600)
    config = write_config(tmp_path, mosquitto.port, port)
    with_status_password(config, port, secret)
    agent = agent_factory(config, port).start()
    assert agent.get("/api/status") is None  # 401 without credentials: auth is on
    wait_until(lambda: run_cli(config)[1].count("online") == 3, 15,
               what="`c8ysim status` to show three devices online")
    code, out, err = run_cli(config, "--json")
    assert code == 0 and len(json.loads(out)["devices"]) == 3, err
    assert "st-pw-61c0e2" not in out + err
    secret.write_text("not-the-one\n")  # the agent keeps the password it loaded
    code, out, err = run_cli(config)
    assert code == exits.FAILURE and out == ""
    assert "answered 401" in err and "status.password_file" in err
    assert "not-the-one" not in err and "st-pw-61c0e2" not in err


# -- status.listen off loopback needs status.password_file (issue 13) -----------------------

def check_config(path) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "c8ysim", "check-config", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.168.1.20:8080",
                                    "pi.example.org:8080"])
def test_listening_off_loopback_without_a_password_file_is_refused(tmp_path, listen):
    config = write_config(tmp_path, 1883, 8080)
    config.write_text(config.read_text().replace("'127.0.0.1:8080'", f"'{listen}'"))
    code, output = check_config(config)
    line = config.read_text().splitlines().index(f"status: {{listen: '{listen}'}}") + 1
    assert code == 78 and f"{config}:{line}: status.listen {listen}" in output, output
    assert "status.password_file" in output and "127.0.0.1:8080" in output


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8080",
                                    "localhost:8080"])
def test_loopback_needs_no_password(tmp_path, listen):
    config = write_config(tmp_path, 1883, 8080)
    config.write_text(config.read_text().replace("'127.0.0.1:8080'", f"'{listen}'"))
    assert check_config(config)[0] == 0


@pytest.mark.parametrize("content, problem", [
    ("status-pw-4d2a\n", None), ("\n  \n", "is empty"), (b"\xff\xfe", "as UTF-8 text"),
    (None, "cannot read file")])
def test_the_password_file_is_read_at_load_and_never_shown(tmp_path, content, problem):
    secret = tmp_path / "status-password"
    if isinstance(content, bytes):
        secret.write_bytes(content)
    elif content is not None:
        secret.write_text(content)
    config = write_config(tmp_path, 1883, 8080)
    config.write_text(config.read_text().replace(
        "'127.0.0.1:8080'}", f"'0.0.0.0:8080', password_file: {secret}}}"))
    code, output = check_config(config)
    assert (code == 0) == (problem is None), output
    if problem:
        assert problem in output and "status.password_file" in output, output
    assert "status-pw-4d2a" not in output
    if problem is None:
        loaded = config_module.load(str(config))
        assert loaded.status.auth == ("c8ysim", "status-pw-4d2a")
        assert "status-pw-4d2a" not in repr(loaded)
