"""The lifecycle of one managed llama-server, as data: states, the edges allowed between them,
and the one sub-state (`Goal`) that says what the actor means to do with it next.

- STOPPED -> STARTING: a request needs it, a config applies it, or an explicit restart.
  STOPPED -> FAILED: the model can never fit the memory budget (it is never started).
- STARTING -> READY when `GET /health` answers 200; -> BACKOFF when it exits or loads with
  no progress; -> FAILED when it cannot start at all (port held, binary missing).
- READY -> UNHEALTHY after N failed health checks or a failed wedge probe; the process is
  then killed, and its exit moves it to BACKOFF. READY -> BACKOFF when it exits by itself.
  STARTING, READY and UNHEALTHY go to FAILED instead when the exit finds the restart
  budget spent.
- BACKOFF -> STARTING when the delay has passed; -> FAILED when the restart budget is spent
  (or the model no longer fits the budget).
- FAILED is left by an explicit restart or a config change (STARTING), or a stop.
- STARTING, READY and UNHEALTHY go to STOPPING when stopped on purpose (stop, reconfigure,
  cli mode, idle unload), then STOPPED when the process has exited; BACKOFF and FAILED, which
  have no process, go straight to STOPPED.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FAILED = "failed"


class Goal(StrEnum):
    """What happens to an instance next, beside where it is (`State`). One value at a time:
    these were five booleans (`probing`, `draining`, `retiring`, `start_after_stop`,
    `too_big`) that could contradict each other and the state."""

    SERVE = "serve"  # the default: serve, load when a request wants it
    PROBE = "probe"  # READY; a one-token completion decides: serve on, or UNHEALTHY
    UNLOAD = "unload"  # finish the leases in flight (bounded), stop, stay stopped
    RETIRE = "retire"  # the same, then forget the record: its spec left the config
    RESTART = "restart"  # stop (or wait for another record to free the port), then start


# Goals under which no new lease is granted: the process is on its way out.
DRAINING = frozenset({Goal.UNLOAD, Goal.RETIRE})

_S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    _S.STOPPED: frozenset({_S.STARTING, _S.FAILED}),
    _S.STARTING: frozenset({_S.READY, _S.BACKOFF, _S.FAILED, _S.STOPPING}),
    _S.READY: frozenset({_S.UNHEALTHY, _S.BACKOFF, _S.FAILED, _S.STOPPING}),
    _S.UNHEALTHY: frozenset({_S.BACKOFF, _S.FAILED, _S.STOPPING}),
    _S.BACKOFF: frozenset({_S.STARTING, _S.FAILED, _S.STOPPED}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.FAILED: frozenset({_S.STARTING, _S.STOPPED}),
}

# States in which a process of ours may be running.
LIVE = frozenset({_S.STARTING, _S.READY, _S.UNHEALTHY, _S.STOPPING})


class InvalidTransition(RuntimeError):
    pass


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"{old} -> {new} is not an allowed transition")


class StateEvent(msgspec.Struct, frozen=True):
    """One transition, as `Supervisor.events` records it."""

    port: int
    old: State
    new: State
    at: float
    name: str = ""
