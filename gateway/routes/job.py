"""One request's trip through the dispatcher, admission control and metrics: what the /api and
/v1 routes share, whatever shape their bodies and answers have."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from functools import partial

import anyio
import msgspec
from starlette.requests import Request

from backends.base import ChatResult, ChatTask, Embedded, VisionTask
from backends.catalog import ModelDef
from backends.vision import prepare_image
from gateway.admission import admitted
from gateway.budgets import Budget
from gateway.config import LlmParams
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.lifespan import services
from gateway.responses import EventStream, event_stream
from gateway.schemas import ChatMessage


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

    def chat_task(
        self, messages: Sequence[ChatMessage], max_tokens: int | None, params: LlmParams
    ) -> ChatTask:
        wanted = max_tokens or self.svc.settings.limits.default_max_tokens
        return ChatTask(
            model=self.model,
            messages=messages,
            max_tokens=min(wanted, self.model.ctx_size or params.ctx_size),
            params=params,
        )

    @contextmanager
    def budgeted(self, tokens: int) -> Iterator[Callable[[int | None, int | None], None]]:
        """Charge this key's budget (if any) one request and `tokens` up front (429 past
        it); yields the function that settles the charge to the real counts. A request that
        fails is refunded its tokens; one whose counts are unknown keeps its charge."""
        budget = self.budget
        if budget is None:
            yield lambda prompt, completion: None
            return
        budget.charge(tokens)

        def settle(prompt: int | None, completion: int | None) -> None:
            if prompt is not None and completion is not None:
                budget.settle(tokens, prompt + completion)

        try:
            yield settle
        except BaseException:
            budget.settle(tokens, 0)
            raise

    async def chat(self, task: ChatTask) -> ChatResult:
        with self.budgeted(task.max_tokens) as settle:
            async with self.lane.slot(self.client):
                result = await self.backend.chat(task)
            settle(result.prompt_tokens, result.completion_tokens)
        self.svc.metrics.record_generation(
            self.backend.name, result.completion_tokens, result.tokens_per_second
        )
        return result

    async def chat_stream(self, task: ChatTask, include_usage: bool) -> EventStream:
        # Charged before it queues; refunded if it fails before its first event.
        with self.budgeted(task.max_tokens) as settle:
            events = self.backend.chat_stream(task, include_usage=True)
            counted = self._counted(events, include_usage, settle)
            return await event_stream(admitted(self.lane, counted, self.client))

    async def _counted(
        self,
        events: AsyncGenerator[bytes, None],
        include_usage: bool,
        settle: Callable[[int | None, int | None], None],
    ) -> AsyncGenerator[bytes, None]:
        """A stream's completion tokens into the token metrics, and its budget settled, from
        its usage chunk (asked for always; passed on only to a client that asked for it)."""
        async with aclosing(events):
            async for event in events:
                if b'"usage"' in event and b'"choices":[]' in event:
                    body = msgspec.json.decode(event.removeprefix(b"data: "))
                    usage = body.get("usage", {})
                    completion = usage.get("completion_tokens")
                    self.svc.metrics.record_generation(self.backend.name, completion)
                    settle(usage.get("prompt_tokens"), completion)
                    if not include_usage:
                        continue
                yield event

    async def vision(
        self, image: bytes, prompt: str, max_tokens: int, params: LlmParams, grammar: str | None
    ) -> ChatResult:
        """Clean the image in a worker thread (inside the slot: concurrent decodes are bounded
        like everything else), then ask the backend about it."""
        limits = self.svc.settings.vision
        self.model.projector()
        if len(image) > limits.max_image_bytes:
            raise PayloadTooLarge(f"the image is over {limits.max_image_bytes} bytes")
        prepare = partial(prepare_image, max_side=limits.max_side, max_pixels=limits.max_pixels)
        with self.budgeted(max_tokens) as settle:
            async with self.lane.slot(self.client):
                prepared = await anyio.to_thread.run_sync(prepare, image)
                task = VisionTask(
                    model=self.model,
                    image=prepared,
                    prompt=prompt,
                    max_tokens=max_tokens,
                    params=params,
                    grammar=grammar,
                )
                result = await self.backend.vision(task)
            settle(result.prompt_tokens, result.completion_tokens)
        self.svc.metrics.record_generation(
            self.backend.name, result.completion_tokens, result.tokens_per_second
        )
        return result

    async def embed(self, inputs: str | list[str]) -> Embedded:
        texts = [inputs] if isinstance(inputs, str) else inputs
        if empty := [i for i, text in enumerate(texts) if not text.strip()]:
            raise BadRequest(f"input {empty[0]} is empty: there is nothing to embed")
        if not self.model.embeddings:
            raise BadRequest(f"model {self.model.name} does not serve embeddings")
        with self.budgeted(0) as settle:
            async with self.lane.slot(self.client):
                embedded = await self.backend.embed(self.model, texts, self.config.llm_params)
            settle(embedded.prompt_tokens, 0)
        return embedded
