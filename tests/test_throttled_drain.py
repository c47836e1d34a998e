"""Three devices drain a backlog of 400 readings each through the fake tenant's
tenant-wide stream limit (reference §5: over the limit the platform queues, and when the
queue overflows it disconnects the device that overflowed it), with a max_lines_per_s set
above the limit. The sessions see the PUBACKs come later once the tenant queues and cut
their drain rate (`pacing.DrainRate`); every line must arrive exactly once and in order
per device, with at most one disconnect. The figures are printed (`-s`).

Before the latency control this limit overflowed the queue and the sessions adapted by
halving after each disconnect (1-12 of them); now the queue is not meant to overflow. The
halving itself (the backstop) is tested in test_session.py and test_drain_rate.py: a
tenant queue too small for the latency to show (a few lines) is overflowed by a
reconnecting device's own registration lines, which makes the disconnect count of such a
run a matter of reconnect timing, not a check."""

from __future__ import annotations

import time

from c8ysim.config import StorageConfig
from c8ysim.storage import open_buffer
from c8ysim.uplink import smartrest
from conftest import free_port, wait_until, write_config
from fake_tenant import FakeTenant, parse_smartrest

DEVICES = [("pv-roof", "pv"), ("heatpump", "heatpump"), ("grid-meter", "grid")]
LIMIT_LINES_PER_S = 60  # the tenant's "Limit stream requests", over all devices
QUEUE_LINES = 120  # its "Limit stream queue"
MAX_LINES_PER_S = 100  # cumulocity.max_lines_per_s: the site's budget, over the limit
BACKLOG = 400  # readings a device, 10 s apart, ending before the agent starts
SESSION_TEMPLATES = {"100", "110", "112", "113", "114", "117", "500"}


def queue_backlog(state, name: str, count: int = BACKLOG) -> list[list[str]]:
    """Queue `count` readings in the device's buffer, as a backfill does (one 201 line each,
    its own timestamp); the fields of every line queued, oldest first."""
    start = (time.time() // 10 - count - 1) * 10
    buffer = open_buffer(StorageConfig(path=str(state)), name, guest=True)
    try:
        buffer.put_many([(smartrest.UPSTREAM_TOPIC, smartrest.line(
            201, "c8ysim_Backlog", smartrest.iso_time(start + 10 * i), "c8y_Counter", "n",
            float(i), "").encode(), time.time()) for i in range(count)])
        rows = buffer.peek(1_000_000)
    finally:
        buffer.close()
    return [parse_smartrest(row.payload.decode())[0].fields for row in rows]


def data_lines(tenant, client) -> list[list[str]]:
    return [f for f in tenant.lines(client) if f[0] not in SESSION_TEMPLATES]


def assert_each_backlog_once_in_order(tenant, expected: dict[str, list[list[str]]]) -> None:
    """Every queued line arrived exactly once and in order, and the readings taken since the
    agent started came after it, each once."""
    for client, lines in expected.items():
        got = data_lines(tenant, client)
        assert got[:len(lines)] == lines, client
        live = got[len(lines):]
        times = [f[2] for f in live if f[0] == "201"]
        assert times == sorted(set(times)) and (not times or times[0] > lines[-1][2])


def test_three_backlogs_drain_through_the_tenant_limit_exactly_once_in_order(
        tmp_path, agent_factory):
    status_port = free_port()
    with FakeTenant({"t1/u": "secret"}) as tenant:
        config = write_config(tmp_path, tenant.port, status_port, interval_s=10,
                              devices=DEVICES)
        config.write_text(config.read_text().replace(
            "reconnect_max_s: 2}", f"reconnect_max_s: 2, max_lines_per_s: {MAX_LINES_PER_S}}}"))
        expected = {}
        (tmp_path / "state").mkdir()
        for name, _kind in DEVICES:
            expected[f"c8ysim-{name}"] = queue_backlog(tmp_path / "state", name)
        total = sum(len(lines) for lines in expected.values())
        assert all(len(lines) == BACKLOG for lines in expected.values())

        tenant.limit_stream(LIMIT_LINES_PER_S, QUEUE_LINES)
        agent = agent_factory(config, status_port)
        started = time.monotonic()
        agent.start()

        def arrived() -> bool:
            return all(len(data_lines(tenant, c)) >= len(lines)
                       for c, lines in expected.items())

        wait_until(arrived, 180, interval=0.25, what="every backlog at the tenant")
        drain_s = time.monotonic() - started
        devices = agent.devices()
        stats = tenant.stream_stats()
        disconnects = sum(stats.overflows.values())
        rates = {name: d["drain_rate"] for name, d in devices.items()}
        sizes = "+".join(str(len(v)) for v in expected.values())
        print(f"\nthrottled drain: {total} lines ({sizes}) from 3 devices, "
              f"cumulocity.max_lines_per_s {MAX_LINES_PER_S}, "
              f"tenant limit {LIMIT_LINES_PER_S} lines/s with a {QUEUE_LINES}-line queue: "
              f"drained in {drain_s:.1f} s ({total / drain_s:.1f} lines/s), "
              f"{disconnects} disconnects {dict(stats.overflows)}, "
              f"{stats.dropped_publishes} queued publishes dropped, "
              f"max queue {stats.max_queued_lines} lines; drain rates now {rates}")

        assert_each_backlog_once_in_order(tenant, expected)
        assert disconnects <= 1, stats.overflows  # the latency showed the queue in time
        assert stats.max_queued_lines > 0  # the limit was reached
        assert drain_s < 3 * total / LIMIT_LINES_PER_S + 10
        assert "the tenant queues: PUBACK latency" in agent.log_text()
        assert all(d["rejected"] == 0 for d in devices.values())
        metrics = agent.get("/metrics").decode()
        assert all(f'c8ysim_drain_rate_lines_per_second{{device="{name}"}} ' in metrics
                   for name, _kind in DEVICES)
        assert agent.stop() == 0
        assert tenant.violations == [], tenant.violations
        assert tenant.internal_errors == [], tenant.internal_errors
