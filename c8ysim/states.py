"""The child state machine: one Enum and one pure transition function (no fork, no clock).

A device's process is STARTING from fork until its first heartbeat, RUNNING while it beats,
STOPPING between TERM and its exit, BACKOFF while it waits to be restarted after a death,
EXITED once it is gone on purpose, and FATAL when restarting cannot help: exit code 78
(`exits.CONFIG`, bad configuration or credentials) or too many quick deaths within a window.
FATAL lasts until the next reload.

`next_state` decides; the supervisor feeds it events and carries out the returned action.
It reads the time only as the `now` it is given and draws jitter from the `rng` it is given,
so every row of the table can be tested without forking.
"""

from __future__ import annotations

import random
from enum import Enum
from typing import NamedTuple

from c8ysim import backoff, exits

RESTART_BASE_S = 1.0  # first restart delay ceiling; doubles with each failure in a row
RESTART_CAP_S = 60.0  # longest restart delay
STABLE_RUN_S = 60.0  # a process that ran this long starts the backoff afresh when it dies
QUICK_RUN_S = 10.0  # a process that died sooner than this after its start died "quickly"
QUICK_DEATH_WINDOW_S = 120.0  # quick deaths counted within this window ...
MAX_QUICK_DEATHS = 5  # ... this many of them make the child FATAL
MAX_DEATHS_KEPT = 32  # enough to see past the cap: 2**6 s already exceeds RESTART_CAP_S


class ChildState(Enum):
    """Values are what the status page and `Supervisor.status()` show."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FATAL = "fatal"


class Event(Enum):
    START = "start"  # the supervisor wants the process (new device, backoff over, respawn)
    BEAT = "beat"  # a heartbeat arrived
    STALE = "stale"  # no heartbeat for the heartbeat timeout
    STOP = "stop"  # the supervisor wants the process gone (shutdown, removed, changed)
    GRACE_OVER = "grace_over"  # TERM was sent and the grace period passed
    DIED = "died"  # the process exited unasked (needs `code` and `ran_s`)
    STOPPED = "stopped"  # the process exited after STOP
    RELOAD = "reload"  # the configuration was reloaded: forget deaths, retry the idle


class Action(Enum):
    NONE = "none"
    SPAWN = "spawn"  # fork the process now
    TERM = "term"  # send SIGTERM, start the grace period
    KILL = "kill"  # send SIGKILL
    WAIT = "wait"  # send START after `delay_s`


class Death(NamedTuple):
    """One unasked exit: when (monotonic s), after how long a run, with which exit code."""

    at: float
    ran_s: float
    code: int


class Policy(NamedTuple):
    """When to restart and when to give up; the defaults suit production."""

    base_s: float = RESTART_BASE_S
    cap_s: float = RESTART_CAP_S
    stable_run_s: float = STABLE_RUN_S
    quick_run_s: float = QUICK_RUN_S
    quick_window_s: float = QUICK_DEATH_WINDOW_S
    max_quick_deaths: int = MAX_QUICK_DEATHS


class Step(NamedTuple):
    """The outcome of one event: the new state, what to do, and the deaths to remember."""

    state: ChildState
    action: Action = Action.NONE
    delay_s: float = 0.0
    history: tuple[Death, ...] = ()
    reason: str = ""


S, E, A = ChildState, Event, Action
LIVE = frozenset({S.STARTING, S.RUNNING, S.STOPPING})  # states that have a process
IDLE = frozenset({S.BACKOFF, S.FATAL})  # states a reload retries at once

TABLE: dict[tuple[ChildState, Event], tuple[ChildState, Action]] = {
    (S.EXITED, E.START): (S.STARTING, A.SPAWN),
    (S.BACKOFF, E.START): (S.STARTING, A.SPAWN),
    (S.STARTING, E.BEAT): (S.RUNNING, A.NONE),
    (S.STARTING, E.STALE): (S.STOPPING, A.TERM),
    (S.RUNNING, E.STALE): (S.STOPPING, A.TERM),
    (S.STARTING, E.STOP): (S.STOPPING, A.TERM),
    (S.RUNNING, E.STOP): (S.STOPPING, A.TERM),
    (S.BACKOFF, E.STOP): (S.EXITED, A.NONE),
    (S.FATAL, E.STOP): (S.EXITED, A.NONE),
    (S.STOPPING, E.GRACE_OVER): (S.STOPPING, A.KILL),
    (S.STOPPING, E.STOPPED): (S.EXITED, A.NONE),
}
"""Every (state, event) not listed here and not DIED/RELOAD leaves the state as it is."""


def next_state(state: ChildState, event: Event, now: float, history: tuple[Death, ...] = (),
               *, code: int = 0, ran_s: float = 0.0, policy: Policy = Policy(),
               rng: random.Random | None = None) -> Step:
    """The transition for `event` in `state` at monotonic time `now`.

    `history` is the child's recent deaths (as returned in the previous Step); `code` and
    `ran_s` describe the exit for DIED; `rng` draws the backoff jitter.
    """
    if event is E.DIED:
        if state not in LIVE:
            return Step(state, history=history)
        return _after_death(now, history, code, ran_s, policy, rng or random.Random())
    if event is E.RELOAD:
        return Step(S.STARTING, A.SPAWN) if state in IDLE else Step(state)
    new_state, action = TABLE.get((state, event), (state, A.NONE))
    return Step(new_state, action, history=history)


def _after_death(now: float, history: tuple[Death, ...], code: int, ran_s: float,
                 policy: Policy, rng: random.Random) -> Step:
    if code == exits.RESTART:  # asked for by an operation: respawn now, not a failure
        return Step(S.STARTING, A.SPAWN, history=history, reason="restart operation")
    history = (history + (Death(now, ran_s, code),))[-MAX_DEATHS_KEPT:]
    if code == exits.CONFIG:
        return Step(S.FATAL, history=history,
                    reason="exit code 78 (configuration): not retried until reload")
    quick = quick_deaths(history, now, policy)
    if quick >= policy.max_quick_deaths:
        return Step(S.FATAL, history=history,
                    reason=f"{quick} deaths within {policy.quick_window_s:g} s, each less "
                           f"than {policy.quick_run_s:g} s after its start: not retried "
                           "until reload")
    delay = backoff.equal_jitter(failures_in_a_row(history, policy), policy.base_s,
                                 policy.cap_s, rng)
    return Step(S.BACKOFF, A.WAIT, delay, history)


def quick_deaths(history: tuple[Death, ...], now: float, policy: Policy) -> int:
    """Deaths within the window that came soon after their start."""
    return sum(1 for d in history
               if d.ran_s < policy.quick_run_s and now - d.at <= policy.quick_window_s)


def failures_in_a_row(history: tuple[Death, ...], policy: Policy) -> int:
    """The backoff exponent: deaths since (and including) the last death of a stable run."""
    count = 0
    for death in reversed(history):
        count += 1
        if death.ran_s >= policy.stable_run_s:
            break
    return max(count, 1)
