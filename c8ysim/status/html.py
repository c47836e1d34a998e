"""The status page's HTML: device cards with sparklines, the site summary, the data view.

Pure string building from the supervisor's view and device histories; every value that
came from outside is escaped. CSS and the few lines of JavaScript are inline (the Pi is often
offline: nothing may come from a CDN). The page refreshes by fetching the `cards` fragment
(the same renderer as the first load) every `REFRESH_S`; without JavaScript a <noscript> meta
refresh reloads the whole page. Links are relative, so the page also works behind a proxy
under a prefix.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from urllib.parse import urlencode

from c8ysim.kinds import KINDS, Kind
from c8ysim.status import view as sv

REFRESH_S = 5
NOSCRIPT_REFRESH_S = 10
SPARK_SPAN_S = 3600.0
SPARK_WIDTH, SPARK_HEIGHT, SPARK_POINTS = 300, 48, 150

CSS = """
:root{--fg:#1b1f24;--mute:#5c6670;--bg:#f4f6f8;--card:#fff;--line:#d8dee4;--ok:#1a7f37;
--warn:#9a6700;--bad:#cf222e;--idle:#6e7781;--spark:#0969da}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--mute:#9da7b1;--bg:#0d1117;
--card:#161b22;--line:#30363d;--ok:#3fb950;--warn:#d29922;--bad:#f85149;--spark:#58a6ff}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header.top{display:flex;flex-wrap:wrap;align-items:baseline;gap:.3em 1em;padding:.6em 1em;
background:var(--card);border-bottom:1px solid var(--line)}
header.top h1{font-size:1.2em;margin:0}
nav a{margin-right:.8em;color:var(--spark)}
main{padding:.8em 1em;max-width:80em}
.meta{color:var(--mute);font-size:.85em;margin:0 0 .6em}
.lost{display:none;color:var(--bad);font-weight:600}
body.stale .lost{display:inline}
.summary{display:grid;grid-template-columns:repeat(auto-fit,minmax(7.5em,1fr));gap:.5em;
margin-bottom:.8em}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.4em .7em}
.tile b{display:block;font-size:1.3em;font-variant-numeric:tabular-nums}
.tile span{color:var(--mute);font-size:.85em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(19em,1fr));gap:.8em}
.card{background:var(--card);border:1px solid var(--line);border-left:5px solid var(--idle);
border-radius:8px;padding:.6em .8em}
.card.ok{border-left-color:var(--ok)}.card.warn{border-left-color:var(--warn)}
.card.bad{border-left-color:var(--bad)}
.card header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.2em .6em}
.card h2{font-size:1.1em;margin:0;word-break:break-all}
.kind{color:var(--mute);font-size:.85em}
.badge{margin-left:auto;font-size:.8em;font-weight:600;padding:.1em .5em;border-radius:1em;
color:#fff;background:var(--idle)}
.ok .badge{background:var(--ok)}.warn .badge{background:var(--warn)}
.bad .badge{background:var(--bad)}
.power{font-size:1.5em;font-weight:600;margin:.2em 0 0;font-variant-numeric:tabular-nums}
.power small{font-size:.55em;font-weight:400;color:var(--mute)}
svg.spark{display:block;width:100%;height:48px;margin:.2em 0}
svg.spark polyline{fill:none;stroke:var(--spark);stroke-width:1.5}
svg.spark line{stroke:var(--line);stroke-dasharray:3 3}
svg.spark *{vector-effect:non-scaling-stroke}
svg.spark circle{fill:var(--spark)}
.range{color:var(--mute);font-size:.75em;margin:0 0 .4em}
dl{display:grid;grid-template-columns:repeat(auto-fill,minmax(8.5em,1fr));gap:.3em .8em;
margin:.4em 0}
dt{color:var(--mute);font-size:.75em}
dd{margin:0;font-variant-numeric:tabular-nums;word-break:break-word}
.readings{border-top:1px solid var(--line);padding-top:.4em}
.err{color:var(--bad)}
form{display:flex;flex-wrap:wrap;gap:.5em;align-items:end;margin-bottom:.6em}
label{display:flex;flex-direction:column;font-size:.85em;color:var(--mute)}
select,button{font:inherit;padding:.2em .4em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;background:var(--card);font-size:.85em;
font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:.2em .5em;text-align:right;white-space:nowrap}
th:nth-child(-n+2),td:nth-child(-n+2),td:last-child{text-align:left}
.pager{margin:.6em 0;display:flex;gap:1em;flex-wrap:wrap}
"""

# Swaps in the server-rendered fragment, so no value is ever formatted twice (Python and JS).
JS = """
(function(){
  var live=document.getElementById('live'),n=0;
  function again(){setTimeout(tick,%d);}
  function tick(){
    if(document.hidden){again();return;}
    fetch('cards',{cache:'no-store',credentials:'same-origin'}).then(function(r){
      if(!r.ok){throw new Error('HTTP '+r.status);}return r.text();
    }).then(function(text){
      live.innerHTML=text;n+=1;
      document.body.setAttribute('data-updates',n);document.body.classList.remove('stale');
    }).catch(function(){document.body.classList.add('stale');}).then(again);
  }
  again();
})();
""" % (REFRESH_S * 1000)


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


STYLE_HASH, SCRIPT_HASH = _csp_hash(CSS), _csp_hash(JS)


# -- pages --------------------------------------------------------------------------------

def index(view: dict, histories: dict[str, list], now: float | None = None) -> str:
    body = f'<div id="live">{cards(view, histories, now)}</div>'
    return _page("c8ysim status", view, body, script=True)


def cards(view: dict, histories: dict[str, list], now: float | None = None) -> str:
    """The live part of the index page (also served alone for the in-place refresh)."""
    now = time.time() if now is None else now
    agent, devices = view.get("agent", {}), view.get("devices", [])
    online = sum(1 for d in devices if d.get("connected"))
    meta = (f'<p class="meta">updated {_e(time.strftime("%H:%M:%S", time.localtime(now)))}'
            f' &middot; uplink {_e(agent.get("uplink"))} &middot; up '
            f'{_e(sv.fmt_age(agent.get("uptime_s")))} '
            f'<span class="lost">&middot; agent not answering</span></p>')
    return (meta + _summary(devices, online) + '<div class="cards">' +
            "".join(_card(d, histories.get(d.get("name")) or [], now) for d in devices) +
            "</div>")


def data_page(view: dict, rows: list[tuple[str, dict]], form: dict, pager: dict) -> str:
    """The data view: `rows` (device, reading), newest first, already filtered and paged."""
    names = [d.get("name") for d in view.get("devices", [])]
    units = {d.get("name"): d.get("units") or {} for d in view.get("devices", [])}
    options = "".join(_option(n, n, form["device"]) for n in [""] + names)
    windows = "".join(_option(key, label, form["window"])
                      for key, (label, _s) in form["windows"].items())
    count = form["csv_pages"]
    csv_links = " ".join(
        f'<a href="data?{_e(urlencode(_csv_query(form, page)))}">'
        f'{"download CSV" if count == 1 else f"CSV {page}/{count}"}</a>'
        for page in range(1, count + 1))
    body = (f'<form method="get" action="data"><label>device<select name="device">'
            f'{options}</select></label><label>window<select name="window">{windows}'
            f'</select></label><button type="submit">Show</button>'
            f'<span>{csv_links}</span></form>'
            f'{_pager(form, pager)}{_readings_table(rows, units)}{_pager(form, pager)}')
    return _page("c8ysim data", view, body)


def _csv_query(form: dict, page: int) -> dict:
    query = {"device": form["device"], "window": form["window"], "format": "csv"}
    return {**query, "page": page} if page > 1 else query


def error_page(view: dict, status: int, message: str) -> str:
    return _page(f"c8ysim: {status}", view, f'<p class="err">{_e(message)}</p>')


def _page(title: str, view: dict, body: str, script: bool = False) -> str:
    agent = view.get("agent", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{'<noscript><meta http-equiv="refresh" content="%d"></noscript>' % NOSCRIPT_REFRESH_S
 if script else ''}
<title>{_e(title)}</title><style>{CSS}</style></head>
<body><header class="top"><h1>c8ysim {_e(agent.get("version", ""))}</h1>
<nav><a href="./">Status</a><a href="data">Data</a><a href="metrics">Metrics</a>
<a href="api/status">JSON</a></nav></header>
<main>{body}</main>{'<script>%s</script>' % JS if script else ''}</body></html>
"""


# -- index parts --------------------------------------------------------------------------

def _summary(devices: list[dict], online: int) -> str:
    queued = sum(d.get("queued") or 0 for d in devices)
    tiles = [_tile(KINDS[kind], watts) for kind, watts in sv.summary(devices).items()]
    tiles += [("devices online", f"{online}/{len(devices)}"),
              ("queued", sv.fmt_count(queued))]
    return '<section class="summary">' + "".join(
        f'<div class="tile"><span>{_e(label)}</span><b>{_e(value)}</b></div>'
        for label, value in tiles) + "</section>"


def _tile(kind: Kind, watts: float | None) -> tuple[str, str]:
    """(label, value) of a kind's share of the site: "grid export now", "300 W"."""
    word = "" if watts is None else kind.tile_words[0 if watts >= 0 else 1]
    label = f"{kind.tile} {word}".rstrip() + " now"
    return label, sv.fmt_power(None if watts is None else abs(watts))


def _card(device: dict, history: list, now: float) -> str:
    level, label = sv.health(device)
    type_name, reading = device.get("type"), device.get("last_reading")
    kind = KINDS.get(type_name)
    buckets = sv.power_buckets(history, now, SPARK_SPAN_S, SPARK_POINTS)
    if kind:  # as the kind reads best: an inverter's output positive
        buckets = [(slot, kind.shown_power(watts)) for slot, watts in buckets]
    return (f'<article class="card {level}" data-device="{_e(device.get("name"))}">'
            f'<header><h2>{_e(device.get("name"))}</h2>'
            f'<span class="kind">{_e(type_name)} &middot; {_e(device.get("external_id"))}</span>'
            f'<span class="badge">{_e(label)}</span></header>'
            f'<p class="power">{_power_phrase(kind, sv.power_w(reading))}</p>'
            f'{sparkline(buckets)}{_facts(device, now)}'
            f'{_reading_list(reading, device.get("units"), now)}'
            "</article>")


def _power_phrase(kind: Kind | None, watts: float | None) -> str:
    if watts is None:
        return f'{sv.MISSING} <small>no reading yet</small>'
    if kind is None:  # a device no longer in the config, on its way out
        return _e(sv.fmt_power(watts))
    shown = kind.shown_power(watts)
    return f'{_e(sv.fmt_power(abs(shown)))} <small>{_e(kind.word(shown))}</small>'


def _facts(device: dict, now: float) -> str:
    oldest = device.get("oldest_queued_age_s")
    queued = sv.fmt_count(device.get("queued"))
    if device.get("queued") and oldest is not None:
        queued += f" (oldest {sv.fmt_age(oldest)})"
    facts = [("connected since", sv.fmt_since(device.get("connected_since"), now)),
             ("queued", queued),
             ("in flight", sv.fmt_count(device.get("inflight"))),
             ("sent", sv.fmt_count(device.get("sent"))),
             ("dropped", sv.fmt_count(device.get("dropped"))),
             ("quarantined", sv.fmt_count(device.get("quarantined"))),
             ("lost", sv.fmt_count(device.get("lost"))),
             ("reconnects", sv.fmt_count(device.get("reconnects"))),
             ("restarts", sv.fmt_count(device.get("restarts"))),
             ("broker msgs dropped", sv.fmt_count(device.get("inbound_dropped"))),
             ("broker lines ignored", sv.fmt_count(device.get("inbound_ignored"))),
             ("rejected by the platform", sv.fmt_count(device.get("rejected"))),
             ("drain rate", sv.fmt_value(device.get("drain_rate"), "lines/s")),
             ("last ack", sv.fmt_since(device.get("last_ack"), now))]
    if (faults := sv.fmt_faults(device, now)) is not None:
        facts.insert(0, ("faults", faults))
    if (overrides := sv.fmt_overrides(device)) is not None:
        facts.append(("set from Cumulocity", overrides))
    if device.get("last_error"):
        facts.append(("last error", str(device["last_error"])))
    if device.get("last_exit"):
        facts.append(("last exit", str(device["last_exit"])))
    for when, line in (device.get("rejections") or [])[-3:]:
        facts.append((f"rejected {sv.fmt_since(when, now)}", str(line)))
    return f'<dl class="facts">{_pairs(facts)}</dl>'


def _reading_list(reading: dict | None, units: dict | None, now: float) -> str:
    if not reading:
        return f'<dl class="readings">{_pairs([("last reading", sv.MISSING)])}</dl>'
    items = [("reading at", sv.fmt_since(reading.get("time"), now))]
    items += [(label, sv.fmt_value(value, unit)) for label, unit, value in
              sv.series_items(reading, units)]
    return f'<dl class="readings">{_pairs(items)}</dl>'


def _pairs(items) -> str:
    return "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in items)


def sparkline(values: list[tuple[int, float]]) -> str:
    """An inline SVG of (slot, watts) over SPARK_POINTS slots, the zero line dashed."""
    if not values:
        return '<p class="range">no power readings in the last hour</p>'
    lowest, highest = min(v for _, v in values), max(v for _, v in values)
    low, high = min(0.0, lowest), max(0.0, highest)
    scale = (SPARK_HEIGHT - 4) / ((high - low) or 1.0)
    step = SPARK_WIDTH / SPARK_POINTS
    base = SPARK_HEIGHT - 2 + low * scale  # y of a value v is base - v * scale

    def y(watts: float) -> str:
        return f"{base - watts * scale:.1f}"

    if len(values) > 1:
        coords = " ".join([f"{(slot + 0.5) * step:.1f},{base - v * scale:.1f}"
                           for slot, v in values])
        shape = f'<polyline points="{coords}"/>'
    else:
        shape = f'<circle cx="{(values[0][0] + 0.5) * step:.1f}" cy="{y(values[0][1])}" r="2"/>'
    zero = y(0.0)
    title = f"power, last hour: {sv.fmt_power(lowest)} to {sv.fmt_power(highest)}"
    return (f'<svg class="spark" viewBox="0 0 {SPARK_WIDTH} {SPARK_HEIGHT}" '
            f'preserveAspectRatio="none" role="img" aria-label="{_e(title)}">'
            f'<title>{_e(title)}</title>'
            f'<line x1="0" x2="{SPARK_WIDTH}" y1="{zero}" y2="{zero}"/>{shape}</svg>'
            f'<p class="range">{_e(title)}</p>')


# -- data view parts ----------------------------------------------------------------------

def _readings_table(rows: list[tuple[str, dict]], units: dict[str, dict]) -> str:
    if not rows:
        return "<p>No readings in this window.</p>"
    head = ("<tr><th>time</th><th>device</th><th>power (+in/\u2212out)</th><th>voltage</th>"
            "<th>current</th>"
            "<th>energy in</th><th>energy out</th><th>other</th></tr>")
    return f'<div class="scroll"><table>{head}' \
           f'{"".join(_row(n, r, units.get(n)) for n, r in rows)}</table></div>'


def _row(name: str, reading: dict, units: dict | None) -> str:
    energy = sv.energy_kwh(reading)
    values = {label: sv.fmt_value(value, unit)
              for label, unit, value in sv.series_items(reading, units)}
    phased = {f"{k} L{n}" for k in ("voltage", "current") for n in (1, 2, 3)}
    main = ("voltage", "current", "power in", "power out", "energy in", "energy out", *phased)
    other = ", ".join(f"{k} {v}" for k, v in values.items() if k not in main)

    def column(label: str) -> str:  # one phase, or the three of a three-phase device
        three = [values[f"{label} L{n}"] for n in (1, 2, 3) if f"{label} L{n}" in values]
        return values.get(label) or " / ".join(three) or sv.MISSING

    cells = [sv.fmt_clock(reading["time"]), name, sv.fmt_power(sv.power_w(reading)),
             column("voltage"), column("current"),
             sv.fmt_value(energy.get("import"), "kWh"),
             sv.fmt_value(energy.get("export"), "kWh"), other]
    return "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"


def _pager(form: dict, pager: dict) -> str:
    def link(page: int, text: str) -> str:
        query = urlencode({"device": form["device"], "window": form["window"], "page": page})
        return f'<a href="data?{_e(query)}">{text}</a>'

    page, pages, total = pager["page"], pager["pages"], pager["total"]
    first = (page - 1) * pager["per_page"] + 1
    shown = (f"rows {sv.fmt_count(first)}\u2013{sv.fmt_count(min(total, page * pager['per_page']))}"
             f" of {sv.fmt_count(total)}" if total and page <= pages else f"{total} rows")
    parts = [link(page - 1, "&larr; newer")] if page > 1 else []
    parts.append(_e(shown))
    if page < pages:
        parts.append(link(page + 1, "older &rarr;"))
    return '<p class="pager">' + " ".join(parts) + "</p>"


def _option(value: str, label: str, selected: str) -> str:
    mark = " selected" if value == selected else ""
    return f'<option value="{_e(value)}"{mark}>{_e(label or "all devices")}</option>'


def _e(value) -> str:
    return html.escape("" if value is None else str(value))
