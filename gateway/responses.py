"""Server-sent event responses, streamed in the request's own task."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStream(Response):
    """SSE whose first event was produced before the response starts, so a failure before it
    is still an ordinary JSON error with its status (one after it is the dialect's error
    event, written by its encoder). Cancellation (the client went away) closes `rest`, whose
    cleanup aborts the upstream request or stops the process."""

    media_type = "text/event-stream"

    def __init__(
        self, first: bytes, rest: AsyncGenerator[bytes, None], media_type: str | None = None
    ) -> None:
        self.status_code = 200
        if media_type is not None:
            self.media_type = media_type  # a dialect's own stream (Ollama's NDJSON)
        self.background = None
        self._first = first
        self._rest = rest
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async with aclosing(self._rest):
            await send({"type": "http.response.body", "body": self._first, "more_body": True})
            async for event in self._rest:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def event_stream(
    events: AsyncGenerator[bytes, None], media_type: str | None = None
) -> EventStream:
    """Wait for the first event (errors before it raise here), then stream the rest."""
    first = await anext(events, b"")
    return EventStream(first, events, media_type)
