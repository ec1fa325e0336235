"""Server mode: requests go to the supervisor's llama-server through its shared aiohttp client."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import AsyncExitStack, aclosing, contextmanager
from typing import Any, Literal, NoReturn

import aiohttp
import anyio

from backends.base import ChatTask, Embedded
from backends.catalog import ModelDef
from backends.llama_api import (
    JSON,
    TOO_LARGE,
    Upstream,
    answer_of,
    chat_payload,
    context_exceeded,
    decode,
    events_of,
    generation,
    json_body,
    llama_error,
    read_event,
    upstream_message,
)
from backends.router import Router, Target, key_of
from backends.spares import Spares
from backends.specs import server_spec
from core.chat import (
    Answer,
    Event,
    Failure,
    Finish,
)
from core.config import LlmParams
from core.errors import (
    AiServerError,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    UpstreamError,
)
from supervisor.actor import Supervisor
from supervisor.command import ServerSpec
from supervisor.remote import Remote
from supervisor.states import State

log = logging.getLogger("ai_server.backend")


class _ConnectionLost(BackendUnavailable):
    """The connection to llama-server broke (it died or is restarting): 503, Retry-After."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message, retry_after=1)
        self.pid = pid


class _BeforeFirstByte(Exception):
    """A routed request failed before any of its answer arrived: another instance may take
    it (once). `error` is what the client gets if none does."""

    def __init__(self, error: AiServerError, *, news: bool = True) -> None:
        self.error = error
        self.news = news  # False: the instance is already known to be down


def _failed(router: Router, target: Target, failure: _BeforeFirstByte) -> None:
    if failure.news:
        router.report(target, failure.error.message)


