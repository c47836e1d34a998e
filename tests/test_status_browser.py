"""The status page in a real browser: Debian's headless chromium, driven from the command line
(no selenium). It loads the page from the real agent and from plain status data, checks that
the cards, sparklines and live values are in the DOM after the in-place refreshes, that the
server-rendered page works without JavaScript, and writes phone-sized screenshots for people
to look at to build/test-output/status/ (or $C8YSIM_TEST_OUTPUT/status/)."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port, wait_until, write_config
from test_status_page import LoopThread, Site, device

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(os.environ.get("C8YSIM_TEST_OUTPUT", REPO / "build" / "test-output")) / "status"
CHROMIUM_TIMEOUT_S = 60
REFRESH_BUDGET_MS = 12_000  # virtual time: two in-place refreshes at REFRESH_S = 5
PHONE, DESKTOP = (412, 900), (1280, 900)
CARD = re.compile(r'<article class="card (\w+)" data-device="([^"]+)">(.*?)</article>', re.S)

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason="needs Debian's chromium (`make test` installs it)")


def chromium(profile: Path, url: str, *args: str) -> str:
    """Run headless chromium on `url`; its stdout. Its whole process group dies afterwards."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-breakpad", "--disable-crash-reporter",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args, url]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        out, err = b"", b"timed out"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
    assert proc.returncode == 0 or out, err.decode(errors="replace")[-2000:]
    return out.decode()


def dump_dom(tmp_path: Path, url: str) -> str:
    """The DOM after REFRESH_BUDGET_MS of virtual time (the page's timers run that long)."""
    return chromium(tmp_path / "profile-dom", url, "--dump-dom",
                    f"--virtual-time-budget={REFRESH_BUDGET_MS}")


def screenshot(tmp_path: Path, url: str, name: str, size: tuple[int, int]) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    path.unlink(missing_ok=True)
    chromium(tmp_path / f"profile-{name}", url, f"--screenshot={path}",
             f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=1000")
    assert png_size(path) == size
    return path


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def cards_of(dom: str) -> dict[str, tuple[str, str]]:
    return {name: (level, body) for level, name, body in CARD.findall(dom)}


def fact(card: str, label: str) -> str:
    return re.search(rf"<dt>{label}</dt><dd>([^<]*)</dd>", card).group(1)


def test_the_real_agent_in_chromium(tmp_path, mosquitto, agent_factory):
    port = free_port()
    agent = agent_factory(write_config(tmp_path, mosquitto.port, port), port).start()

    def settled():
        devices = agent.devices()
        return len(devices) == 3 and all(
            d.get("connected") and json.loads(agent.get(f"/api/devices/{n}/readings"))["count"]
            >= 2 for n, d in devices.items())
    wait_until(settled, 20, 0.2, what="three connected devices with two readings each")
    url = f"http://127.0.0.1:{port}/"

    dom = dump_dom(tmp_path, url)
    assert int(re.search(r'<body[^>]*data-updates="(\d+)"', dom).group(1)) >= 1, "no refresh"
    cards = cards_of(dom)
    assert set(cards) == {"pv-roof", "heatpump", "grid-meter"}
    for name, (level, card) in cards.items():
        assert level == "ok" and '<span class="badge">online</span>' in card, name
        assert re.search(r'<svg class="spark".*<(polyline|circle) ', card), name
        assert re.search(r'<p class="power">-?[\d.]+ k?W <small>', card), name
        assert fact(card, "queued") != "\u2014" and fact(card, "sent") != "\u2014", name

    # Without JavaScript the page is what the server rendered: the same three cards, plus a
    # <noscript> refresh. (Headless chromium cannot dump or shoot a page with scripts off.)
    served = agent.get("/").decode()
    assert len(cards_of(served)) == 3 and '<noscript><meta http-equiv="refresh"' in served
    screenshot(tmp_path, url, "agent-phone.png", PHONE)


class LiveSite(Site):
    """Plain status data whose pv-roof counts one more acknowledged row on every request."""

    def status(self) -> dict:
        self.devices[0] = {**self.devices[0], "sent": self.devices[0]["sent"] + 1}
        return super().status()


def test_the_page_refreshes_in_place_and_reads_on_a_phone(tmp_path):
    now = time.time()
    site = LiveSite(now, [
        device("pv-roof", "pv", now), device("heatpump", "heatpump", now, degraded="disk slow"),
        device("grid-meter", "grid", now),
        device("pv-garage", "pv", now, state="backoff", retry_in_s=12.3, pid=None,
               connected=False, last_exit="exit code 1"),
        device("heatpump-2", "heatpump", now, connection="auth_failed", connected=False,
               last_error="CONNACK refused: not authorized")])
    loop = LoopThread(site)
    try:
        url = f"http://127.0.0.1:{loop.server.port}/"
        dom = dump_dom(tmp_path, url)
        updates = int(re.search(r'<body[^>]*data-updates="(\d+)"', dom).group(1))
        cards = cards_of(dom)
        assert updates >= 1 and len(cards) == 5
        # the first load showed 1 235; each in-place refresh asked the server once more
        assert fact(cards["pv-roof"][1], "sent") == f"1\u202f{235 + updates}"
        assert [level for level, _ in cards.values()] == ["ok", "warn", "ok", "bad", "bad"]
        assert dom.count("<polyline") == 5
        for name, size in (("status-phone.png", PHONE), ("status-desktop.png", DESKTOP)):
            screenshot(tmp_path, url, name, size)
        screenshot(tmp_path, url + "data?window=15m", "data-phone.png", PHONE)
    finally:
        loop.close()
