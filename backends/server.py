"""Server mode: requests go to the supervisor's llama-server through its shared aiohttp client."""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from typing import Any, Literal, NoReturn

import aiohttp
import anyio
import msgspec

from backends.base import ChatResult, ChatTask, VisionTask
from backends.catalog import ModelDef
from backends.specs import server_spec
from backends.sse import read_event
from gateway.config import LlmParams
from gateway.errors import BackendTimeout, BackendUnavailable, BadRequest, UpstreamError
from supervisor.actor import Supervisor
from supervisor.command import ServerSpec
from supervisor.messages import Endpoint

log = logging.getLogger("ai_server.backend")


def sampling(p: LlmParams) -> dict[str, Any]:
    """The five sampling parameters as llama-server takes them per request (the three startup
    parameters are its flags; see supervisor.command)."""
    return {
        "temperature": p.temp,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "presence_penalty": p.presence_penalty,
        "mirostat": p.mirostat,
    }


def chat_payload(task: ChatTask) -> dict[str, Any]:
    """The /v1/chat/completions body of a chat task."""
    return {
        "messages": [msgspec.to_builtins(m) for m in task.messages],
        "max_tokens": task.max_tokens,
        **sampling(task.params),
        "stream": False,
    }


def vision_payload(task: VisionTask) -> dict[str, Any]:
    """One user turn with the image as a data URL, kept out of the prompt cache (no pinned
    slot: `id_slot` is left to llama-server)."""
    url = f"data:{task.image.media_type};base64," + base64.b64encode(task.image.data).decode()
    content = [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": task.prompt},
    ]
    payload = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": task.max_tokens,
        **sampling(task.params),
        "cache_prompt": False,
        "stream": False,
    }
    return payload | {"grammar": task.grammar} if task.grammar else payload


JSON = {"Content-Type": "application/json"}
_TOO_LARGE = re.compile(r"input \(\d+ tokens\) is too large to process")


def _json_body(payload: dict[str, Any]) -> bytes | io.BytesIO:
    """Encoded with msgspec (aiohttp's `json=` uses the slower json.dumps); over 1 MiB as a
    stream, which aiohttp writes in chunks instead of in one call on the event loop."""
    data = msgspec.json.encode(payload)
    return io.BytesIO(data) if len(data) > 2**20 else data


class _Upstream(msgspec.Struct):
    """The parts of llama-server's answers we read."""

    choices: list[dict[str, Any]] = []
    usage: dict[str, Any] = {}
    data: list[dict[str, Any]] = []
    timings: dict[str, Any] = {}


def _upstream_message(body: bytes) -> str:
    try:
        error = msgspec.json.decode(body).get("error", {})
        return str(error.get("message") or error)
    except (msgspec.DecodeError, AttributeError):
        return body[:500].decode(errors="replace")


