"""Ticks between the events of a stream: a stream whose client needs to hear from us while a
long prompt is evaluated (or a tool call is written whole) gets one after each quiet spell.

The events are read in a task of their own, so waiting for the next one can be given up
without disturbing it; that task reads, and closes, the whole stream. An error the stream
raises is passed on as a value, so that the caller decides what it is: an ordinary error
response before anything was sent, an error event after."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from core.errors import AiServerError

T = TypeVar("T")
Tick = TypeVar("Tick")


async def _pump(
    events: AsyncGenerator[T, None], send: MemoryObjectSendStream[T | AiServerError]
) -> None:
    async with send, aclosing(events):
        try:
            async for event in events:
                await send.send(event)
        except AiServerError as exc:
            await send.send(exc)


async def with_ticks(
    events: AsyncGenerator[T, None], tick: Tick, *, first: float, every: float
) -> AsyncGenerator[T | Tick | AiServerError, None]:
    """`events` (an error it raises as the last item), with `tick` after `first` seconds
    without one and then every `every` seconds without one."""
    send, receive = anyio.create_memory_object_stream[T | AiServerError](16)
    wait = first
    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(_pump, events, send)
        try:
            while True:
                got: list[T | AiServerError] = []
                with anyio.move_on_after(wait if wait > 0 else math.inf):
                    try:
                        got.append(await receive.receive())
                    except anyio.EndOfStream:
                        return
                wait = every
                try:
                    yield got[0] if got else tick
                except GeneratorExit:
                    # Closed by the consumer: end the reader and return (raised through
                    # the task group, GeneratorExit would come out wrapped in a group).
                    tg.cancel_scope.cancel()
                    return
        finally:
            tg.cancel_scope.cancel()
