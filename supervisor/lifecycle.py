"""The vocabulary of `supervisor.decide`: what it reads (`Life`, one instance's lifecycle
record, and `Facts`, what the actor knows besides), the events it takes besides the
observations in `supervisor.messages`, and the actions it returns for the actor to perform.
All frozen, all compared by value: a table test writes them out as they are."""

from __future__ import annotations

import msgspec

from supervisor.states import Goal, State

S = State


class Life(msgspec.Struct, frozen=True, kw_only=True):
    state: State = S.STOPPED
    goal: Goal = Goal.SERVE
    attempt: int = 0  # restarts since the last READY: the backoff's exponent
    restarts: int = 0
    restart_times: tuple[float, ...] = ()  # the restart budget's window
    health_failures: int = 0
    last_error: str | None = None
    failure_reason: str | None = None  # why we are killing it, for last_error
    retry_at: float = 0.0
    missing_workers: tuple[str, ...] = ()  # RPC workers it waits for (in BACKOFF)


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    now: float = 0.0
    in_flight: int = 0
    waiters: bool = False  # requests wait for it to load
    rpc: bool = False  # its layers go to RPC workers
    too_big: str | None = None  # why it can never fit the memory budget
    pid: int | None = None
    port_held: bool = False  # another record's process still holds its port
    stopping_all: bool = False
    tail: str = ""  # the exited process's last output
    jitter: float = 0.0  # a uniform sample in [0, 1) for the backoff


# Events (besides the observations in supervisor.messages).
class Event(msgspec.Struct, frozen=True):
    pass


class Load(Event, frozen=True):
    """The pool found room (or a restart is due): start it."""


class LoadFailed(Event, frozen=True):
    reason: str  # it cannot start at all: port held, binary missing


class Stop(Event, frozen=True):
    """Stop on purpose: evicted, idle, drained, or part of a restart."""


class Drain(Event, frozen=True):
    goal: Goal  # UNLOAD or RETIRE


class Rearm(Event, frozen=True):
    """An explicit restart: a fresh restart budget, and a new process."""


class Halt(Event, frozen=True):
    """stop_all: stop, and start nothing again."""


class Reapply(Event, frozen=True):
    """A config applied that still wants it (`Facts.too_big` under the new policy)."""


class Ask(Event, frozen=True):
    replacing: int | None = None  # the pid the caller saw fail


class Released(Event, frozen=True):
    """A lease ended (`Facts.in_flight` already counts it out)."""


# Actions.
class Action(msgspec.Struct, frozen=True):
    pass


class Enter(Action, frozen=True):
    old: State
    new: State


class Refusal(msgspec.Struct, frozen=True):
    """An error for a request, in one sentence: BackendUnavailable with `what` said of the
    model ("llama-server for NAME has failed ...") when `named`, else as it is; or
    ModelExceedsBudget when `retry_after` is None. Never the model's log."""

    what: str
    retry_after: float | None = 1.0
    named: bool = True


class Spawn(Action, frozen=True):
    pass


class Kill(Action, frozen=True):
    """Stop its process; the exit decides what follows."""


class Watch(Action, frozen=True):
    """Health checks, until the process is gone."""


class Probe(Action, frozen=True):
    pass


class Retry(Action, frozen=True):
    delay: float  # BackoffElapsed after this long


class AwaitWorkers(Action, frozen=True):
    pass


class EndGeneration(Action, frozen=True):
    """Its helper tasks (a backoff timer, a worker check) stop and their news is dropped."""


class Loaded(Action, frozen=True):
    rss_mb: int | None


class Measured(Action, frozen=True):
    rss_mb: int


class Admit(Action, frozen=True):
    """Grant the asking request."""


class Queue(Action, frozen=True):
    successor: bool = False  # waits through a restart, not only a load


class Refuse(Action, frozen=True):
    refusal: Refusal


class Grant(Action, frozen=True):
    """Grant every waiting request (only those waiting through a restart if draining)."""

    successors_only: bool = False


class FailWaiters(Action, frozen=True):
    refusal: Refusal


class Want(Action, frozen=True):
    """Wait in the pool's queue for memory."""


class Freed(Action, frozen=True):
    """Memory may have been freed: try the loads waiting for it."""


class DrainTimer(Action, frozen=True):
    pass


class Forget(Action, frozen=True):
    pass


class Stopped(Action, frozen=True):
    """Its process is gone: answer unloads, start what waited for its port or memory."""
