"""Every lifecycle decision about one instance, as a pure function:

    decide(life, event, facts, config) -> (next life, actions)

`Life` is the instance's lifecycle record (its `State`, its `Goal`, restart pacing, why it
last failed); an event is what happened (a request, or an observation of its process);
`Facts` are what the actor knows besides (leases in flight, waiting requests, the clock).
The actions say what to do, in order; `supervisor.actor` performs them and nothing else
decides. No I/O, no clock, no randomness here (the backoff jitter arrives as a sample), so
every edge is a row of a table test (tests/unit/test_decide.py), as in llama-swap's process
manager.

Each state change is an `Enter` action, checked against `supervisor.states.TRANSITIONS`
(an edge that is not there raises `InvalidTransition`: a bug, not a state).
"""

from __future__ import annotations

import msgspec

from supervisor.backoff import backoff_delay, within_budget
from supervisor.config import SupervisorConfig
from supervisor.health import Health
from supervisor.lifecycle import (
    Action,
    Admit,
    Ask,
    AwaitWorkers,
    Drain,
    DrainTimer,
    EndGeneration,
    Enter,
    Facts,
    FailWaiters,
    Forget,
    Freed,
    Grant,
    Halt,
    Kill,
    Life,
    Load,
    Loaded,
    LoadFailed,
    Measured,
    Probe,
    Queue,
    Reapply,
    Rearm,
    Refusal,
    Refuse,
    Released,
    Retry,
    Spawn,
    Stop,
    Stopped,
    Want,
    Watch,
)
from supervisor.messages import (
    BackoffElapsed,
    BecameReady,
    ChildExited,
    DrainExpired,
    HealthResult,
    ProbeResult,
    StartTimedOut,
    SuspectWedge,
    WorkersChecked,
)
from supervisor.states import DRAINING, LIVE, Goal, State, check_transition

S = State


# What a request hears when it cannot be served: one sentence about its model, never the
# model's log (which may name the host's files and settings: /api/models and /api/logs
# show it to admins).
HAS_FAILED = "has failed and is not restarted (see /api/models)"
CANNOT_START = "cannot start (see /api/models)"


class _Draft:
    """The next life, built up by one decision (mutable only inside `decide`)."""

    def __init__(self, life: Life, facts: Facts, config: SupervisorConfig) -> None:
        self.life = life
        self.facts = facts
        self.config = config
        self.actions: list[Action] = []

    @property
    def state(self) -> State:
        return self.life.state

    def go(self, new: State) -> None:
        check_transition(self.life.state, new)
        self.actions.append(Enter(self.life.state, new))
        self.life = msgspec.structs.replace(self.life, state=new)

    def set(self, **changes: object) -> None:
        self.life = msgspec.structs.replace(self.life, **changes)

    def emit(self, *actions: Action) -> None:
        self.actions.extend(actions)

    # The shared steps.
    def start(self) -> None:
        if self.facts.port_held:  # the retiring holder of our port stops first
            self.set(goal=Goal.RESTART)
            return
        self.go(S.STARTING)
        self.set(goal=Goal.SERVE, health_failures=0, failure_reason=None)
        self.emit(Spawn())

    def stop(self) -> None:
        if self.state in (S.STARTING, S.READY, S.UNHEALTHY):
            self.go(S.STOPPING)
            self.emit(Kill())
        elif self.state in (S.BACKOFF, S.FAILED):
            self.go(S.STOPPED)
            self.emit(EndGeneration())
            self.after_stop()
        elif self.state is S.STOPPED:
            self.after_stop()

    def after_stop(self) -> None:
        goal = self.life.goal
        self.set(goal=Goal.SERVE)
        if goal is Goal.RETIRE:
            self.emit(Forget(), FailWaiters(Refusal("llama-server was reconfigured", named=False)))
        elif self.facts.too_big:
            self.too_big(self.facts.too_big)
        elif goal is Goal.RESTART:
            self.start()
        elif not self.facts.waiters or self.facts.stopping_all:
            self.emit(FailWaiters(Refusal("llama-server was stopped", named=False)))
        else:
            self.emit(Want())  # requests came while it was stopping: load it again
        self.emit(Stopped())

    def too_big(self, reason: str) -> None:
        if self.state is not S.FAILED:
            self.go(S.FAILED)
        self.set(last_error=reason)
        self.emit(FailWaiters(Refusal(reason, None, named=False)))

    def crashed(self) -> None:
        """Restart with backoff, unless the restart budget is spent (FAILED). Requests
        waiting for it wait on, for its successor (bounded: `Records.expire_restart_waits`):
        a restart within the budget is a pause, not an error (issue 29)."""
        now, c = self.facts.now, self.config
        if not within_budget(
            self.life.restart_times, now, limit=c.restart_limit, window=c.restart_window
        ):
            self.go(S.FAILED)
            self.emit(FailWaiters(Refusal(HAS_FAILED, 30)), Freed())
            return
        attempt = self.life.attempt + 1
        delay = backoff_delay(
            attempt, initial=c.backoff_initial, maximum=c.backoff_max, sample=self.facts.jitter
        )
        self.set(
            attempt=attempt,
            restarts=self.life.restarts + 1,
            restart_times=(*self.life.restart_times, now)[-64:],
            retry_at=now + delay,
        )
        if self.state is not S.BACKOFF:
            self.go(S.BACKOFF)
        self.emit(Retry(delay))

    def unhealthy(self, reason: str) -> None:
        self.go(S.UNHEALTHY)
        goal = Goal.SERVE if self.life.goal is Goal.PROBE else self.life.goal
        self.set(failure_reason=reason, goal=goal)
        self.emit(Kill())

    def probe(self) -> None:
        if self.state is S.READY and self.life.goal is Goal.SERVE:
            self.set(goal=Goal.PROBE)
            self.emit(Probe())


