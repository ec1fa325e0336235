"""Remote instances: llama-servers of a model on the LAN's other hosts (each run by `ai-server
worker`), watched the way the actor watches local ones, without a process to own.

One `Remote` record per configured remote, one poller task per record, and `Fleet` owning
both. Only a poller and the request path touch a record, each in one synchronous step (no
await between reading and writing), so the records need no lock.

- **Probe.** Every `probe_interval_s`, `GET /slots` with the key: llama-server's `/health`
  needs none, so only a request that needs it tells a wrong key (401: `unauthorized`, never
  ready) from a right one. An answer gives the slots and how many are idle; a server
  started with `--no-slots` answers 501, and then `/props` gives the slot count.
- **Cooldown.** A probe that fails (no answer within `probe_timeout_s`: a frozen host; a
  refused connection; a 5xx), or a request that fails before its first byte, cools the
  remote down: no requests, and the next probe only after 5 s, doubling up to 60 s while
  it keeps failing. A passing probe ends it. Requests still waiting for a first byte from
  it are cancelled, to be retried elsewhere: a frozen host holds nobody.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any

import aiohttp
import anyio
import anyio.abc
import msgspec

log = logging.getLogger("ai_server.remote")

COOLDOWN_FIRST = 5.0
COOLDOWN_MAX = 60.0


class RemoteSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A llama-server of a model on another host, its key read from the config."""

    url: str
    api_key: str | None = None
    weight: int = 1

    def public(self) -> dict[str, object]:
        """As every output shows it: the key redacted."""
        return {"url": self.url, "api_key": "***" if self.api_key else None, "weight": self.weight}


class RemoteState(StrEnum):
    UNKNOWN = "unknown"  # not probed yet
    READY = "ready"
    COOLING = "cooling"  # failed; probed again when the cooldown ends
    UNAUTHORIZED = "unauthorized"  # answers, refuses the key