class ServerBackend:
    name: Literal["server"] = "server"

    def __init__(
        self, supervisor: Supervisor, router: Router, timeout: float, spares: Spares | None = None
    ) -> None:
        self._supervisor = supervisor
        self._router = router
        self._timeout = timeout
        self._spares = spares

    def _spec(self, model: ModelDef, params: LlmParams) -> ServerSpec:
        spec = server_spec(model, params)
        self._check_file(model, spec)
        return spec

    def _check_file(self, model: ModelDef, spec: ServerSpec) -> None:
        """A missing file is named (with its fix), not left to llama-server to fail its load.
        A loaded instance needs no file: not a stat per request (BENCHMARKS.md, per-call
        costs)."""
        if self._supervisor.load_of(spec)[0] is not State.READY:
            model.file()

    async def chat(self, task: ChatTask) -> Answer:
        path, payload = generation(task)
        return answer_of(await self._resent(task.model, task.params, path, payload))

    async def vision(self, task: ChatTask) -> Answer:
        return await self.chat(task)

    async def count_tokens(self, task: ChatTask) -> int:
        """The prompt as the model's llama-server renders it (`/apply-template`), counted by
        its tokenizer as a chat's prompt is (`/tokenize`, special tokens added and parsed); a
        raw prompt as it is."""
        prompt = task.request.prompt
        if not task.request.raw:
            payload = chat_payload(task)
            prompt = (await self._send(task.model, task.params, "/apply-template", payload)).prompt
        tokenize = {"content": prompt, "add_special": True, "parse_special": True}
        counted = await self._send(task.model, task.params, "/tokenize", tokenize)
        return len(counted.tokens)  # its projector: checked by the Job

    async def embed(self, model: ModelDef, texts: Sequence[str], params: LlmParams) -> Embedded:
        answer = await self._resent(model, params, "/v1/embeddings", {"input": list(texts)})
        rows = sorted(answer.data, key=lambda row: int(row.get("index", 0)))
        prompt_tokens = answer.usage.get("prompt_tokens")
        return Embedded(
            vectors=[row["embedding"] for row in rows],
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
        )

    async def _resent(
        self, model: ModelDef, params: LlmParams, path: str, payload: dict[str, Any]
    ) -> Upstream:
        """`_send`, and once more to the local process that replaces one that died before it
        answered: the client has received nothing (a chat sent again is a new sample)."""
        try:
            return await self._send(model, params, path, payload)
        except _ConnectionLost as lost:
            if lost.pid is None:
                raise
            log.warning("backend.retry %s after: %s", path, lost.message)
            spec = self._spec(model, params)
            return await self._post(spec, path, payload, replacing=lost.pid)

    async def _send(
        self, model: ModelDef, params: LlmParams, path: str, payload: dict[str, Any]
    ) -> Upstream:
        """One request: to the model's only llama-server, or routed among its instances
        and retried once on another one if it fails before the first byte of its answer."""
        if not self._router.routes(model):
            return await self._post(self._spec(model, params), path, payload)
        tried: frozenset[str] = frozenset()
        while True:
            target = self._pick(model, params, tried)
            try:
                return await self._post_to(target, path, payload)
            except _BeforeFirstByte as failure:
                _failed(self._router, target, failure)
                tried |= {key_of(target)}
                if len(tried) > 1 or self._router.pick(model, params, tried) is None:
                    raise failure.error from None
                log.warning("backend.retry %s elsewhere after: %s", path, failure.error.message)

    def _pick(self, model: ModelDef, params: LlmParams, tried: frozenset[str]) -> Target:
        target = self._router.pick(model, params, tried)
        if target is None:
            raise BackendUnavailable(self._router.why_down(model, params), retry_after=5)
        if isinstance(target, ServerSpec):
            self._check_file(model, target)
        return target

    async def _post_to(self, target: Target, path: str, payload: dict[str, Any]) -> Upstream:
        try:
            with self._router.watch(target) as scope:
                if isinstance(target, ServerSpec):
                    answer = await self._post(target, path, payload)
                else:
                    answer = await self._post_remote(target, path, payload)
        except (BackendUnavailable, UpstreamError) as exc:  # not BadRequest, not a timeout
            raise _BeforeFirstByte(exc) from None
        if scope.cancelled_caught:
            raise _BeforeFirstByte(self._went_down(target), news=False)
        self._router.served(target)
        return answer

    def _went_down(self, target: Target) -> BackendUnavailable:
        reason = target.reason if isinstance(target, Remote) else None
        return BackendUnavailable(f"{key_of(target)} went down: {reason}", retry_after=1)

    async def _post_remote(self, r: Remote, path: str, payload: dict[str, Any]) -> Upstream:
        async with self._router.lease(r) as upstream:
            with self._upstream_errors(r, upstream.pid):
                async with self._supervisor.http.post(
                    upstream.url + path, data=json_body(payload), headers=JSON | upstream.headers
                ) as resp:
                    body = await resp.read()
        if resp.status != 200:
            self._raise_for(r, resp.status, body)
        return decode(body)

    async def chat_stream(self, task: ChatTask) -> AsyncGenerator[Event, None]:
        """llama-server's SSE events as ours, each as soon as it is read. Leaving the loop
        early (the client went away) closes the upstream connection, which makes llama-server
        stop generating and free its slot."""
        finished = False
        async with aclosing(self._sse(task)) as raw:
            async for data in raw:
                for event in events_of(data):
                    finished = finished or isinstance(event, Finish | Failure)
                    yield event
        if not finished:  # the connection closed mid-answer: not an answer that ended
            raise UpstreamError("llama-server's stream ended before the answer did")

    async def _sse(self, task: ChatTask) -> AsyncGenerator[bytes, None]:
        """llama-server's own SSE events. A routed stream that fails before its first event
        is retried once on another instance; never after."""
        path, payload = generation(task)
        payload |= {"stream": True, "stream_options": {"include_usage": True}}
        if not self._router.routes(task.model):
            async with aclosing(self._local_sse(task, path, payload)) as events:
                async for event in events:
                    yield event
            return
        tried: frozenset[str] = frozenset()
        while True:
            target = self._pick(task.model, task.params, tried)
            events = self._stream(target, path, payload)
            try:
                with self._router.watch(target) as scope:
                    first = await anext(events, None)
                if scope.cancelled_caught:
                    raise _BeforeFirstByte(self._went_down(target), news=False)
            except (BackendUnavailable, UpstreamError, _BeforeFirstByte) as exc:
                await events.aclose()
                failure = exc if isinstance(exc, _BeforeFirstByte) else _BeforeFirstByte(exc)
                error = failure.error
                _failed(self._router, target, failure)
                tried |= {key_of(target)}
                if len(tried) > 1 or self._router.pick(task.model, task.params, tried) is None:
                    raise error from None
                log.warning("backend.retry stream elsewhere after: %s", error.message)
                continue
            try:
                if first is not None:
                    self._router.served(target)
                    yield first
                    async for event in events:
                        yield event
            finally:
                await events.aclose()
            return

    async def _local_sse(
        self, task: ChatTask, path: str, payload: dict[str, Any]
    ) -> AsyncGenerator[bytes, None]:
        """The model's only llama-server's events; sent once more to its successor if it
        died before the first event (the client has received nothing yet), never after."""
        spec = self._spec(task.model, task.params)
        events = self._stream(spec, path, payload)
        try:
            first = await anext(events, None)
        except _ConnectionLost as lost:
            await events.aclose()
            if lost.pid is None:
                raise
            log.warning("backend.retry stream after: %s", lost.message)
            events = self._stream(spec, path, payload, replacing=lost.pid)
            first = await anext(events, None)
        async with aclosing(events):
            if first is not None:
                yield first
                async for event in events:
                    yield event

    async def _stream(
        self, target: Target, path: str, payload: dict[str, Any], replacing: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        async with self._router.lease(target, replacing) as upstream, AsyncExitStack() as stack:
            with self._upstream_errors(target, upstream.pid):
                # llama-server drops a kept-alive connection just after a streamed response,
                # and the next request sent on it fails: a stream gets a connection of its own.
                resp = await stack.enter_async_context(
                    self._supervisor.http.post(
                        upstream.url + path,
                        data=json_body(payload),
                        headers=JSON | upstream.headers | {"Connection": "close"},
                    )
                )
                if resp.status != 200:
                    self._raise_for(target, resp.status, await resp.read())
            first = True
            while True:
                with self._upstream_errors(target, upstream.pid):  # a deadline per event
                    event = await read_event(resp.content)
                if event is None:
                    return
                yield event
                # After the first event is out, not before: a refill then does not delay it.
                if first and self._spares is not None:
                    self._spares.refill(upstream.url, upstream.headers)
                first = False

    async def _post(
        self, spec: ServerSpec, path: str, payload: dict[str, Any], replacing: int | None = None
    ) -> Upstream:
        async with self._supervisor.lease(spec, replacing) as endpoint:
            with self._upstream_errors(spec, endpoint.pid):
                async with self._supervisor.http.post(
                    endpoint.url + path, data=json_body(payload), headers=JSON
                ) as resp:
                    body = await resp.read()
        if resp.status != 200:
            self._raise_for(spec, resp.status, body)
        return decode(body)

    def _raise_for(self, target: Target, status: int, body: bytes) -> NoReturn:
        message = upstream_message(body)
        if isinstance(target, Remote) and status in (401, 403):
            raise UpstreamError(f"{target.url} refused our API key (HTTP {status}): {message}")
        # llama-server's 4xx are about the request (e.g. it exceeds the context), and so is
        # the 500 it answers for embedding input larger than its batch.
        if status >= 500 and not TOO_LARGE.search(message):
            if isinstance(target, ServerSpec):
                self._supervisor.report_failure(target)
            raise UpstreamError(f"llama-server: {message}")
        if status < 500 and llama_error(body) is None:
            # Not llama-server's verdict on the request, which always comes with its JSON
            # error: whatever answers at a vanished host's address (issue 29), or a request
            # it could not read. A failure of the instance, never the client's fault.
            raise self._not_llama(target, status, message)
        if (exceeded := context_exceeded(body)) is not None:
            raise exceeded
        raise BadRequest(f"llama-server rejected the request: {message}")

    def _not_llama(self, target: Target, status: int, message: str) -> UpstreamError:
        if isinstance(target, ServerSpec):
            self._supervisor.report_failure(target)
        said = f": {message}" if message.strip() else " with an empty body"
        return UpstreamError(
            f"{key_of(target)} answered HTTP {status}{said}, not as llama-server answers"
        )

    @contextmanager
    def _upstream_errors(self, target: Target, pid: int | None) -> Iterator[None]:
        """The one place aiohttp's exceptions become ours. Either may mean a wedged or dead
        server: the supervisor probes a local one (and sees a dead one exit on its own); a
        remote one is cooled down by whoever catches the connection loss."""
        try:
            # fail_after's own check, without its extra layer: a third less per request and per
            # streamed event (BENCHMARKS.md, per-call costs).
            with anyio.CancelScope(deadline=anyio.current_time() + self._timeout) as waited:
                yield
            if waited.cancelled_caught:
                raise TimeoutError
        except TimeoutError:
            self._router.report(target, f"no answer within {self._timeout:.0f} s")
            raise BackendTimeout(
                f"llama-server did not answer within {self._timeout:.0f} s"
            ) from None
        except aiohttp.ClientError as exc:
            if isinstance(target, ServerSpec):
                self._supervisor.report_failure(target)
            where = f" at {target.url}" if isinstance(target, Remote) else ""
            # aiohttp's words (addresses, ports) for the gateway's log; one sentence for
            # the client.
            log.warning("backend.connection_lost %s: %s", key_of(target), exc or repr(exc))
            raise _ConnectionLost(
                f"llama-server{where} connection lost before its answer was complete", pid
            ) from None
