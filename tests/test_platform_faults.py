"""The fake tenant's platform behaviours of issue 15, driven by paho clients: lines it
acknowledges and then refuses on `s/e` (`reject_lines`), the tenant-wide stream limit with
its queue and the disconnects beyond it (`limit_stream`), and the operation lifecycle of
fragments other than c8y_Restart (501 before 502, per fragment).

(Not named test_fake_tenant*: the paho-2-only probe client would fail under make
test-paho16, which picks those up.)"""

from __future__ import annotations

import time

from test_fake_tenant import Probe, make, online, tenant, wait_until  # noqa: F401 (fixtures)


def applied_temperatures(tenant, client) -> list[str]:
    return [f[1] for f in tenant.lines(client) if f[0] == "211"]


# --- reject_lines -------------------------------------------------------------------------

def test_rejected_lines_are_acknowledged_then_refused_on_s_e(tenant, make):
    probe = online(make, "pv-1")
    tenant.reject_lines(lambda key, fields: fields[0] == "211" and fields[1] == "20", count=1)
    probe.publish_wait("211,20\n211,21\n211,20")  # one PUBACK for the whole publish
    assert probe.expect("s/e") == ("40,211,No static template for this message id", 0)
    assert tenant.rejected_lines("pv-1") == ["211,20"]  # count=1: the second 211,20 passes
    tenant.reject_lines(lambda key, fields: key == "pv-1" and fields[0] == "201",
                        "45,{template},Value is not a number")
    probe.publish_wait("201,t,,c8y_T,T,1,C")
    assert probe.expect("s/e") == ("45,201,Value is not a number", 0)
    assert tenant.rejected_lines("pv-1") == ["211,20", "201,t,,c8y_T,T,1,C"]
    assert tenant.measurements("pv-1")  # recorded as published all the same
    assert tenant.violations == []  # refusing is the platform's doing, not the device's
    tenant.stop_rejecting()
    probe.publish_wait("201,t,,c8y_T,T,2,C")
    assert probe.messages.empty()


def test_rejected_lines_are_not_applied(tenant, make):
    probe = online(make, "pv-1")
    tenant.reject_lines(lambda key, fields: fields[0] == "114")
    probe.publish_wait("114,c8y_Restart")
    assert probe.expect("s/e")[0] == "40,114,No static template for this message id"
    assert tenant.device("pv-1").supported_operations in (None, [], ())


# --- limit_stream -------------------------------------------------------------------------

def lines(n: int, start: int = 0) -> str:
    return "\n".join(f"211,{i}" for i in range(start, start + n))


def ack_after(probe, payload: str, timeout: float = 5.0) -> float:
    started = time.monotonic()
    mid = probe.publish(payload)
    assert wait_until(lambda: mid in probe.published, timeout), "no PUBACK"
    return time.monotonic() - started


def test_within_the_rate_at_once_over_it_queued_in_order(tenant, make):
    probe = online(make, "pv-1")
    tenant.limit_stream(10, queue_lines=30)
    assert ack_after(probe, lines(10, 0)) < 0.5  # the burst: one second's worth
    waited = ack_after(probe, lines(10, 10))  # queued until the bucket refills
    assert 0.6 < waited < 2.0, waited
    mids = [probe.publish(lines(5, start)) for start in (20, 25, 30)]
    assert wait_until(lambda: set(mids) <= probe.published, 5)
    assert applied_temperatures(tenant, "pv-1") == [str(i) for i in range(35)]
    stats = tenant.stream_stats()
    assert stats.processed_lines == 35 and stats.overflows == {}
    assert stats.queued_publishes >= 2 and stats.max_queued_lines <= 30
    assert probe.connected.is_set() and not probe.disconnected.is_set()
    assert tenant.violations == []


def test_overflow_disconnects_and_a_device_back_too_soon_is_disconnected_again(tenant, make):
    first = online(make, "pv-1")
    other = online(make, "hp-1")
    tenant.limit_stream(2, queue_lines=20)
    first.publish_wait(lines(2))  # the burst
    queued = first.publish(lines(10, 100))  # waits in the queue ...
    overflow = first.publish(lines(15, 200))  # ... and this does not fit beside it
    assert first.disconnected.wait(5), "not disconnected on overflow"
    time.sleep(0.5)
    assert overflow not in first.published and queued not in first.published
    assert applied_temperatures(tenant, "pv-1") == ["0", "1"]  # the queued one: dropped
    stats = tenant.stream_stats()
    assert stats.overflows == {"pv-1": 1} and stats.dropped_publishes == 1
    rejected = [r for r in tenant.records("pv-1") if r.kind == "publish" and not r.accepted]
    assert [r.detail for r in rejected] == ["rejected: stream queue full"]
    assert [r.kind for r in tenant.records("pv-1")][-1] == "drop"

    # another device keeps the tenant over its limit: pv-1 is back, and out on its first message
    other.publish_wait(lines(10, 300))  # a full bucket takes it, and is 8 lines in debt
    other.publish(lines(10, 400))
    other.publish(lines(10, 500))  # 20 lines queued: full for the next ~5 s
    assert wait_until(lambda: tenant.stream_stats().max_queued_lines == 20, 2)
    again = Probe(tenant.port, "pv-1")
    try:
        assert again.connect() == 0
        again.publish("100,pv-1,c8ysim_Test")
        assert again.disconnected.wait(5), "not disconnected on its first message"
        assert tenant.stream_stats().overflows == {"pv-1": 2}
    finally:
        again.close()
    tenant.limit_stream(None)  # lifted: what waits goes through at once
    assert wait_until(lambda: len(applied_temperatures(tenant, "hp-1")) == 30, 5)
    assert other.connected.is_set() and not other.disconnected.is_set()


def test_lifting_the_limit_releases_the_queue(tenant, make):
    probe = online(make, "pv-1")
    tenant.limit_stream(1, queue_lines=100)
    probe.publish_wait(lines(1))
    mid = probe.publish(lines(50, 1))  # would take ~50 s
    time.sleep(0.2)
    assert mid not in probe.published
    tenant.limit_stream(None)
    assert wait_until(lambda: mid in probe.published, 2)
    assert applied_temperatures(tenant, "pv-1") == [str(i) for i in range(51)]


# --- the operation lifecycle of any fragment ---------------------------------------------

def test_502_needs_the_501_of_its_own_fragment(tenant, make):
    probe = online(make, "pv-1")
    log = tenant.send_operation("pv-1", "522,pv-1,syslog")
    firmware = tenant.send_operation("pv-1", "515,pv-1,fw,1,u")
    assert (log.fragment, firmware.fragment) == ("c8y_LogfileRequest", "c8y_Firmware")
    probe.publish_wait("501,c8y_Firmware")
    probe.publish_wait("502,c8y_LogfileRequest,not supported")  # the wrong fragment
    probe.publish_wait("502,c8y_Firmware,not supported")
    assert [v.split(": ", 1)[1] for v in tenant.violations] == [
        "502,c8y_LogfileRequest without a preceding open 501,c8y_LogfileRequest"]
    assert [(op.status, op.failure_reason) for op in tenant.operations("pv-1")] == [
        ("PENDING", None), ("FAILED", "not supported")]
