"""One request's trip through the dispatcher, admission control and metrics: what the /api and
/v1 routes share, whatever shape their bodies and answers have."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from functools import partial

import anyio
import msgspec
from starlette.requests import Request

from backends.base import ChatTask, Embedded
from backends.catalog import ModelDef
from backends.specs import local_specs
from backends.vision import prepare_image
from core.chat import Answer, ChatRequest, Event, Failure, ImagePart, Usage
from core.errors import AiServerError, BadRequest, PayloadTooLarge
from gateway.admission import admitted
from gateway.budgets import Budget
from gateway.lifespan import services
from gateway.responses import EventStream, event_stream

# A dialect's stream: the events of an answer as its wire format's chunks.
Encoder = Callable[[AsyncIterator[Event]], AsyncGenerator[bytes, None]]


class Job:
    def __init__(self, request: Request) -> None:
        self.svc = services(request)
        self.config = self.svc.store.current  # the mode the request started in, to its end
        self.backend = self.svc.dispatcher.backend_for(self.config)
        request.state.backend = self.backend.name  # for the access log and metrics
        # Who asked (gateway.auth names every client of a guarded route): fair shares.
        client = request.scope.get("state", {}).get("client")
        self.client = client.name if client is not None else ""
        self.budget: Budget | None = client.budget if client is not None else None

    def use(self, requested: str | None, role: str) -> ModelDef:
        """The model this request asked for by name or alias (404 for neither), else its
        role's; and the admission lane that model's requests share."""
        self.model = self.svc.dispatcher.catalog.resolve(requested, role)
        self.lane = self.svc.admission.lane(self.backend.name, self.model.name)
        return self.model

    @property
    def max_body(self) -> int:
        return self.svc.settings.limits.max_body_bytes

    def chat_task(self, request: ChatRequest) -> ChatTask:
        """`request` against the config: its parameters, and its token budget bounded by
        the model's context."""
        params = request.sampling.apply_to(self.config.llm_params)
        wanted = request.max_tokens or self.svc.settings.limits.default_max_tokens
        return ChatTask(
            request=request,
            model=self.model,
            params=params,
            max_tokens=min(wanted, self.model.ctx_size or params.ctx_size),
        )

    @contextmanager
    def budgeted(self, tokens: int) -> Iterator[Callable[[Usage | None], None]]:
        """Charge this key's budget (if any) one request and `tokens` up front (429 past
        it); yields the function that settles the charge to the real counts. A request that
        fails is refunded its tokens; one whose counts are unknown keeps its charge."""
        budget = self.budget
        if budget is None:
            yield lambda usage: None
            return
        budget.charge(tokens)

        def settle(usage: Usage | None) -> None:
            if usage is not None:
                budget.settle(tokens, usage.prompt_tokens + usage.completion_tokens)

        try:
            yield settle
        except BaseException:
            budget.settle(tokens, 0)
            raise

    def _record(self, usage: Usage | None) -> None:
        if usage is not None:
            self.svc.metrics.record_generation(
                self.backend.name, usage.completion_tokens, usage.tokens_per_second
            )

    async def chat(self, task: ChatTask) -> Answer:
        with self.budgeted(task.max_tokens) as settle:
            async with self.lane.slot(self.client):
                answer = await self.backend.chat(task)
            settle(answer.usage)
        self._record(answer.usage)
        return answer

    async def chat_stream(
        self, task: ChatTask, encode: Encoder, media_type: str | None = None
    ) -> EventStream:
        """The answer streamed in the dialect `encode` writes (SSE unless `media_type` says
        otherwise). Charged before it queues; refunded if it fails before its first event,
        which is then an ordinary error."""
        with self.budgeted(task.max_tokens) as settle:
            counted = self._counted(self.backend.chat_stream(task), settle)
            events = _failing_late(admitted(self.lane, counted, self.client))
            return await event_stream(encode(events), media_type)

    async def _counted(
        self, events: AsyncGenerator[Event, None], settle: Callable[[Usage | None], None]
    ) -> AsyncGenerator[Event, None]:
        """A stream's counts into the token metrics and its budget, from its Usage."""
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Usage):
                    self._record(event)
                    settle(event)
                yield event

    async def vision(self, request: ChatRequest) -> Answer:
        """One image in one user message: cleaned in a worker thread (inside the slot:
        concurrent decodes are bounded like everything else), then asked about."""
        images = request.images
        if len(request.messages) != 1 or len(images) != 1 or request.stream:
            raise BadRequest(
                "images are supported as one image in a single user message, without streaming"
            )
        limits = self.svc.settings.vision
        self.model.projector()
        if len(images[0].data) > limits.max_image_bytes:
            raise PayloadTooLarge(f"the image is over {limits.max_image_bytes} bytes")
        prepare = partial(prepare_image, max_side=limits.max_side, max_pixels=limits.max_pixels)
        params = request.sampling.apply_to(self.config.llm_params)
        max_tokens = request.max_tokens or self.svc.settings.limits.default_max_tokens
        with self.budgeted(max_tokens) as settle:
            async with self.lane.slot(self.client):
                prepared = await anyio.to_thread.run_sync(prepare, images[0].data)
                image = ImagePart(data=prepared.data, media_type=prepared.media_type)
                (message,) = request.messages
                parts = tuple(image if p is images[0] else p for p in message.content)
                cleaned = msgspec.structs.replace(message, content=parts)
                task = ChatTask(
                    request=msgspec.structs.replace(request, messages=(cleaned,)),
                    model=self.model,
                    params=params,
                    max_tokens=max_tokens,
                )
                answer = await self.backend.vision(task)
            settle(answer.usage)
        self._record(answer.usage)
        return answer

    async def embed(self, inputs: str | list[str]) -> Embedded:
        texts = [inputs] if isinstance(inputs, str) else inputs
        if empty := [i for i, text in enumerate(texts) if not text.strip()]:
            raise BadRequest(f"input {empty[0]} is empty: there is nothing to embed")
        if not self.model.embeddings:
            raise BadRequest(f"model {self.model.name} does not serve embeddings")
        with self.budgeted(0) as settle:
            async with self.lane.slot(self.client):
                embedded = await self.backend.embed(self.model, texts, self.config.llm_params)
            if embedded.prompt_tokens is not None:
                settle(Usage(prompt_tokens=embedded.prompt_tokens, completion_tokens=0))
        return embedded

    async def keep_alive(self, seconds: float | None) -> None:
        """Ollama's `keep_alive` for this request's model (after `use`): how long it stays
        loaded once idle after this request, in seconds (`math.inf`: for ever; 0: unloaded
        as soon as this request is done; None: the config's TTL again). Server mode only:
        cli mode keeps nothing loaded, and a remote instance's pool is its own."""
        if self.backend.name == "server":
            for spec in local_specs(self.model, self.config.llm_params):
                await self.svc.supervisor.keep_alive(spec, seconds)

    async def warm(self, seconds: float | None) -> None:
        """A request with nothing to answer (Ollama's empty prompt or messages): with
        `keep_alive` 0 the model is unloaded now (drained first); otherwise it is loaded,
        and stays `seconds` (as `keep_alive`). Returns once that is done."""
        if self.backend.name != "server" or not self.model.replicas:
            return
        specs = local_specs(self.model, self.config.llm_params)
        if seconds == 0:
            for spec in specs:
                await self.svc.supervisor.unload(spec)
            return
        self.model.file()
        await self.keep_alive(seconds)
        async with anyio.create_task_group() as tg:
            for spec in specs:
                tg.start_soon(self.svc.supervisor.ensure_ready, spec)


async def _failing_late(events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
    """A failure after the first event as a Failure event, which every dialect can write
    (the response has started: its status can no longer say it); one before it raises."""
    started = False
    async with aclosing(events):
        try:
            async for event in events:
                started = True
                yield event
        except AiServerError as exc:
            if not started:
                raise
            yield Failure(type=exc.type, message=exc.message)
