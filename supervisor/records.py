"""The actor's records of its instances, and the one place they change: `step` asks
`supervisor.decide` what an event means for an instance, stores the next `Life`, and performs
the actions in order, with `supervisor.effects` (processes, helper tasks, pidfiles) and
`supervisor.loading` (the memory budget's queue). It runs only inside the actor's loop,
except `count_in` / `count_out`, which the lease shortcut calls from a caller's task (see
`supervisor.actor`): synchronous, no await, so nothing interleaves with them.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import aiohttp

from core.errors import BackendUnavailable, ModelExceedsBudget
from supervisor import lifecycle as d
from supervisor import tasks
from supervisor.command import ServerSpec
from supervisor.config import SupervisorConfig
from supervisor.decide import decide
from supervisor.effects import Effects
from supervisor.instance import Instance, Lease, LeaseError
from supervisor.loading import Loads
from supervisor.messages import Endpoint, Reply
from supervisor.pool import Policy
from supervisor.states import LIVE, Goal, State, StateEvent, check_transition

log = logging.getLogger("ai_server.supervisor")


class Records:
    def __init__(
        self,
        config: SupervisorConfig,
        http: aiohttp.ClientSession,
        send: tasks.Send,
        queued: Callable[[str], int],
    ) -> None:
        self.config = config
        self.records: dict[ServerSpec, Instance] = {}
        self.events: deque[StateEvent] = deque(maxlen=1000)
        self.effects = Effects(config, http, send)
        self.loads = Loads(
            config, self.records, queued,
            start=lambda m: self.step(m, d.Load()), stop=lambda m: self.step(m, d.Stop()),
        )  # fmt: skip
        self.stopping_all = False
        self.stop_all_replies: list[Reply[None]] = []
        # Our own generator: the module's shared one is the application's (and hypothesis
        # flags a draw from it while it generates a fuzz case in the same process).
        self._random = random.Random()  # noqa: S311 (spreads restarts, not a secret)

    def count_in(self, m: Instance) -> Lease:
        assert m.child is not None
        m.in_flight += 1
        m.served += 1
        m.last_used = time.monotonic()
        return Lease(m, Endpoint(spec=m.spec, url=m.url, port=m.port, pid=m.child.pid))

    def count_out(self, lease: Lease) -> Instance:
        if lease.released:
            raise LeaseError(f"a lease of {lease.record.spec.name} was released twice")
        lease.released = True
        m = lease.record
        if m.in_flight <= 0:
            raise LeaseError(f"{m.spec.name}: a release without a lease in flight")
        m.in_flight -= 1
        m.last_used = time.monotonic()
        return m

    def record(self, spec: ServerSpec, policy: Policy | None = None) -> Instance:
        if (m := self.records.get(spec)) is None:
            # Ports of records on their way out may be taken: the new one waits for them.
            taken = {r.port for r in self.records.values() if r.life.goal is not Goal.RETIRE}
            port = next(p for p in range(self.config.base_port, 65536) if p not in taken)
            url = f"http://{self.config.host}:{port}"
            m = self.records[spec] = Instance(spec, url, port, policy or Policy())
        if policy is not None:
            m.policy = policy
        return m

    def _facts(self, m: Instance, tail: str) -> d.Facts:
        return d.Facts(
            now=time.monotonic(),
            in_flight=m.in_flight,
            waiters=bool(m.waiters or m.successors),
            rpc=bool(m.spec.rpc),
            too_big=self.loads.too_big(m),
            pid=m.child.pid if m.child else None,
            port_held=any(
                r is not m and r.port == m.port and r.state in LIVE for r in self.records.values()
            ),
            stopping_all=self.stopping_all,
            tail=tail,
            jitter=self._random.random(),
        )

    async def step(
        self, m: Instance, event: object, reply: Reply[Lease] | None = None, tail: str = ""
    ) -> None:
        """The one place an instance's lifecycle changes: `decide`, then its actions."""
        m.life, actions = decide(m.life, event, self._facts(m, tail), self.config)
        for action in actions:
            await self._perform(m, action, reply)

    async def _perform(self, m: Instance, action: d.Action, reply: Reply[Lease] | None) -> None:
        fx = self.effects
        match action:
            case d.Enter(old, new):
                self._entered(m, old, new)
            case d.Spawn():
                m.load_started = time.monotonic()
                taken = [r.port for r in self.records.values() if r is not m]
                if (reason := await fx.spawn(m, taken)) is not None:
                    await self.step(m, d.LoadFailed(reason))
            case d.Kill():
                fx.kill(m)
            case d.Watch():
                fx.watch(m)
            case d.Probe():
                fx.probe(m)
            case d.Retry(delay):
                fx.retry(m, delay)
            case d.AwaitWorkers():
                fx.await_workers(m)
            case d.DrainTimer():
                fx.drain_timer(m)
            case d.EndGeneration():
                m.gen.alive = False
            case d.Loaded(rss_mb):
                self._loaded(m, rss_mb)
            case d.Measured(rss_mb):
                m.measured_mb = rss_mb
            case d.Admit():
                assert reply is not None
                self._grant(m, reply)
            case d.Queue(successor):
                assert reply is not None
                (m.successors if successor else m.waiters).append(reply)
            case d.Refuse(refusal):
                assert reply is not None
                reply.fail(self._error(m, refusal))
            case d.Grant(successors_only):
                self._grant_all(m, successors_only)
            case d.FailWaiters(refusal):
                self.fail_waiters(m, self._error(m, refusal))
            case d.Want():  # (STOPPED: waiting through a restart is waiting for a load)
                m.waiters, m.successors = m.waiters + m.successors, []
                await self.loads.want(m)
            case d.Freed():
                await self.loads.freed()
            case d.Forget():
                self.loads.forget(m)
                if self.records.get(m.spec) is m:
                    del self.records[m.spec]
            case d.Stopped():
                await self._stopped(m)

    def _entered(self, m: Instance, old: State, new: State) -> None:
        check_transition(old, new)
        log.info(
            "supervisor.state_changed port=%d model=%s %s -> %s", m.port, m.spec.name, old, new
        )
        self.events.append(StateEvent(m.port, old, new, time.monotonic(), m.spec.name))

    def _loaded(self, m: Instance, rss_mb: int | None) -> None:
        m.loads += 1
        m.load_seconds = time.monotonic() - m.load_started
        m.measured_mb = rss_mb
        log.info(
            "supervisor.loaded model=%s seconds=%.2f rss_mb=%s", m.spec.name, m.load_seconds, rss_mb
        )

    def _grant(self, m: Instance, reply: Reply[Lease]) -> None:
        if not reply.abandoned:
            reply.set(self.count_in(m))

    def _grant_all(self, m: Instance, successors_only: bool = False) -> None:
        if successors_only:
            replies, m.successors = m.successors, []
        else:
            replies, m.waiters, m.successors = m.waiters + m.successors, [], []
        for reply in replies:
            self._grant(m, reply)

    def _error(self, m: Instance, refusal: d.Refusal) -> Exception:
        if refusal.retry_after is None:
            return ModelExceedsBudget(refusal.what)
        if not refusal.named:
            return BackendUnavailable(refusal.what, retry_after=refusal.retry_after)
        return BackendUnavailable(
            f"llama-server for {_name(m)} {refusal.what}", retry_after=refusal.retry_after
        )

    def fail_waiters(self, m: Instance, error: Exception) -> None:
        replies, m.waiters, m.successors = m.waiters + m.successors, [], []
        for reply in replies:
            reply.fail(error)

    def expire_restart_waits(self) -> None:
        """Requests waiting for a model to come back from a crash (BACKOFF, or UNHEALTHY on
        its way there) give up after `memory_wait` ([limits] queue_timeout_s), as a wait
        for memory does; a load in progress is bounded by the caller (`start_wait`)."""
        now, bound = time.monotonic(), self.config.memory_wait
        for m in self.records.values():
            if m.state not in (State.BACKOFF, State.UNHEALTHY):
                continue
            expired = [r for r in m.waiters + m.successors if now - r.since >= bound]
            if not expired:
                continue
            m.waiters = [r for r in m.waiters if r not in expired]
            m.successors = [r for r in m.successors if r not in expired]
            error = BackendUnavailable(
                f"llama-server for {_name(m)} did not come back within {bound:.0f} s",
                retry_after=5,
            )
            for reply in expired:
                reply.fail(error)

    async def _stopped(self, m: Instance) -> None:
        """`m`'s process is gone: answer its unloads, start a record that waited for its
        port, and the loads that waited for memory."""
        replies, m.unload_replies = m.unload_replies, []
        for done in replies:
            done.set(None)
        for other in list(self.records.values()):
            if other is not m and other.state is State.STOPPED and other.life.goal is Goal.RESTART:
                await self.step(other, d.Load())
        await self.loads.freed()
        self.check_all_stopped()

    def check_all_stopped(self) -> None:
        # FAILED has no process either: a model too big for the budget goes back to it.
        if all(m.state in (State.STOPPED, State.FAILED) for m in self.records.values()):
            self.stopping_all = False
            replies, self.stop_all_replies = self.stop_all_replies, []
            for reply in replies:
                reply.set(None)


def _name(m: Instance) -> str:
    return m.spec.name or Path(m.spec.model).name