class RemoteInfo(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    state: RemoteState
    weight: int
    slots: int
    idle: int
    in_flight: int
    served: int
    failures: int
    cooldown_s: float | None  # left of the cooldown
    reason: str | None


class Remote:
    def __init__(self, model: str, spec: RemoteSpec, default_slots: int) -> None:
        self.model = model
        self.spec = spec
        self.url = spec.url
        self.headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        self.state = RemoteState.UNKNOWN
        self.slots = default_slots  # until a probe tells
        self.idle_polled = 0
        self.in_flight = 0
        self.in_flight_at_poll = 0
        self.served = 0
        self.failures = 0
        self.cooldown = 0.0
        self.cooling_until = 0.0
        self.reason: str | None = None
        self.pending: set[anyio.CancelScope] = set()  # requests before their first byte

    @property
    def available(self) -> bool:
        return self.state is RemoteState.READY

    @property
    def idle(self) -> int:
        """Idle slots as last polled, corrected by our requests started or ended since."""
        idle = self.idle_polled - (self.in_flight - self.in_flight_at_poll)
        return max(0, min(idle, self.slots))

    def passed(self, slots: int, idle: int | None) -> bool:
        """A probe passed; whether that changed the state."""
        changed = self.state is not RemoteState.READY
        if changed:
            log.info("remote.ready model=%s url=%s slots=%d", self.model, self.url, slots)
        self.state = RemoteState.READY
        self.cooldown = 0.0
        self.reason = None
        self.slots = max(slots, 1)
        self.idle_polled = self.slots - self.in_flight if idle is None else idle
        self.in_flight_at_poll = self.in_flight
        return changed

    def failed(self, reason: str, *, refused: bool = False) -> bool:
        """A probe or a request failed: cool down (or, for a refused key, stay out); cancel
        the requests still waiting for a first byte. Whether that changed the state."""
        changed = self.state is RemoteState.READY or self.state is RemoteState.UNKNOWN
        self.failures += 1
        self.reason = reason
        if refused:
            self.state = RemoteState.UNAUTHORIZED
        else:
            self.state = RemoteState.COOLING
            self.cooldown = min(self.cooldown * 2 or COOLDOWN_FIRST, COOLDOWN_MAX)
            self.cooling_until = time.monotonic() + self.cooldown
        if changed:
            log.warning("remote.down model=%s url=%s %s", self.model, self.url, reason)
        for scope in self.pending:
            scope.cancel()
        return changed

    def info(self) -> RemoteInfo:
        left = self.cooling_until - time.monotonic()
        return RemoteInfo(
            url=self.url,
            state=self.state,
            weight=self.spec.weight,
            slots=self.slots,
            idle=self.idle if self.available else 0,
            in_flight=self.in_flight,
            served=self.served,
            failures=self.failures,
            cooldown_s=round(left, 1) if self.state is RemoteState.COOLING and left > 0 else None,
            reason=self.reason,
        )


class Fleet:
    """Every remote instance of every model, and their pollers."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        connect_timeout: float,
        probe_interval: float,
        probe_timeout: float,
        default_slots: int,
        on_change: Callable[[str], None] = lambda model: None,
    ) -> None:
        self.http = http
        self.connect_timeout = connect_timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.default_slots = default_slots
        self.on_change = on_change  # a model's available instances changed
        self.remotes: dict[str, list[Remote]] = {}
        self._pollers: dict[Remote, anyio.CancelScope] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    def apply(self, wanted: Mapping[str, Sequence[RemoteSpec]]) -> None:
        """The remotes the config names (none in cli mode): new ones are polled, gone ones
        stop being polled; an unchanged one keeps its record and counters."""
        assert self._tg is not None
        current = {(r.model, r.spec): r for rs in self.remotes.values() for r in rs}
        self.remotes = {}
        for model, specs in wanted.items():
            for spec in specs:
                r = current.pop((model, spec), None)
                if r is None:
                    r = Remote(model, spec, self.default_slots)
                    self._pollers[r] = scope = anyio.CancelScope()
                    self._tg.start_soon(self._poll, r, scope)
                self.remotes.setdefault(model, []).append(r)
        for r in current.values():
            self._pollers.pop(r).cancel()
            r.failed("removed from the config")

    def of(self, model: str) -> list[Remote]:
        return self.remotes.get(model, [])

    def report(self, r: Remote, reason: str) -> None:
        """A request to `r` failed before its first byte."""
        if r.failed(reason):
            self.on_change(r.model)

    async def _poll(self, r: Remote, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await self.probe(r)
                wait = self.probe_interval
                if r.state is RemoteState.COOLING:
                    wait = max(r.cooling_until - time.monotonic(), self.probe_interval)
                await anyio.sleep(wait)

    async def probe(self, r: Remote) -> None:
        changed: bool
        try:
            status, body = await self._get(r, "/slots")
            if status == 501:  # --no-slots: the count from /props, idle from our own count
                status, body = await self._get(r, "/props")
            if status in (401, 403):
                changed = r.failed(f"the API key was refused (HTTP {status})", refused=True)
            elif status != 200:
                changed = r.failed(f"a probe answered HTTP {status}")
            elif isinstance(body, list):
                idle = sum(1 for slot in body if not slot.get("is_processing"))
                changed = r.passed(len(body), idle)
            else:
                changed = r.passed(int(body.get("total_slots") or self.default_slots), None)
        except TimeoutError:
            changed = r.failed(f"no answer to a probe within {self.probe_timeout:g} s")
        except (aiohttp.ClientError, OSError, msgspec.DecodeError, AttributeError) as exc:
            changed = r.failed(f"probe failed: {exc or type(exc).__name__}")
        if changed:
            self.on_change(r.model)

    async def _get(self, r: Remote, path: str) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=self.probe_timeout, sock_connect=self.connect_timeout)
        async with self.http.get(r.url + path, headers=r.headers, timeout=timeout) as resp:
            body = await resp.read()
            return resp.status, msgspec.json.decode(body) if resp.status == 200 else None
