"""Slow clients, held off at the HTTP protocol layer: uvicorn's httptools protocol with total
deadlines for a request's headers and body, and a cap on open connections. ASGI cannot do
this: an app sees a request only once its headers are complete.

Deadlines are totals, not idle timers: a client trickling a byte a second does not renew them.

  headers  `[limits] header_timeout_s`, from the connection's opening for its first request,
           from a later request's first byte on a kept-alive connection (in between, the idle
           `keepalive_timeout_s` applies). Missed: 408 if part of a request came, else the
           connection is just closed (no request to answer).
  body     `[limits] body_timeout_s`, from the end of the headers to the end of the body.
           Missed: 408 unless the response has begun; the app's `receive` gets
           `http.disconnect`, so `gateway.middleware.CancelOnDisconnect` cancels its handler.

Once a request's body is complete no deadline applies to it, so a slow reader of a long
stream is never cut off. A pipelined request's deadline starts once the response before it is
complete: until then the server, not the client, is the one making it wait.

Over `[limits] max_connections` open connections a new one is answered 503 (Retry-After) at
once and closed, never queued. Each miss and refusal is logged and counted
(`Metrics.deadlines_missed`, `Metrics.connections_refused`).

Answers are the gateway's JSON error envelope (`gateway.error_handlers.error_response`). After
one the connection is half-closed and its input read and dropped for up to LINGER_S: closing
a socket with unread input sends a reset, which can destroy the answer before it is read.

Per request this costs no task: at most one `call_later` timer handle per connection at a
time, and none for a request whose headers and body arrive in one read.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from core.config import Limits
from gateway.error_handlers import error_response
from gateway.metrics import Metrics

log = logging.getLogger("ai_server.gateway")

LINGER_S = 2.0  # after an answer: reading and dropping input, so the client reads the answer


class _Phase(enum.Enum):
    IDLE = "idle"  # before a request's first byte (or between requests)
    HEADERS = "headers"  # a request has begun, its headers are not complete
    BODY = "body"  # headers complete, the body is not
    CLOSING = "closing"  # answered and half-closed: input is dropped until the close


IDLE, HEADERS, BODY, CLOSING = _Phase  # plain names: looked up on every request


def raw_answer(
    status: int, type_: str, message: str, *, code: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """A gateway error as HTTP/1.1 bytes after the status line (which, like uvicorn's default
    headers, is added when sent), closing the connection."""
    response = error_response(status, type_, message, headers, code=code)
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in response.raw_headers)
    return status, lines + b"connection: close\r\n\r\n" + bytes(response.body)


@dataclass(frozen=True)
class Guard:
    """What every connection's protocol shares: the limits, the counters, the answers."""

    limits: Limits
    metrics: Metrics
    header_late: tuple[int, bytes]
    body_late: tuple[int, bytes]
    refused: tuple[int, bytes]

    @classmethod
    def of(cls, limits: Limits, metrics: Metrics) -> Guard:
        return cls(
            limits,
            metrics,
            header_late=raw_answer(
                408, "request_timeout", code="header_timeout",
                message=f"the request's headers did not arrive within "
                f"{limits.header_timeout_s:g} s ([limits] header_timeout_s)",
            ),
            body_late=raw_answer(
                408, "request_timeout", code="body_timeout",
                message=f"the request's body did not arrive within {limits.body_timeout_s:g} s "
                "of its headers ([limits] body_timeout_s)",
            ),
            refused=raw_answer(
                503, "overloaded", code="too_many_connections", headers={"Retry-After": "1"},
                message=f"{limits.max_connections} connections are open, the most allowed "
                "([limits] max_connections); retry shortly",
            ),
        )  # fmt: skip


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and the connection cap of `Guard`.
    Use `bound()` for a class with one."""

    guard: ClassVar[Guard]
    stack: ClassVar[str] = "httptools"  # the parser, for the startup log line

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn types it as an int (its CLI's); call_later takes the configured float.
        self.timeout_keep_alive = self.guard.limits.keepalive_timeout_s  # type: ignore[assignment]
        self._phase = IDLE
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.guard.limits.max_connections:
            self.transport = transport  # never among `connections`: uncounted, unparsed
            self.guard.metrics.connections_refused.inc()
            log.warning(
                "gateway.connection_refused open=%d client=%s",
                len(self.connections), _peer(transport),
            )  # fmt: skip
            self._hang_up(self.guard.refused)
            return
        super().connection_made(transport)
        self._arm()  # the first request's header deadline runs from the opening

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is CLOSING:
            return  # answered: dropped
        super().data_received(data)
        if self._phase is not IDLE and self._timer is None and self._owed():
            self._arm()  # only now: a request that came in one read never needs a timer

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's warns per request, and of a missing WebSocket library; but no route takes
        # an upgrade (ws="none"), and `curl --http2` asks for h2c: it is served as HTTP/1.1.
        log.debug("gateway.upgrade_ignored client=%s", _peer(self.transport))

    # httptools' callbacks, through uvicorn's
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = HEADERS

    def on_headers_complete(self) -> None:
        if self._timer is not None:
            self._disarm()
        cycle = self.cycle
        super().on_headers_complete()
        self._phase = BODY
        if self.cycle is not cycle:  # a new request's cycle (not an upgrade's early return)
            self.cycle.transport = _Corked(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        if self._timer is not None:
            self._disarm()
        super().on_message_complete()
        self._phase = IDLE

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request waiting on this response starts being owed by its client now.
        if self._phase is not IDLE and self._timer is None and self._owed():
            self._arm()

    # Deadlines
    def _owed(self) -> bool:
        """Whether the client owes the rest of a request the server is ready to read: not
        while a response to an earlier request is still being sent (pipelining)."""
        if self._phase is HEADERS:
            return self.cycle is None or self.cycle.response_complete
        return self._phase is BODY and not self.pipeline

    def _arm(self) -> None:
        if self.transport.is_closing():
            return
        limits = self.guard.limits
        seconds = limits.body_timeout_s if self._phase is BODY else limits.header_timeout_s
        self._timer = self.loop.call_later(seconds, self._missed)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _missed(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        deadline = "body" if self._phase is BODY else "header"
        self.guard.metrics.deadlines_missed.labels(deadline).inc()
        log.warning(
            "gateway.deadline_missed deadline=%s phase=%s client=%s",
            deadline, self._phase.value, _peer(self.transport),
        )  # fmt: skip
        if self._phase is IDLE:
            self.transport.close()  # not a byte of a request: nothing to answer
        elif self._phase is HEADERS:
            self._hang_up(self.guard.header_late)
        else:
            cycle = self.cycle
            cycle.disconnected = True  # the app's receive() says so, its send() is dropped
            cycle.message_event.set()
            self._hang_up(None if cycle.response_started else self.guard.body_late)

    def _hang_up(self, answer: tuple[int, bytes] | None) -> None:
        """Close, after `answer` if any: half-close then, and drop input for up to LINGER_S
        (ended early by the client's own close) so its unread request cannot turn our close
        into a reset that destroys the answer."""
        self._disarm()
        if answer is None:
            self.transport.close()
            return
        status, rest = answer
        defaults = self.server_state.default_headers  # uvicorn's date and server
        head = b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
        self.transport.write(STATUS_LINE[status] + head + rest)
        self.transport.write_eof()
        self._phase = CLOSING
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)


class _Corked:
    """The transport as a response's cycle sees it: the cycle's first write (the status line
    and headers) is held until its next one (the first body chunk) or the end of this turn of
    the loop, whichever comes first. A response sent at once (every JSON answer) goes out in
    one send, not two; a stream's headers go out at the end of the turn, as before. Under
    wrk, uvicorn's two writes per response were most of its send's cost (BENCHMARKS.md,
    profile)."""

    __slots__ = ("_held", "_loop", "_transport", "_written")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._written = False
        self._loop = loop

    def write(self, data: bytes) -> None:
        if not self._written:  # the first: held for a turn of the loop
            self._written = True
            self._held = data
            self._loop.call_soon(self._flush)
        elif (held := self._held) is not None:
            self._held = None
            self._transport.write(held + data)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        if (held := self._held) is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"


def bound(limits: Limits, metrics: Metrics) -> type[GuardedProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, guarding with these limits and
    counting in these metrics."""

    class Bound(GuardedProtocol):
        pass

    Bound.guard = Guard.of(limits, metrics)
    return Bound


def fd_limit_warning(limits: Limits, headroom: int = 64) -> str | None:
    """A warning if the process may open fewer files than max_connections plus `headroom`
    (listening socket, logs, llama.cpp pipes and upstream connections): past the limit,
    accept() fails for everyone instead of the cap answering 503."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= limits.max_connections + headroom:
        return None
    return (
        f"gateway.fd_limit_low nofile={soft} max_connections={limits.max_connections}: "
        "raise LimitNOFILE (systemd) or ulimit -n, or lower [limits] max_connections"
    )
