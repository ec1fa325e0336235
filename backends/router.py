"""The instances of each model, and which one serves a request.

A model with one local instance (the common case) is not routed at all: its requests lease
that llama-server from the supervisor, as they always did. A model with replicas, remote
instances, or both is routed: every request takes a snapshot of its instances as
`backends.routing.Candidate`s and `least_busy` picks one. The model's admission lane gets
the slots of its available instances (`capacity_of`), so requests wait in the model's queue
rather than pile onto a busy llama-server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import msgspec

from backends.catalog import Catalog, ModelDef
from backends.routing import Candidate, least_busy
from backends.specs import local_specs
from core.config import LlmParams
from supervisor.actor import Supervisor
from supervisor.command import ServerSpec
from supervisor.remote import Fleet, Remote
from supervisor.states import State

Target = ServerSpec | Remote

# A local instance in these states takes requests: a stopped one loads on its first, and one
# restarting within its budget (BACKOFF, UNHEALTHY) has them wait for its successor, as a
# model with one instance does; only FAILED (and a draining one) takes none.
_SERVING = frozenset({State.READY, State.STARTING, State.STOPPED, State.BACKOFF, State.UNHEALTHY})
# Of those, the ones that cannot answer soon: chosen only when nothing else is free.
_RESTARTING = frozenset({State.BACKOFF, State.UNHEALTHY})


class Upstream(msgspec.Struct, frozen=True):
    """Where one request goes: a leased instance's address and the headers it needs."""

    url: str
    headers: dict[str, str]
    pid: int | None = None  # a local process


def key_of(target: Target) -> str:
    return target.url if isinstance(target, Remote) else f"local/{target.replica}"


class Router:
    def __init__(self, supervisor: Supervisor, fleet: Fleet, local_slots: int) -> None:
        self.supervisor = supervisor
        self.fleet = fleet
        self.local_slots = local_slots  # [limits] max_concurrency: a local instance's slots
        self._catalog: Catalog | None = None
        self._params: LlmParams | None = None

    def configure(self, catalog: Catalog, params: LlmParams, server_mode: bool) -> None:
        """The models and parameters now in force; remote instances are used in server mode
        only (cli mode runs every model locally)."""
        self._catalog, self._params = catalog, params
        self.fleet.apply(
            {name: m.remotes for name, m in catalog.models.items() if m.remotes}
            if server_mode
            else {}
        )

    @staticmethod
    def routes(model: ModelDef) -> bool:
        return model.replicas != 1 or bool(model.remotes)

    def targets(self, model: ModelDef, params: LlmParams) -> list[tuple[Candidate, Target]]:
        """A snapshot of `model`'s instances: local ones (when its file exists) first."""
        found: list[tuple[Candidate, Target]] = []
        if model.replicas and model.path:
            for spec in local_specs(model, params):
                state, in_flight, draining = self.supervisor.load_of(spec)
                candidate = Candidate(
                    key=f"local/{spec.replica}",
                    available=state in _SERVING and not draining,
                    loaded=state is State.READY,
                    slots=self.local_slots,
                    idle=0 if state in _RESTARTING else max(self.local_slots - in_flight, 0),
                    in_flight=in_flight,
                )
                found.append((candidate, spec))
        for r in self.fleet.of(model.name):
            candidate = Candidate(
                key=r.url,
                available=r.available,
                slots=r.slots,
                idle=r.idle,
                in_flight=r.in_flight,
                weight=r.spec.weight,
            )
            found.append((candidate, r))
        return found

    def pick(self, model: ModelDef, params: LlmParams, exclude: frozenset[str]) -> Target | None:
        found = self.targets(model, params)
        chosen = least_busy([c for c, _ in found], exclude)
        return None if chosen is None else found[chosen][1]

    def capacity_of(self, name: str) -> int:
        """The slots of `name`'s available instances (its admission lane's size): read at
        every admission, so counted without building a snapshot."""
        model = self._catalog.models.get(name) if self._catalog else None
        if model is None or self._params is None or not self.routes(model):
            return self.local_slots
        local = 0
        if model.replicas and model.path:
            for spec in local_specs(model, self._params):
                state, _, draining = self.supervisor.load_of(spec)
                local += state in _SERVING and not draining
        remote = sum(r.slots for r in self.fleet.of(model.name) if r.available)
        return local * self.local_slots + remote

    def why_down(self, model: ModelDef, params: LlmParams) -> str:
        """Why no instance of `model` can take a request, instance by instance."""
        reasons = []
        for candidate, target in self.targets(model, params):
            if isinstance(target, Remote):
                reasons.append(
                    f"{target.url} is {target.state}: {target.reason or 'not probed yet'}"
                )
            else:
                # Its state, not its last error: that holds llama-server's log, for admins.
                info = self.supervisor.instance(target)
                reasons.append(f"{candidate.key} is {info.state if info else 'stopped'}")
        return f"no instance of {model.name} can take requests: " + "; ".join(reasons)

    @asynccontextmanager
    async def lease(self, target: Target, replacing: int | None = None) -> AsyncIterator[Upstream]:
        """`target` counted in flight while the block runs (a local one `replacing` the pid
        that failed: its successor, see `Supervisor.lease`)."""
        if isinstance(target, ServerSpec):
            async with self.supervisor.lease(target, replacing) as endpoint:
                yield Upstream(endpoint.url, {}, endpoint.pid)
            return
        target.in_flight += 1
        try:
            yield Upstream(target.url, target.headers)
        finally:
            target.in_flight -= 1

    @contextmanager
    def watch(self, target: Target) -> Iterator[anyio.CancelScope]:
        """A scope that a remote going down cancels: wrap what comes before the first byte
        of its answer in it."""
        with anyio.CancelScope() as scope:
            if isinstance(target, Remote):
                target.pending.add(scope)
            try:
                yield scope
            finally:
                if isinstance(target, Remote):
                    target.pending.discard(scope)

    def report(self, target: Target, reason: str) -> None:
        """A request to `target` failed before its first byte."""
        if isinstance(target, Remote):
            self.fleet.report(target, reason)
        else:
            self.supervisor.report_failure(target)

    def served(self, target: Target) -> None:
        if isinstance(target, Remote):
            target.served += 1
