"""`supervisor.decide`, edge by edge: one row per (state, goal, event, facts), with the next
state and goal and the exact actions, as llama-swap tests its process manager. No process,
no clock: the facts say what the actor would know."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from supervisor.command import ServerSpec
from supervisor.config import SupervisorConfig
from supervisor.decide import CANNOT_START, HAS_FAILED, decide
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
    Generation,
    HealthResult,
    ProbeResult,
    StartTimedOut,
    SuspectWedge,
    WorkersChecked,
)
from supervisor.states import Goal, InvalidTransition, State

S, G = State, Goal
SPEC = ServerSpec(model="/m.gguf", ctx_size=512, batch_size=64, ubatch_size=32)
GEN = Generation(1)
NOW = 1000.0
CONFIG = SupervisorConfig(
    binary="llama-server", state_dir="/tmp/x", restart_limit=2, restart_window=60,
    backoff_initial=1.0, backoff_max=10.0, health_failures=2,
)  # fmt: skip
TOO_BIG = "model m needs ~9 MB"
STOPPED_ERR = FailWaiters(Refusal("llama-server was stopped", named=False))
RECONFIGURED = FailWaiters(Refusal("llama-server was reconfigured", named=False))
BIG = FailWaiters(Refusal(TOO_BIG, None, named=False))
SPENT = (NOW - 2, NOW - 1)  # two restarts within the window: the budget of 2 is spent


def E(old: str, new: str) -> Enter:
    return Enter(State(old), State(new))


SPAWN, KILL, WATCH, PROBE, FREED, WANT = Spawn(), Kill(), Watch(), Probe(), Freed(), Want()
GRANT, ADMIT, QUEUE, END, FORGET = Grant(), Admit(), Queue(), EndGeneration(), Forget()
STOPPED_, DRAIN_TIMER, AWAIT_WORKERS = Stopped(), DrainTimer(), AwaitWorkers()
TOO_BIG_R = Refusal(TOO_BIG, None, named=False)
SUCCESSOR = Queue(successor=True)
FAILED_FOR_GOOD = FailWaiters(Refusal(HAS_FAILED, 30))


def row(
    name: str,
    before: str,
    event: object,
    after: str,
    *actions: Action,
    life: dict[str, Any] | None = None,
    **facts: Any,
) -> Any:
    """One edge: `before` and `after` are "state" or "state/goal" (the goal SERVE unsaid)."""
    state, _, goal = before.partition("/")
    start = Life(state=State(state), goal=Goal(goal or "serve"), **(life or {}))
    return pytest.param(start, event, Facts(now=NOW, **facts), after, list(actions), id=name)


# fmt: off
ROWS = [
    # Starting.
    row("stopped load spawns", "stopped", Load(), "starting", E("stopped", "starting"), SPAWN),
    row("stopped load waits for its port", "stopped", Load(), "stopped/restart", port_held=True),
    row("ready load is ignored", "ready", Load(), "ready"),
    row("failed load spawns", "failed", Load(), "starting", E("failed", "starting"), SPAWN),
    row("load failed is FAILED", "starting", LoadFailed("port held"), "failed",
        E("starting", "failed"), FailWaiters(Refusal(CANNOT_START, 30)), FREED),
    row("load failed late is ignored", "stopping", LoadFailed("x"), "stopping"),
    row("ready grants and watches", "starting", BecameReady(SPEC, GEN, 120), "ready",
        E("starting", "ready"), Loaded(120), GRANT, WATCH, FREED, life={"attempt": 3}),
    row("ready news when stopping is dropped", "stopping", BecameReady(SPEC, GEN), "stopping"),
    row("a silent start is killed", "starting", StartTimedOut(SPEC, GEN, "silent"), "starting",
        KILL),
    row("a timeout when ready is dropped", "ready", StartTimedOut(SPEC, GEN, "x"), "ready"),
    # Exits.
    row("a loading crash backs off", "starting", ChildExited(SPEC, GEN, 1), "backoff",
        E("starting", "backoff"), Retry(1.0)),
    row("a ready crash backs off", "ready", ChildExited(SPEC, GEN, -9), "backoff",
        E("ready", "backoff"), Retry(4.0), life={"attempt": 2}),
    row("jitter spreads the delay", "ready", ChildExited(SPEC, GEN, 1), "backoff",
        E("ready", "backoff"), Retry(1.125), jitter=0.5),
    row("an unhealthy exit backs off", "unhealthy", ChildExited(SPEC, GEN, -15), "backoff",
        E("unhealthy", "backoff"), Retry(1.0)),
    row("a crash past the budget is FAILED", "ready", ChildExited(SPEC, GEN, 1), "failed",
        E("ready", "failed"), FAILED_FOR_GOOD, FREED, life={"restart_times": SPENT}),
    row("an unhealthy kill past the budget is FAILED", "unhealthy", ChildExited(SPEC, GEN, -9),
        "failed", E("unhealthy", "failed"), FAILED_FOR_GOOD, FREED, life={"restart_times": SPENT}),
    row("an rpc exit waits for its workers", "ready", ChildExited(SPEC, GEN, 134), "backoff",
        E("ready", "backoff"), AWAIT_WORKERS, rpc=True),
    row("a stop ends in STOPPED", "stopping", ChildExited(SPEC, GEN, 0), "stopped",
        E("stopping", "stopped"), STOPPED_ERR, STOPPED_),
    row("a stop with waiters loads again", "stopping", ChildExited(SPEC, GEN, 0), "stopped",
        E("stopping", "stopped"), WANT, STOPPED_, waiters=True),
    row("stop_all fails the waiters", "stopping", ChildExited(SPEC, GEN, 0), "stopped",
        E("stopping", "stopped"), STOPPED_ERR, STOPPED_, waiters=True, stopping_all=True),
    row("a retired stop is forgotten", "stopping/retire", ChildExited(SPEC, GEN, 0), "stopped",
        E("stopping", "stopped"), FORGET, RECONFIGURED, STOPPED_),
    row("a restart starts after the stop", "stopping/restart", ChildExited(SPEC, GEN, 0),
        "starting", E("stopping", "stopped"), E("stopped", "starting"), SPAWN, STOPPED_),
    row("a restart waits for a held port", "stopping/restart", ChildExited(SPEC, GEN, 0),
        "stopped/restart", E("stopping", "stopped"), STOPPED_, port_held=True),
    row("an unload stays stopped", "stopping/unload", ChildExited(SPEC, GEN, 0), "stopped",
        E("stopping", "stopped"), WANT, STOPPED_, waiters=True),
    row("too big is FAILED once stopped", "stopping", ChildExited(SPEC, GEN, 0), "failed",
        E("stopping", "stopped"), E("stopped", "failed"), BIG, STOPPED_, too_big=TOO_BIG),
    row("an exit news in backoff is dropped", "backoff", ChildExited(SPEC, GEN, 0), "backoff"),
    # Health checks.
    row("a healthy check measures", "ready", HealthResult(SPEC, GEN, Health.OK, 90), "ready",
        Measured(90), life={"health_failures": 1}),
    row("one failed check counts", "ready", HealthResult(SPEC, GEN, Health.ERROR), "ready"),
    row("the last failed check kills", "ready", HealthResult(SPEC, GEN, Health.UNREACHABLE),
        "unhealthy", E("ready", "unhealthy"), KILL, life={"health_failures": 1}),
    row("a check while starting is dropped", "starting", HealthResult(SPEC, GEN, Health.ERROR),
        "starting"),
    # Wedge probes.
    row("a suspicion probes", "ready", SuspectWedge(SPEC), "ready/probe", PROBE),
    row("one probe at a time", "ready/probe", SuspectWedge(SPEC), "ready/probe"),
    row("no probe while draining", "ready/unload", SuspectWedge(SPEC), "ready/unload"),
    row("no probe unless ready", "starting", SuspectWedge(SPEC), "starting"),
    row("a passed probe grants", "ready/probe", ProbeResult(SPEC, GEN, True), "ready", GRANT),
    row("a failed probe kills", "ready/probe", ProbeResult(SPEC, GEN, False), "unhealthy",
        E("ready", "unhealthy"), KILL),
    row("a passed probe while draining grants successors", "ready/unload",
        ProbeResult(SPEC, GEN, True), "ready/unload", Grant(successors_only=True)),
    row("a failed probe while retiring kills", "ready/retire", ProbeResult(SPEC, GEN, False),
        "unhealthy/retire", E("ready", "unhealthy"), KILL),
    # Backoff and RPC workers.
    row("backoff over starts", "backoff", BackoffElapsed(SPEC, GEN), "starting",
        E("backoff", "starting"), SPAWN),
    row("backoff over while retiring stops", "backoff/retire", BackoffElapsed(SPEC, GEN), "stopped",
        E("backoff", "stopped"), END, FORGET, RECONFIGURED, STOPPED_),
    row("a missing worker is named", "backoff", WorkersChecked(SPEC, GEN, ("h:1",)), "backoff"),
    row("a worker back starts it", "backoff", WorkersChecked(SPEC, GEN, ()), "starting",
        E("backoff", "starting"), SPAWN, life={"missing_workers": ("h:1",)}),
    row("all workers up: a crash", "backoff", WorkersChecked(SPEC, GEN, ()), "backoff",
        Retry(1.0)),
    row("all workers up past the budget", "backoff", WorkersChecked(SPEC, GEN, ()), "failed",
        E("backoff", "failed"), FAILED_FOR_GOOD, FREED, life={"restart_times": SPENT}),
    # Stops on purpose.
    row("ready stop", "ready", Stop(), "stopping", E("ready", "stopping"), KILL),
    row("starting stop", "starting", Stop(), "stopping", E("starting", "stopping"), KILL),
    row("failed stop", "failed", Stop(), "stopped", E("failed", "stopped"), END, STOPPED_ERR,
        STOPPED_),
    row("stopping stop", "stopping", Stop(), "stopping"),
    row("stopped stop", "stopped", Stop(), "stopped", STOPPED_ERR, STOPPED_),
    # Draining.
    row("an unload waits for leases", "ready", Drain(G.UNLOAD), "ready/unload", DRAIN_TIMER,
        in_flight=2),
    row("an idle retire stops", "ready", Drain(G.RETIRE), "stopping/retire", E("ready", "stopping"),
        KILL),
    row("a stopped retire is forgotten", "stopped", Drain(G.RETIRE), "stopped", FORGET,
        RECONFIGURED, STOPPED_),
    row("an unload keeps a retire", "ready/retire", Drain(G.UNLOAD), "ready/retire", DRAIN_TIMER,
        in_flight=1),
    row("the drain bound stops", "ready/unload", DrainExpired(SPEC), "stopping/unload",
        E("ready", "stopping"), KILL, in_flight=1),
    row("a stale drain bound is ignored", "ready", DrainExpired(SPEC), "ready"),
    row("the last lease of a drain stops", "ready/unload", Released(), "stopping/unload",
        E("ready", "stopping"), KILL),
    row("the last lease frees memory", "ready", Released(), "ready", FREED),
    row("a lease of several", "ready", Released(), "ready", in_flight=1),
    # Leases.
    row("ready admits", "ready", Ask(), "ready", ADMIT),
    row("probing admits", "ready/probe", Ask(), "ready/probe", ADMIT),
    row("draining queues", "ready/unload", Ask(), "ready/unload", QUEUE),
    row("starting queues", "starting", Ask(), "starting", QUEUE),
    row("stopping queues", "stopping", Ask(), "stopping", QUEUE),
    row("stopped queues and wants", "stopped", Ask(), "stopped", QUEUE, WANT),
    # A restart within the budget is waited for (issue 29: it was a 503 at once).
    row("unhealthy queues", "unhealthy", Ask(), "unhealthy", QUEUE),
    row("backoff queues", "backoff", Ask(), "backoff", QUEUE, life={"retry_at": NOW + 2}),
    row("failed refuses", "failed", Ask(), "failed", Refuse(Refusal(HAS_FAILED, 30))),
    row("too big refuses for good", "failed", Ask(), "failed", Refuse(TOO_BIG_R), too_big=TOO_BIG),
    row("replacing the ready pid probes", "ready", Ask(replacing=7), "ready/probe",
        SUCCESSOR, PROBE, pid=7),
    row("replacing another pid admits", "ready", Ask(replacing=7), "ready", ADMIT, pid=8),
    row("replacing in backoff waits", "backoff", Ask(replacing=7), "backoff", SUCCESSOR),
    row("replacing while unhealthy waits", "unhealthy", Ask(replacing=7), "unhealthy", SUCCESSOR),
    # Restarts, stop_all, configs.
    row("a restart of a live one", "ready", Rearm(), "stopping/restart", E("ready", "stopping"),
        KILL, life={"restart_times": SPENT, "attempt": 2}),
    row("a restart of a failed one", "failed", Rearm(), "stopped", E("failed", "stopped"), END,
        STOPPED_ERR, STOPPED_, WANT, life={"restart_times": SPENT}),
    row("a restart of a stopped one", "stopped", Rearm(), "stopped", STOPPED_ERR, STOPPED_, WANT),
    row("a restart of a backoff one keeps its waiters", "backoff", Rearm(), "stopped",
        E("backoff", "stopped"), END, WANT, STOPPED_, WANT, waiters=True),
    row("a restart cannot fit a model too big", "failed", Rearm(), "failed", too_big=TOO_BIG),
    row("a restart keeps a retire", "ready/retire", Rearm(), "stopping/retire",
        E("ready", "stopping"), KILL),
    row("a restart while stopping", "stopping", Rearm(), "stopping/restart"),
    row("stop_all drops a restart", "ready/restart", Halt(), "stopping", E("ready", "stopping"),
        KILL),
    row("stop_all keeps a retire", "stopping/retire", Halt(), "stopping/retire"),
    row("stop_all of a backoff", "backoff", Halt(), "stopped", E("backoff", "stopped"), END,
        STOPPED_ERR, STOPPED_),
    row("a config too big fails a stopped one", "stopped", Reapply(), "failed",
        E("stopped", "failed"), BIG, too_big=TOO_BIG),
    row("a config too big stops a ready one", "ready", Reapply(), "stopping", BIG,
        E("ready", "stopping"), KILL, too_big=TOO_BIG),
    row("a config too big fails a backoff", "backoff", Reapply(), "failed", END,
        E("backoff", "failed"), BIG, too_big=TOO_BIG),
    row("a config re-arms a failed one", "failed", Reapply(), "stopped", E("failed", "stopped"),
        END, STOPPED_ERR, STOPPED_, life={"restart_times": SPENT, "attempt": 3}),
    row("a config keeps a ready one", "ready", Reapply(), "ready"),
    row("a config wants back a retiring one", "stopping/retire", Reapply(), "stopping"),
]
# fmt: on


@pytest.mark.parametrize(("life", "event", "facts", "after", "actions"), ROWS)
def test_decide_table(
    life: Life, event: object, facts: Facts, after: str, actions: list[Action]
) -> None:
    next_life, did = decide(life, event, facts, CONFIG)
    state, _, goal = after.partition("/")
    assert (next_life.state, next_life.goal) == (State(state), Goal(goal or "serve"))
    assert did == actions


def test_decide_table_has_unique_ids() -> None:
    assert len({row.id for row in ROWS}) == len(ROWS)


def test_a_crash_spends_the_restart_budget() -> None:
    after, _ = decide(
        Life(state=S.READY, attempt=1), ChildExited(SPEC, GEN, 1), Facts(now=NOW), CONFIG
    )
    assert (after.attempt, after.restarts, after.restart_times, after.retry_at) == (
        2,
        1,
        (NOW,),
        NOW + 2,
    )
    assert after.last_error == "exited with status 1"


def test_an_exit_names_why_it_was_killed_and_its_last_words() -> None:
    life = Life(state=S.UNHEALTHY, failure_reason="a one-token completion probe failed (wedged)")
    after, _ = decide(life, ChildExited(SPEC, GEN, -15), Facts(now=NOW, tail="bye"), CONFIG)
    assert (
        after.last_error
        == "a one-token completion probe failed (wedged); exited with status -15\nbye"
    )


def test_a_start_forgets_the_last_processes_health() -> None:
    life = Life(state=S.BACKOFF, health_failures=2, failure_reason="x", goal=G.PROBE)
    after, _ = decide(life, BackoffElapsed(SPEC, GEN), Facts(now=NOW), CONFIG)
    assert (after.health_failures, after.failure_reason, after.goal) == (0, None, G.SERVE)


def test_ready_resets_the_backoff() -> None:
    after, _ = decide(
        Life(state=S.STARTING, attempt=4), BecameReady(SPEC, GEN), Facts(now=NOW), CONFIG
    )
    assert after.attempt == 0


def test_too_big_and_rearm_keep_their_reasons() -> None:
    after, _ = decide(Life(), Reapply(), Facts(now=NOW, too_big=TOO_BIG), CONFIG)
    assert after.last_error == TOO_BIG
    after, _ = decide(
        Life(state=S.FAILED, restart_times=SPENT, attempt=3), Rearm(), Facts(now=NOW), CONFIG
    )
    assert (after.restart_times, after.attempt) == ((), 0)


EVENTS: list[object] = [
    Load(), LoadFailed("x"), Stop(), Drain(G.UNLOAD), Drain(G.RETIRE), Rearm(), Halt(), Reapply(),
    Ask(), Ask(replacing=1), Released(), SuspectWedge(SPEC), DrainExpired(SPEC),
    BecameReady(SPEC, GEN),
    StartTimedOut(SPEC, GEN, "x"), ChildExited(SPEC, GEN, 1), HealthResult(SPEC, GEN, Health.ERROR),
    ProbeResult(SPEC, GEN, False), ProbeResult(SPEC, GEN, True), BackoffElapsed(SPEC, GEN),
    WorkersChecked(SPEC, GEN, ()), WorkersChecked(SPEC, GEN, ("h:1",)),
]  # fmt: skip
FACTS = [
    Facts(now=NOW),
    Facts(now=NOW, in_flight=1, waiters=True, rpc=True, pid=1),
    Facts(now=NOW, too_big=TOO_BIG, port_held=True, stopping_all=True, waiters=True),
]


@pytest.mark.parametrize(("state", "goal"), list(itertools.product(State, Goal)))
def test_decide_never_takes_an_edge_the_table_forbids(state: State, goal: Goal) -> None:
    """Every event in every state and goal: `Enter` raises InvalidTransition on a
    forbidden edge, so a decision that finishes is one the table allows, and the actions
    chain from the old state to the new one."""
    for event, facts in itertools.product(EVENTS, FACTS):
        life = Life(state=state, goal=goal, restart_times=SPENT if facts.rpc else ())
        try:
            after, did = decide(life, event, facts, CONFIG)
        except InvalidTransition as exc:  # pragma: no cover - the failure message
            pytest.fail(f"{state}/{goal} + {event!r}: {exc}")
        entered = [a for a in did if isinstance(a, Enter)]
        chain = [state, *(a.new for a in entered)]
        assert all(a.old == chain[i] for i, a in enumerate(entered))
        assert chain[-1] == after.state


def test_life_and_actions_compare_by_value() -> None:
    assert msgspec.structs.replace(Life(), state=S.READY) == Life(state=S.READY)
    assert Retry(1.0) == Retry(1.0) and Retry(1.0) != Retry(2.0)