class _ConnectionLost(BackendUnavailable):
    """The connection to llama-server broke (it died or is restarting): 503, Retry-After."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message, retry_after=1)
        self.pid = pid


class ServerBackend:
    name: Literal["server"] = "server"

    def __init__(self, supervisor: Supervisor, timeout: float) -> None:
        self._supervisor = supervisor
        self._timeout = timeout

    def _spec(self, model: ModelDef, params: LlmParams) -> ServerSpec:
        model.file()  # a missing file is named (with its fix), not left to llama-server
        return server_spec(model, params)

    async def chat(self, task: ChatTask) -> ChatResult:
        spec = self._spec(task.model, task.params)
        return self._result(await self._post(spec, "/v1/chat/completions", chat_payload(task)))

    async def vision(self, task: VisionTask) -> ChatResult:
        spec = self._spec(task.model, task.params)  # its projector: checked by the Job
        return self._result(await self._post(spec, "/v1/chat/completions", vision_payload(task)))

    def _result(self, answer: _Upstream) -> ChatResult:
        try:
            choice = answer.choices[0]
            return ChatResult(
                content=choice["message"]["content"] or "",
                prompt_tokens=answer.usage["prompt_tokens"],
                completion_tokens=answer.usage["completion_tokens"],
                finish_reason=choice.get("finish_reason"),
                tokens_per_second=answer.timings.get("predicted_per_second"),
            )
        except (IndexError, KeyError, TypeError) as exc:
            raise UpstreamError(f"llama-server answered an unexpected shape: {exc!r}") from None

    async def embed(
        self, model: ModelDef, texts: Sequence[str], params: LlmParams
    ) -> list[list[float]]:
        spec = self._spec(model, params)
        payload = {"input": list(texts)}
        try:
            answer = await self._post(spec, "/v1/embeddings", payload)
        except _ConnectionLost as lost:  # idempotent: once more, on the restarted process
            log.warning("backend.retry embeddings after: %s", lost.message)
            answer = await self._post(spec, "/v1/embeddings", payload, replacing=lost.pid)
        rows = sorted(answer.data, key=lambda row: int(row.get("index", 0)))
        return [row["embedding"] for row in rows]

    async def chat_stream(self, task: ChatTask, include_usage: bool) -> AsyncGenerator[bytes, None]:
        """llama-server's own SSE events, each passed on as soon as it is read. Leaving the
        loop early (the client went away) closes the upstream connection, which makes
        llama-server stop generating and free its slot."""
        spec = self._spec(task.model, task.params)
        payload = chat_payload(task) | {
            "stream": True,
            "stream_options": {"include_usage": include_usage},
        }
        async with self._supervisor.lease(spec) as endpoint, AsyncExitStack() as stack:
            with self._upstream_errors(spec, endpoint):
                # llama-server drops a kept-alive connection just after a streamed response,
                # and the next request sent on it fails: a stream gets a connection of its own.
                resp = await stack.enter_async_context(
                    self._supervisor.http.post(
                        endpoint.url + "/v1/chat/completions",
                        data=_json_body(payload),
                        headers=JSON | {"Connection": "close"},
                    )
                )
                if resp.status != 200:
                    self._raise_for(spec, resp.status, await resp.read())
            while True:
                with self._upstream_errors(spec, endpoint):  # a deadline per event
                    event = await read_event(resp.content)
                if event is None:
                    return
                yield event

    async def _post(
        self, spec: ServerSpec, path: str, payload: dict[str, Any], replacing: int | None = None
    ) -> _Upstream:
        async with self._supervisor.lease(spec, replacing) as endpoint:
            with self._upstream_errors(spec, endpoint):
                async with self._supervisor.http.post(
                    endpoint.url + path, data=_json_body(payload), headers=JSON
                ) as resp:
                    body = await resp.read()
        if resp.status != 200:
            self._raise_for(spec, resp.status, body)
        try:
            return msgspec.json.decode(body, type=_Upstream)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"llama-server answered invalid JSON: {exc}") from None

    def _raise_for(self, spec: ServerSpec, status: int, body: bytes) -> NoReturn:
        message = _upstream_message(body)
        # llama-server's 4xx are about the request (e.g. it exceeds the context), and so is
        # the 500 it answers for embedding input larger than its batch.
        if status >= 500 and not _TOO_LARGE.search(message):
            self._supervisor.report_failure(spec)
            raise UpstreamError(f"llama-server: {message}")
        raise BadRequest(f"llama-server rejected the request: {message}")

    @contextmanager
    def _upstream_errors(self, spec: ServerSpec, endpoint: Endpoint) -> Iterator[None]:
        """The one place aiohttp's exceptions become ours. Either may mean a wedged or dead
        server: the supervisor probes it (and sees a dead one exit on its own)."""
        try:
            with anyio.fail_after(self._timeout):
                yield
        except TimeoutError:
            self._supervisor.report_failure(spec)
            raise BackendTimeout(
                f"llama-server did not answer within {self._timeout:.0f} s"
            ) from None
        except aiohttp.ClientError as exc:
            self._supervisor.report_failure(spec)
            raise _ConnectionLost(
                f"llama-server connection lost: {exc or type(exc).__name__}", endpoint.pid
            ) from None
