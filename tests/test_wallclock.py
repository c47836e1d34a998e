"""c8ysim.wallclock: a step of the wall clock is reported once, slewing never."""

from __future__ import annotations

from c8ysim import wallclock


class Clocks:
    def __init__(self):
        self.wall, self.monotonic = 1_800_000_000.0, 500.0

    def advance(self, seconds: float, wall_extra: float = 0.0) -> None:
        self.monotonic += seconds
        self.wall += seconds + wall_extra


def watch(clocks: Clocks) -> wallclock.StepWatch:
    return wallclock.StepWatch(lambda: clocks.wall, lambda: clocks.monotonic)


def test_time_passing_is_no_step():
    clocks = Clocks()
    w = watch(clocks)
    for _ in range(100):
        clocks.advance(0.5)
        assert w.check() == 0.0


def test_slewing_is_no_step_even_when_it_adds_up():
    clocks = Clocks()
    w = watch(clocks)
    for _ in range(10_000):  # 500 ppm, the most NTP slews: 2.5 s over 5 000 s of checks
        clocks.advance(0.5, wall_extra=0.5 * 500e-6)
        assert w.check() == 0.0


def test_a_step_is_reported_once_with_its_sign_and_size():
    clocks = Clocks()
    w = watch(clocks)
    clocks.advance(0.5, wall_extra=3600.0)
    assert w.check() == 3600.0
    clocks.advance(0.5)
    assert w.check() == 0.0
    clocks.advance(0.5, wall_extra=-7200.0)
    assert w.check() == -7200.0
    assert w.check() == 0.0


def test_the_journal_line_says_what_happens_to_the_readings():
    assert "forward by 3600.0 s" in wallclock.describe(3600.0)
    assert "skipped span" in wallclock.describe(3600.0)
    assert "back by 3600.0 s" in wallclock.describe(-3600.0)
    assert "registers hold" in wallclock.describe(-3600.0)
