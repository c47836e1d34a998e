"""The child state machine as a table, without forking: every transition, backoff bounds,
quick deaths to FATAL, exit code 78 to FATAL at once, and a reload that retries."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from c8ysim import backoff, exits
from c8ysim.states import (TABLE, Action, ChildState, Death, Event,
                          Policy, failures_in_a_row, next_state, quick_deaths)

S, E, A = ChildState, Event, Action
POLICY = Policy(base_s=1.0, cap_s=60.0, stable_run_s=60.0, quick_run_s=10.0,
                quick_window_s=120.0, max_quick_deaths=5)
NOW = 1000.0


class Top:
    """An rng that always draws the upper bound, so delays in the table are exact."""

    def uniform(self, low: float, high: float) -> float:
        return high


@pytest.mark.parametrize("state, event, expected, action", [
    (S.EXITED, E.START, S.STARTING, A.SPAWN),
    (S.BACKOFF, E.START, S.STARTING, A.SPAWN),
    (S.FATAL, E.START, S.FATAL, A.NONE),  # FATAL until the next reload
    (S.STARTING, E.BEAT, S.RUNNING, A.NONE),
    (S.RUNNING, E.BEAT, S.RUNNING, A.NONE),
    (S.STOPPING, E.BEAT, S.STOPPING, A.NONE),
    (S.STARTING, E.STALE, S.STOPPING, A.TERM),
    (S.RUNNING, E.STALE, S.STOPPING, A.TERM),
    (S.STOPPING, E.STALE, S.STOPPING, A.NONE),  # TERM already sent
    (S.STARTING, E.STOP, S.STOPPING, A.TERM),
    (S.RUNNING, E.STOP, S.STOPPING, A.TERM),
    (S.STOPPING, E.STOP, S.STOPPING, A.NONE),
    (S.BACKOFF, E.STOP, S.EXITED, A.NONE),
    (S.FATAL, E.STOP, S.EXITED, A.NONE),
    (S.EXITED, E.STOP, S.EXITED, A.NONE),
    (S.STOPPING, E.GRACE_OVER, S.STOPPING, A.KILL),
    (S.RUNNING, E.GRACE_OVER, S.RUNNING, A.NONE),
    (S.STOPPING, E.STOPPED, S.EXITED, A.NONE),
    (S.RUNNING, E.START, S.RUNNING, A.NONE),  # never two processes for one device
    (S.STARTING, E.START, S.STARTING, A.NONE),
    (S.BACKOFF, E.RELOAD, S.STARTING, A.SPAWN),
    (S.FATAL, E.RELOAD, S.STARTING, A.SPAWN),
    (S.RUNNING, E.RELOAD, S.RUNNING, A.NONE),
    (S.STOPPING, E.RELOAD, S.STOPPING, A.NONE),
    (S.EXITED, E.DIED, S.EXITED, A.NONE),  # no process: nothing can die
    (S.BACKOFF, E.DIED, S.BACKOFF, A.NONE),
])
def test_transition_table(state, event, expected, action):
    step = next_state(state, event, NOW, policy=POLICY, rng=Top())
    assert (step.state, step.action) == (expected, action)


def test_the_table_only_names_known_states_and_events():
    for (state, event), (new_state, action) in TABLE.items():
        assert {type(state), type(new_state), type(event), type(action)} == \
            {ChildState, Event, Action}
    assert {s.value for s in ChildState} == {"starting", "running", "backoff", "stopping",
                                            "exited", "fatal"}


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING, S.STOPPING])
def test_an_unasked_death_backs_off(state):
    step = next_state(state, E.DIED, NOW, code=1, ran_s=30.0, policy=POLICY, rng=Top())
    assert (step.state, step.action, step.delay_s) == (S.BACKOFF, A.WAIT, 1.0)
    assert step.history == (Death(NOW, 30.0, 1),)


@pytest.mark.parametrize("ran_s", [0.1, 30.0, 3600.0])
def test_exit_code_78_is_fatal_at_once(ran_s):
    step = next_state(S.RUNNING, E.DIED, NOW, code=exits.CONFIG, ran_s=ran_s, policy=POLICY)
    assert (step.state, step.action) == (S.FATAL, A.NONE)
    assert "78" in step.reason


def test_the_unit_never_restarts_on_the_config_exit_code():
    unit = (Path(__file__).resolve().parents[1] / "systemd/c8ysim.service").read_text()
    assert f"RestartPreventExitStatus={exits.CONFIG}\n" in unit


def test_killed_by_a_signal_is_an_ordinary_death():
    step = next_state(S.STOPPING, E.DIED, NOW, code=-9, ran_s=40.0, policy=POLICY, rng=Top())
    assert step.state is S.BACKOFF


def deaths_every(seconds: float, count: int, ran_s: float) -> tuple[Death, ...]:
    return tuple(Death(NOW - seconds * (count - i), ran_s, 1) for i in range(count))


def test_the_fifth_quick_death_in_the_window_is_fatal():
    history = deaths_every(5.0, 4, ran_s=0.5)
    step = next_state(S.STARTING, E.DIED, NOW, history, code=1, ran_s=0.5, policy=POLICY)
    assert step.state is S.FATAL
    assert "5 deaths within 120 s" in step.reason
    assert len(step.history) == 5


def test_four_quick_deaths_still_back_off():
    history = deaths_every(5.0, 3, ran_s=0.5)
    step = next_state(S.STARTING, E.DIED, NOW, history, code=1, ran_s=0.5, policy=POLICY,
                      rng=Top())
    assert (step.state, step.delay_s) == (S.BACKOFF, 8.0)  # fourth failure in a row: 2**3


def test_quick_deaths_outside_the_window_do_not_count():
    history = deaths_every(60.0, 4, ran_s=0.5)  # 240, 180, 120, 60 s ago
    assert quick_deaths(history, NOW, POLICY) == 2
    step = next_state(S.STARTING, E.DIED, NOW, history, code=1, ran_s=0.5, policy=POLICY)
    assert step.state is S.BACKOFF


def test_slow_deaths_never_become_fatal_but_reach_the_cap():
    history = deaths_every(40.0, 20, ran_s=30.0)
    step = next_state(S.RUNNING, E.DIED, NOW, history, code=1, ran_s=30.0, policy=POLICY,
                      rng=Top())
    assert (step.state, step.delay_s) == (S.BACKOFF, 60.0)


def test_a_stable_run_starts_the_backoff_afresh():
    history = deaths_every(5.0, 3, ran_s=1.0) + (Death(NOW - 1, 600.0, 1),)
    assert failures_in_a_row(history, POLICY) == 1
    assert failures_in_a_row(history + (Death(NOW, 1.0, 1),), POLICY) == 2
    step = next_state(S.RUNNING, E.DIED, NOW, history, code=1, ran_s=3600.0, policy=POLICY,
                      rng=Top())
    assert step.delay_s == 1.0


def test_the_history_stays_bounded():
    history = deaths_every(100.0, 200, ran_s=30.0)
    step = next_state(S.RUNNING, E.DIED, NOW, history, code=1, ran_s=30.0, policy=POLICY)
    assert len(step.history) <= 32 and step.history[-1].at == NOW


def test_a_reload_forgets_deaths_and_retries_fatal():
    history = deaths_every(5.0, 5, ran_s=0.5)
    step = next_state(S.FATAL, E.RELOAD, NOW, history, policy=POLICY)
    assert (step.state, step.action, step.history) == (S.STARTING, A.SPAWN, ())
    assert next_state(S.RUNNING, E.RELOAD, NOW, history).history == ()


def test_other_events_keep_the_history():
    history = deaths_every(5.0, 2, ran_s=0.5)
    for event in (E.START, E.BEAT, E.STALE, E.STOP, E.GRACE_OVER, E.STOPPED):
        assert next_state(S.RUNNING, event, NOW, history).history == history


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_delays_are_jittered_within_half_and_full_ceiling(failures):
    rng = random.Random(failures)
    ceiling = min(60.0, 2.0 ** (failures - 1))
    for _ in range(200):
        delay = backoff.equal_jitter(failures, 1.0, 60.0, rng)
        assert ceiling / 2 <= delay <= ceiling


def test_jitter_spreads_restarts():
    rng = random.Random(7)
    delays = {round(backoff.equal_jitter(6, 1.0, 60.0, rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_a_restart_operation_exit_respawns_at_once_and_is_no_death():
    history = (Death(0.0, 1.0, 1),)
    step = next_state(ChildState.RUNNING, Event.DIED, 5.0, history, code=exits.RESTART, ran_s=3.0)
    assert (step.state, step.action) == (ChildState.STARTING, Action.SPAWN)
    assert step.history == history
