"""The drain rate that finds the tenant's stream limit from the PUBACK latency (issue 18,
`c8ysim.uplink.pacing.DrainRate`): first the controller alone (pure: the test passes the
time), then the real agent with the default `max_lines_per_s` against the fake tenant's
stream limit (reference §5: over the limit the platform queues, so the PUBACKs come later
and later; when the queue overflows it disconnects the device)."""

from __future__ import annotations

import random
import time

import pytest

from c8ysim.uplink import pacing
from c8ysim.uplink.pacing import CUT, RAISED, DrainRate
from c8ysim.uplink.session import Session
from c8ysim.uplink.transport import Endpoint
from conftest import free_port, write_config
from test_session import REGISTRATION, Driver
from test_throttled_drain import assert_each_backlog_once_in_order, data_lines, queue_backlog

STEP_S = 0.01  # a PUBACK every 10 ms in the controller tests


def feed(rate: DrainRate, start: float, seconds: float, latency: float, lines: int = 10,
         draining: bool = True, held: bool = True) -> list[tuple[float, str, float]]:
    """PUBACKs every STEP_S from `start` for `seconds`, each `latency` after its publish,
    the rate holding a backlog back between them (`held`); (time, change, rate) of every
    change."""
    changes = []
    for i in range(round(seconds / STEP_S)):
        now = start + (i + 1) * STEP_S
        if held:
            rate.held_back()
        change = rate.acked(now - latency, lines, now, draining)
        if change:
            changes.append((round(now, 3), change, rate.current))
    return changes


def test_slow_start_doubles_once_per_latency_period_up_to_the_ceiling():
    rate = DrainRate(1000.0, now=0.0, start_per_s=10.0)
    changes = feed(rate, 0.0, 2.0, latency=0.005)
    assert [c[2] for c in changes] == [20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1000.0]
    assert all(b[0] - a[0] >= pacing.ROUND_S - 1e-9 for a, b in zip(changes, changes[1:]))
    assert {c[1] for c in changes} == {RAISED} and rate.current == 1000.0


def test_a_period_lasts_until_a_publish_sent_after_the_change_is_acknowledged():
    rate = DrainRate(1000.0, now=0.0, start_per_s=10.0)
    changes = feed(rate, 0.0, 1.0, latency=0.3)  # a long link: each period is its RTT
    assert [c[2] for c in changes] == [20.0, 40.0, 80.0]
    assert all(b[0] - a[0] >= 0.3 - 1e-9 for a, b in zip(changes, changes[1:]))


def test_the_default_ceiling_starts_at_a_hundredth_and_never_below_the_floor():
    assert DrainRate(100000.0 / 3, 0.0).current == pytest.approx(1000.0 / 3)
    assert DrainRate(10.0, 0.0).current == pacing.RATE_FLOOR_PER_S
    assert DrainRate(0.5, 0.0).current == 0.5  # a ceiling below the floor: that


def test_no_raise_without_a_backlog_or_when_the_rate_holds_nothing_back():
    rate = DrainRate(1000.0, now=0.0, start_per_s=10.0)
    assert feed(rate, 0.0, 1.0, latency=0.005, draining=False, held=False) == []  # live
    assert feed(rate, 1.0, 1.0, latency=0.005, held=False) == []  # window or rows bound
    assert rate.current == 10.0
    assert feed(rate, 2.0, 0.2, latency=0.005)[0][1] == RAISED


def test_rising_latency_cuts_to_three_quarters_of_the_delivered_rate_once_per_period():
    rate = DrainRate(10000.0, now=0.0, start_per_s=5000.0)
    assert feed(rate, 0.0, 2.0, latency=0.005, held=False) == []  # base 5 ms, 1000 lines/s
    changes = feed(rate, 2.0, 0.3, latency=0.2, held=False)  # the tenant queues
    assert [c[1] for c in changes] == [CUT]
    cut_at = changes[0][0]
    assert cut_at >= 2.0 + 0.2  # the first publishes sent after a change: a period later
    # delivered: 10 lines per 10 ms = 1000 lines/s, below the rate of 5000
    assert changes[0][2] == pytest.approx(pacing.CUT_FACTOR * 1000.0, rel=0.02)
    assert rate.trouble == pytest.approx(1000.0, rel=0.02)
    # the queue does not shrink: cut again, but only once per latency period
    later = feed(rate, 2.3, 1.0, latency=0.2, held=False)
    assert {c[1] for c in later} == {CUT} and 4 <= len(later) <= 5
    times = [cut_at] + [c[0] for c in later]
    assert all(b - a >= 0.2 - 1e-9 for a, b in zip(times, times[1:]))
    assert later[0][2] == pytest.approx(pacing.CUT_FACTOR * changes[0][2], rel=0.02)