def decide(
    life: Life, event: object, facts: Facts, config: SupervisorConfig
) -> tuple[Life, list[Action]]:
    """The next life of one instance after `event`, and what to do about it, in order."""
    d = _Draft(life, facts, config)
    if not _observe(d, event):
        _request(d, event)
    return d.life, d.actions


def _observe(d: _Draft, event: object) -> bool:
    """Observations of its process (already checked to be about the current one)."""
    match event:
        case BecameReady(rss_mb=rss_mb) if d.state is S.STARTING:
            d.go(S.READY)
            d.set(attempt=0)
            d.emit(Loaded(rss_mb), Grant(), Watch(), Freed())
        case StartTimedOut(reason=reason) if d.state is S.STARTING:
            d.set(failure_reason=reason)
            d.emit(Kill())
        case ChildExited(code=code):
            _exited(d, code)
        case HealthResult(health=health, rss_mb=rss_mb) if d.state is S.READY:
            _health(d, health, rss_mb)
        case ProbeResult(ok=ok) if d.state is S.READY:
            draining = d.life.goal in DRAINING
            if d.life.goal is Goal.PROBE:
                d.set(goal=Goal.SERVE)
            if ok:  # the failure that sent successors here was not the process's
                d.emit(Grant(successors_only=draining))
            else:
                d.unhealthy("a one-token completion probe failed (wedged)")
        case BackoffElapsed() if d.state is S.BACKOFF:
            d.stop() if d.life.goal in DRAINING else d.start()
        case WorkersChecked(missing=missing) if d.state is S.BACKOFF:
            _workers(d, missing)
        case (
            BecameReady() | StartTimedOut() | HealthResult() | ProbeResult() | BackoffElapsed()
            | WorkersChecked()
        ):  # fmt: skip
            pass  # news that came too late for the state it was about
        case _:
            return False
    return True


def _exited(d: _Draft, code: int) -> None:
    if d.state is S.STOPPING:
        d.go(S.STOPPED)
        d.after_stop()
        return
    if d.state not in (S.STARTING, S.READY, S.UNHEALTHY):
        return
    why = f"{d.life.failure_reason}; " if d.life.failure_reason else ""
    d.set(last_error=f"{why}exited with status {code}\n{d.facts.tail}".strip())
    if not d.facts.rpc:
        d.crashed()
        return
    # llama-server aborts when one of its RPC workers dies. Before the restart budget is
    # spent on that, find out: wait (in BACKOFF) for every worker to answer again.
    d.go(S.BACKOFF)
    d.set(retry_at=d.facts.now + d.config.backoff_max)
    d.emit(AwaitWorkers())


