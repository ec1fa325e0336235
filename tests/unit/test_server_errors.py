"""Server mode's one boundary with aiohttp (`ServerBackend._upstream_errors`, `_raise_for`):
what llama-server's failures become, driven through `ServerBackend` against llama-server
URLs mocked by aioresponses, and the status each gets at the edge (`gateway.errors`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import anyio
import pytest
from aiohttp.abc import AbstractStreamWriter
from aioresponses import aioresponses
from yarl import URL

from backends.base import ChatTask
from backends.catalog import ModelDef
from backends.router import Router, Target, Upstream
from backends.server import ServerBackend
from core.chat import ChatRequest, Message, TextDelta
from core.config import LlmParams
from core.errors import (
    AiServerError,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    ContextExceeded,
    UpstreamError,
)
from gateway.errors import headers_of, status_of
from supervisor.actor import Supervisor
from supervisor.command import ServerSpec
from supervisor.remote import Remote, RemoteSpec
from supervisor.states import State

LOCAL = "http://127.0.0.1:8091"
REMOTE = "http://10.0.0.7:8080"
PID = 4242
MODEL = ModelDef(name="m", path="/nowhere.gguf")
TASK = ChatTask(
    request=ChatRequest(messages=(Message.of("user", "Hi"),)),
    model=MODEL,
    params=LlmParams(),
    max_tokens=8,
)


class _Response(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds a response without the `stream_writer` that aiohttp 3.14's
    requires (pnuckowski/aioresponses#289, open): this one has a writer that sent nothing."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        sent = cast(AbstractStreamWriter, SimpleNamespace(output_size=0))
        super().__init__(method, url, **{"stream_writer": sent, **kwargs})


def _post(mocked: aioresponses, url: str, **answer: Any) -> None:
    """llama-server at `url` answers one POST with `answer` (aioresponses' arguments)."""
    mocked.post(url, response_class=_Response, **answer)


class _Endpoint:
    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid


class _Supervisor:
    """What ServerBackend asks of the supervisor: a READY llama-server at LOCAL (its lease),
    the shared session, and the failures it reports."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.failures: list[ServerSpec] = []
        self.leases: list[int | None] = []  # `replacing` of each lease

    def load_of(self, spec: ServerSpec) -> tuple[State, int, bool]:
        return State.READY, 0, False

    @asynccontextmanager
    async def lease(self, spec: ServerSpec, replacing: int | None = None) -> AsyncIterator[Any]:
        self.leases.append(replacing)
        yield _Endpoint(LOCAL, PID if replacing is None else PID + 1)

    def report_failure(self, spec: ServerSpec) -> None:
        self.failures.append(spec)


class _Router:
    """One model: not routed (its only local llama-server), or routed to `remote` alone."""

    def __init__(self, supervisor: _Supervisor, remote: Remote | None = None) -> None:
        self.supervisor = supervisor
        self.remote = remote
        self.reported: list[str] = []

    def routes(self, model: ModelDef) -> bool:
        return self.remote is not None

    def pick(self, model: ModelDef, params: LlmParams, exclude: frozenset[str]) -> Target | None:
        return self.remote if self.remote and self.remote.url not in exclude else None

    @contextmanager
    def watch(self, target: Target) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            yield scope

    @asynccontextmanager
    async def lease(self, target: Target, replacing: int | None = None) -> AsyncIterator[Upstream]:
        if isinstance(target, Remote):
            yield Upstream(target.url, target.headers)
        else:
            async with self.supervisor.lease(target, replacing) as endpoint:
                yield Upstream(endpoint.url, {}, endpoint.pid)

    def report(self, target: Target, reason: str) -> None:
        self.reported.append(reason)

    def served(self, target: Target) -> None:
        pass


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as mock:
        yield mock


@pytest.fixture
async def supervisor(mocked: aioresponses) -> AsyncIterator[_Supervisor]:
    async with aiohttp.ClientSession() as http:
        yield _Supervisor(http)


def _backend(supervisor: _Supervisor, router: _Router, timeout: float = 30) -> ServerBackend:
    return ServerBackend(cast(Supervisor, supervisor), cast(Router, router), timeout)


def _status(exc: AiServerError) -> tuple[int, dict[str, str] | None]:
    return status_of(exc), headers_of(exc)


def _error(message: str) -> dict[str, Any]:
    return {"error": {"code": 500, "message": message, "type": "server_error"}}


async def test_server_errors_a_lost_connection_is_503_with_retry_and_a_report(
    mocked: aioresponses, supervisor: _Supervisor
) -> None:
    url = f"{LOCAL}/v1/chat/completions"
    _post(mocked, url, exception=aiohttp.ServerDisconnectedError())
    _post(mocked, url, exception=aiohttp.ClientConnectionError(f"refused by {LOCAL}"))
    with pytest.raises(BackendUnavailable, match="llama-server connection lost") as caught:
        await _backend(supervisor, _Router(supervisor)).chat(TASK)
    assert _status(caught.value) == (503, {"Retry-After": "1"})
    assert caught.value.type == "backend_unavailable" and len(supervisor.failures) == 2
    assert supervisor.leases == [None, PID]  # sent once more, to its successor
    assert LOCAL not in caught.value.message  # aiohttp's words are for the gateway's log


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
async def test_server_errors_a_chat_is_sent_again_to_the_process_replacing_one_that_died(
    mocked: aioresponses, supervisor: _Supervisor, stream: bool
) -> None:
    url = f"{LOCAL}/v1/chat/completions"
    _post(mocked, url, exception=aiohttp.ServerDisconnectedError())
    if stream:
        body = (
            b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
        )
        _post(mocked, url, body=body, content_type="text/event-stream")
        backend = _backend(supervisor, _Router(supervisor))
        events = [event async for event in backend.chat_stream(TASK)]
        assert events[0] == TextDelta(text="hi")
    else:
        choice = {"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}
        _post(mocked, url, payload={"choices": [choice]})
        answer = await _backend(supervisor, _Router(supervisor)).chat(TASK)
        assert answer.text == "hi"
    assert supervisor.leases == [None, PID]


@pytest.mark.parametrize(
    "exception", [TimeoutError(), aiohttp.ServerTimeoutError()], ids=["asyncio", "aiohttp"]
)
async def test_server_errors_a_timeout_is_504_and_a_report(
    mocked: aioresponses, supervisor: _Supervisor, exception: Exception
) -> None:
    # aiohttp's ServerTimeoutError is a ClientError too: a timeout first, not a lost connection.
    _post(mocked, f"{LOCAL}/v1/chat/completions", exception=exception)
    router = _Router(supervisor)
    with pytest.raises(BackendTimeout, match="did not answer within 30 s") as caught:
        await _backend(supervisor, router).chat(TASK)
    assert _status(caught.value) == (504, None)
    assert router.reported == ["no answer within 30 s"] and supervisor.failures == []


async def test_server_errors_our_deadline_is_504(
    mocked: aioresponses, supervisor: _Supervisor
) -> None:
    async def never(url: object, **kwargs: object) -> None:
        await anyio.sleep_forever()

    _post(mocked, f"{LOCAL}/v1/chat/completions", callback=never)
    with pytest.raises(BackendTimeout) as caught:
        await _backend(supervisor, _Router(supervisor), timeout=0.05).chat(TASK)
    assert status_of(caught.value) == 504


@pytest.mark.parametrize("status", [400, 404])
async def test_server_errors_llama_servers_4xx_is_400_with_its_message(
    mocked: aioresponses, supervisor: _Supervisor, status: int
) -> None:
    message = "the request exceeds the available context size"
    _post(mocked, f"{LOCAL}/v1/chat/completions", status=status, payload=_error(message))
    with pytest.raises(BadRequest, match=f"rejected the request: {message}") as caught:
        await _backend(supervisor, _Router(supervisor)).chat(TASK)
    assert status_of(caught.value) == 400 and supervisor.failures == []


async def test_server_errors_a_prompt_over_the_context_is_context_exceeded(
    mocked: aioresponses, supervisor: _Supervisor
) -> None:
    """llama-server's exceed_context_size_error, with its counts: OpenAI's code, Anthropic's
    words (what Codex and Claude Code compact a conversation on)."""
    error = {
        "code": 400,
        "message": "request (9000 tokens) exceeds the available context size (8192 tokens)",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 9000,
        "n_ctx": 8192,
    }
    _post(mocked, f"{LOCAL}/v1/chat/completions", status=400, payload={"error": error})
    with pytest.raises(ContextExceeded) as caught:
        await _backend(supervisor, _Router(supervisor)).chat(TASK)
    assert caught.value.message == "prompt is too long: 9000 tokens > 8192 maximum"
    assert (status_of(caught.value), caught.value.code) == (400, "context_length_exceeded")
    assert supervisor.failures == []


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [(400, b"", " with an empty body"), (403, b"<html>Forbidden</html>", ": <html>Forbidden")],
)
async def test_server_errors_a_4xx_without_llama_servers_error_is_502_and_a_report(
    mocked: aioresponses, supervisor: _Supervisor, status: int, body: bytes, said: str
) -> None:
    # Issue 29: not llama-server's verdict on the request (it always sends its JSON error),
    # but whatever answered at its address.
    _post(mocked, f"{LOCAL}/v1/chat/completions", status=status, body=body)
    with pytest.raises(UpstreamError, match=f"answered HTTP {status}{said}") as caught:
        await _backend(supervisor, _Router(supervisor)).chat(TASK)
    assert status_of(caught.value) == 502 and len(supervisor.failures) == 1


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_llama_servers_5xx_is_502_and_a_report(
    mocked: aioresponses, supervisor: _Supervisor, status: int
) -> None:
    _post(mocked, f"{LOCAL}/v1/chat/completions", status=status, payload=_error("slot crashed"))
    with pytest.raises(UpstreamError, match="llama-server: slot crashed") as caught:
        await _backend(supervisor, _Router(supervisor)).chat(TASK)
    assert status_of(caught.value) == 502 and len(supervisor.failures) == 1


async def test_server_errors_a_non_json_error_body_is_quoted(
    mocked: aioresponses, supervisor: _Supervisor
) -> None:
    _post(mocked, f"{LOCAL}/v1/chat/completions", status=502, body=b"<html>Bad Gateway</html>")
    with pytest.raises(UpstreamError, match="llama-server: <html>Bad Gateway</html>"):
        await _backend(supervisor, _Router(supervisor)).chat(TASK)


async def test_server_errors_input_too_large_is_400_though_llama_server_says_500(
    mocked: aioresponses, supervisor: _Supervisor
) -> None:
    message = "input (600 tokens) is too large to process. increase the physical batch size"
    _post(mocked, f"{LOCAL}/v1/embeddings", status=500, payload=_error(message))
    with pytest.raises(BadRequest, match="too large to process") as caught:
        await _backend(supervisor, _Router(supervisor)).embed(MODEL, ["long"], LlmParams())
    assert status_of(caught.value) == 400 and supervisor.failures == []


async def test_server_errors_an_embedding_is_retried_once_on_the_restarted_process(
    mocked: aioresponses, supervisor: _Supervisor
) -> None:
    url = f"{LOCAL}/v1/embeddings"
    _post(mocked, url, exception=aiohttp.ClientConnectionError("reset"))
    _post(mocked, url, payload={"data": [{"index": 0, "embedding": [0.5]}], "usage": {}})
    embedded = await _backend(supervisor, _Router(supervisor)).embed(MODEL, ["x"], LlmParams())
    assert embedded.vectors == [[0.5]]
    assert supervisor.leases == [None, PID]  # the second lease replaces the process that failed


async def test_server_errors_a_stream_refused_before_its_first_event_is_mapped_too(
    mocked: aioresponses, supervisor: _Supervisor
) -> None:
    _post(mocked, f"{LOCAL}/v1/chat/completions", status=400, payload=_error("bad grammar"))
    with pytest.raises(BadRequest, match="bad grammar"):
        async for _ in _backend(supervisor, _Router(supervisor)).chat_stream(TASK):
            pass


@pytest.mark.parametrize("status", [401, 403])
async def test_server_errors_a_remote_refusing_our_key_is_502_naming_it(
    mocked: aioresponses, supervisor: _Supervisor, status: int
) -> None:
    remote = Remote("m", RemoteSpec(url=REMOTE, api_key="our-key"), default_slots=1)
    _post(mocked, f"{REMOTE}/v1/chat/completions", status=status, payload=_error("invalid key"))
    router = _Router(supervisor, remote)
    with pytest.raises(UpstreamError, match=f"{REMOTE} refused our API key") as caught:
        await _backend(supervisor, router).chat(TASK)
    assert str(status) in caught.value.message and "our-key" not in caught.value.message
    assert status_of(caught.value) == 502 and router.reported == [caught.value.message]
    assert supervisor.failures == []  # a remote is not the supervisor's
    request = next(iter(mocked.requests.values()))[0]
    assert request.kwargs["headers"]["Authorization"] == "Bearer our-key"


async def test_server_errors_a_remote_connection_lost_names_its_url(
    mocked: aioresponses, supervisor: _Supervisor
) -> None:
    remote = Remote("m", RemoteSpec(url=REMOTE), default_slots=1)
    _post(mocked, f"{REMOTE}/v1/chat/completions", exception=aiohttp.ClientConnectionError())
    with pytest.raises(BackendUnavailable, match=f"llama-server at {REMOTE} connection lost"):
        await _backend(supervisor, _Router(supervisor, remote)).chat(TASK)