def test_once_the_queue_is_gone_it_stops_cutting_and_grows_again():
    rate = DrainRate(10000.0, now=0.0, start_per_s=5000.0)
    feed(rate, 0.0, 2.0, latency=0.005, held=False)
    assert [c[1] for c in feed(rate, 2.0, 0.4, latency=0.3, held=False)] == [CUT]
    cut = rate.current
    assert feed(rate, 2.4, 0.05, latency=0.04, held=False) == []  # under the threshold
    assert rate.current == cut
    assert {c[1] for c in feed(rate, 2.45, 1.0, latency=0.005)} == {RAISED}


def test_a_single_late_puback_does_not_cut_the_lowest_of_a_period_counts():
    rate = DrainRate(10000.0, now=0.0, start_per_s=5000.0)
    feed(rate, 0.0, 1.0, latency=0.005, held=False)
    for i in range(100):  # every tenth PUBACK late (our own loop paused): no queue
        now = 1.0 + (i + 1) * STEP_S
        assert rate.acked(now - (0.5 if i % 10 == 0 else 0.005), 10, now, True) is None
    assert rate.current == 5000.0


def test_the_margin_grows_with_a_long_base_latency():
    rate = DrainRate(10000.0, now=0.0, start_per_s=5000.0)
    feed(rate, 0.0, 1.0, latency=0.2, held=False)
    assert rate.base.threshold() == pytest.approx(0.2 * (1 + pacing.MARGIN_FRACTION))
    assert feed(rate, 1.0, 1.0, latency=0.28, held=False) == []  # jitter of a long link
    assert feed(rate, 2.0, 1.0, latency=0.35, held=False)[0][1] == CUT


def test_after_a_cut_it_grows_gently_and_slow_starts_again_once_past_twice_the_mark():
    rate = DrainRate(100000.0, now=0.0, start_per_s=5000.0)
    feed(rate, 0.0, 1.0, latency=0.005, held=False)
    assert len(feed(rate, 1.0, 0.3, latency=0.2, held=False)) == 1
    assert rate.trouble == pytest.approx(1000.0, rel=0.02)  # delivered when it queued
    cut = rate.current
    assert cut == pytest.approx(pacing.CUT_FACTOR * rate.trouble)
    feed(rate, 1.3, 1.0, latency=0.005)  # the queue is gone: gently up
    assert cut < rate.current <= cut * (1 + pacing.GENTLE_PER_S) ** 1.5
    feed(rate, 2.3, 40.0, latency=0.005, lines=1000)  # no trouble for long: the mark goes
    assert rate.trouble is None and rate.current == 100000.0


def test_cuts_never_go_below_the_floor():
    rate = DrainRate(100.0, now=0.0, start_per_s=100.0)
    feed(rate, 0.0, 1.0, latency=0.005, lines=0, held=False)
    for i in range(20):  # latency rising period after period, nothing delivered
        feed(rate, 1.0 + i, 1.0, latency=0.1 * (i + 1), lines=0, held=False)
    assert rate.current == pacing.RATE_FLOOR_PER_S


def test_a_disconnect_halves_not_twice_within_the_quiet_time_then_it_recovers():
    rate = DrainRate(100.0, now=0.0, start_per_s=100.0)
    assert [rate.throttled(t) and rate.current for t in (1, 11, 21)] == [50.0, 25.0, 12.5]
    assert not rate.throttled(25) and rate.current == 12.5  # not twice within 10 s
    for t in range(31, 200, 10):
        rate.throttled(t)
    assert rate.current == 1.0 and not rate.throttled(500)  # the floor
    rate.online(600.0)
    feed(rate, 600.0, 30.0, latency=0.005)  # flat latency: back to the ceiling
    assert rate.current == 100.0


def test_a_draining_device_keeps_a_latency_thresholds_worth_of_the_rate_in_flight():
    rate = DrainRate(10000.0, now=0.0, start_per_s=1000.0)
    assert rate.inflight_limit() == pytest.approx(1000.0 * pacing.MARGIN_S)  # no base yet
    feed(rate, 0.0, 1.0, latency=0.2, held=False)
    assert rate.inflight_limit() == pytest.approx(1000.0 * 0.2 * (1 + pacing.MARGIN_FRACTION))