def _health(d: _Draft, health: Health, rss_mb: int | None) -> None:
    if rss_mb is not None:
        d.emit(Measured(rss_mb))
    if health is Health.OK:
        d.set(health_failures=0)
        return
    failures = d.life.health_failures + 1
    d.set(health_failures=failures)
    if failures >= d.config.health_failures:
        d.unhealthy(f"/health {health} {failures} times in a row")


def _workers(d: _Draft, missing: tuple[str, ...]) -> None:
    if missing:
        d.set(
            missing_workers=missing,
            last_error=(
                f"RPC worker {', '.join(missing)} does not answer; waiting for it (llama-server "
                "stops when a worker it uses is gone)"
            ),
        )
    elif d.life.missing_workers:  # a worker was gone and is back: not a crash of ours
        d.set(missing_workers=())
        d.start()
    else:
        d.crashed()  # every worker answered: the exit was llama-server's own


def _request(d: _Draft, event: object) -> None:
    f = d.facts
    match event:
        case Load() if d.state in (S.STOPPED, S.BACKOFF, S.FAILED):
            d.start()
        case LoadFailed(reason=reason) if d.state is S.STARTING:
            d.set(last_error=reason)
            d.go(S.FAILED)
            d.emit(FailWaiters(Refusal(CANNOT_START, 30)), Freed())
        case Stop():
            d.stop()
        case Drain(goal=goal):
            if d.life.goal is not Goal.RETIRE:  # an unload does not undo a retire
                d.set(goal=goal)
            d.stop() if f.in_flight == 0 else d.emit(DrainTimer())
        case DrainExpired() if d.life.goal in DRAINING:
            d.stop()
        case Released() if f.in_flight == 0:
            d.stop() if d.life.goal in DRAINING else d.emit(Freed())
        case Ask(replacing=replacing):
            _ask(d, replacing)
        case SuspectWedge():
            d.probe()
        case Rearm():
            _rearm(d)
        case Halt():
            d.set(goal=Goal.RETIRE if d.life.goal is Goal.RETIRE else Goal.SERVE)
            d.stop()
        case Reapply():
            _reapply(d)


def _ask(d: _Draft, replacing: int | None) -> None:
    f, state = d.facts, d.state
    if f.too_big:
        d.emit(Refuse(Refusal(f.too_big, None, named=False)))
        return
    if replacing is not None and (
        state in (S.BACKOFF, S.UNHEALTHY) or (state is S.READY and f.pid == replacing)
    ):
        d.emit(Queue(successor=True))
        d.probe()  # READY with the failed pid: is it really broken?
        return
    match state:
        case S.READY if d.life.goal not in DRAINING:
            d.emit(Admit())
        case S.READY | S.STARTING | S.STOPPING:
            d.emit(Queue())  # draining or stopping: loaded again after the stop
        case S.STOPPED:
            d.emit(Queue(), Want())
        case S.UNHEALTHY | S.BACKOFF:  # restarting within its budget: wait for it
            d.emit(Queue())
        case S.FAILED:
            d.emit(Refuse(Refusal(HAS_FAILED, 30)))


def _rearm(d: _Draft) -> None:
    d.set(restart_times=(), attempt=0)
    if d.life.goal is Goal.RETIRE:
        d.stop()  # on its way out of the config: a restart does not bring it back
    elif d.state in LIVE:
        d.set(goal=Goal.RESTART)
        d.stop()
    elif not d.facts.too_big:
        d.stop()  # BACKOFF / FAILED: to STOPPED, then loaded again
        d.emit(Want())


def _reapply(d: _Draft) -> None:
    if d.life.goal is Goal.RETIRE:  # wanted again before it stopped
        d.set(goal=Goal.SERVE)
    if d.facts.too_big:
        if d.state in LIVE:
            d.emit(FailWaiters(Refusal(d.facts.too_big, None, named=False)))
            d.stop()  # FAILED once it has stopped
        else:
            if d.state is not S.STOPPED and d.state is not S.FAILED:
                d.emit(EndGeneration())
            d.too_big(d.facts.too_big)
    elif d.state is S.FAILED:  # a config change re-arms it
        d.set(restart_times=(), attempt=0)
        d.stop()