def test_live_traffic_goes_at_once_and_leaves_the_rate_alone(tmp_path, mosquitto):
    """A device with no backlog: its few lines a tick leave at once, and their PUBACKs
    (latency samples too) neither raise nor cut the rate."""
    driver = Driver(tmp_path, mosquitto.port)
    driver.session = Session(Endpoint("127.0.0.1", mosquitto.port, "dev-1", "t/u", "p", 10),
                             REGISTRATION, driver.buffer, driver.events, 0.05,
                             random.Random(7), max_lines_per_s=100000.0 / 3)
    start = driver.session.status()["drain_rate"]
    try:
        driver.run_until(lambda: driver.session.state == "online", 10, "online")
        for tick in range(20):  # 20 ticks of 5 lines, 50 ms apart
            driver.buffer.put_many([("s/us", f"211,{tick}.{i}".encode(), time.time())
                                    for i in range(5)])
            put = time.monotonic()
            driver.run_until(lambda: driver.buffer.stats(time.time()).depth == 0, 2, "sent")
            assert time.monotonic() - put < 0.5
            assert not driver.session.backlogged
            time.sleep(0.05)
        assert driver.session.sent == 100
        assert driver.session.status()["drain_rate"] == start == pytest.approx(1000 / 3, 0.01)
    finally:
        driver.close()


# --- the real agent against the tenant's stream limit -------------------------------------

DEVICES = [("pv-roof", "pv"), ("heatpump", "heatpump"), ("grid-meter", "grid")]
LIMIT_LINES_PER_S = 600  # the tenant's "Limit stream requests", over all devices
QUEUE_LINES = 1200  # its "Limit stream queue": 2 s at the limit
BACKLOG = 3000  # readings a device: 15 s at the limit for the three
# The drain must reach this fraction of the limit: well above a rate stuck low, below what a
# loaded CI machine gives (measured 0.90-0.95 alone, 0.78 once in a full `make test`); the
# figure is printed, and measured by `make bench`, not asserted closer.
NEAR = 0.5


@pytest.mark.timeout(120)
def test_the_default_rate_drains_near_the_tenant_limit_without_overflowing_it(
        tmp_path, agent_factory):
    """With no max_lines_per_s in the YAML (ceiling 100000) three devices drain a backlog
    through a tenant limit of 600 lines/s with a 1200-line queue. The old fixed default of
    1000 lines/s overflows that queue within 3 s; a fixed 100000 overflows it at once (20
    publishes of up to 64 lines in flight per device are 3840 lines). The drain rates the
    devices report at the end are printed, not checked: a device whose backlog ends while
    the others' have ended keeps the rate it reached alone, untested by a queue."""
    status_port = free_port()
    with tenant_context() as tenant:
        config = write_config(tmp_path, tenant.port, status_port, interval_s=10,
                              devices=DEVICES)
        assert "max_lines_per_s" not in config.read_text()
        (tmp_path / "state").mkdir()
        expected = {f"c8ysim-{name}": queue_backlog(tmp_path / "state", name, BACKLOG)
                    for name, _kind in DEVICES}
        total = sum(len(lines) for lines in expected.values())

        tenant.limit_stream(LIMIT_LINES_PER_S, QUEUE_LINES)
        agent = agent_factory(config, status_port)
        agent.start()
        first, done = drain_times(tenant, expected, timeout=90)
        drain_s = done - first
        stats = tenant.stream_stats()
        disconnects = sum(stats.overflows.values())
        devices = agent.devices()
        rates = {name: round(d["drain_rate"]) for name, d in devices.items()}
        print(f"\ndefault drain rate against a tenant limit of {LIMIT_LINES_PER_S} lines/s "
              f"with a {QUEUE_LINES}-line queue: {total} lines from 3 devices in "
              f"{drain_s:.1f} s = {total / drain_s:.0f} lines/s "
              f"({total / drain_s / LIMIT_LINES_PER_S:.2f} x the limit), {disconnects} "
              f"disconnects, max queue {stats.max_queued_lines} lines, "
              f"{stats.queued_publishes} publishes queued; drain rates now {rates} "
              f"(sum {sum(rates.values())})")

        assert_each_backlog_once_in_order(tenant, expected)
        assert disconnects <= 1, stats.overflows
        assert stats.max_queued_lines > 0  # the limit was reached: the rate had to find it
        assert total / drain_s >= NEAR * LIMIT_LINES_PER_S
        assert "the tenant queues: PUBACK latency" in agent.log_text()
        assert agent.stop() == 0
        assert tenant.violations == [], tenant.violations
        assert tenant.internal_errors == [], tenant.internal_errors


def tenant_context():
    from fake_tenant import FakeTenant
    return FakeTenant({"t1/u": "secret"})


def drain_times(tenant, expected: dict, timeout: float) -> tuple[float, float]:
    """(first backlog line at the tenant, every backlog there), monotonic; polled."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        counts = [len(data_lines(tenant, client)) for client in expected]
        now = time.monotonic()
        if first is None and any(counts):
            first = now
        if all(n >= len(expected[c]) for n, c in zip(counts, expected)):
            return first, now
        time.sleep(0.1)
    raise AssertionError(f"not every backlog arrived within {timeout} s: {counts}")
