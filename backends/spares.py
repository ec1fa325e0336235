"""A kept-alive connection to each upstream, ready for its next stream.

llama-server closes a connection after a streamed answer, so a stream asks for
`Connection: close` and its connection is gone afterwards. aiohttp gives a stream an idle
connection from its pool when there is one; when there is none it opens one first, on the
stream's time to first event (0.5 to 0.8 ms here, bench/streaming.py). After a stream's first
event, `refill` asks for one `GET /health` to its upstream on the shared session, which takes
an idle connection if the pool still has one (and gives it back), or opens one and leaves it
in the pool: the next stream finds it there.

The connector forgets an idle connection before llama-server's keep-alive timeout (5 s)
ends it (gateway.lifespan), so a spare is never one the server is closing."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import anyio
from anyio.abc import TaskStatus

_WITHIN = 2.0  # seconds for one refill: it helps only if it is quick


class Spares:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self._send, self._receive = anyio.create_memory_object_stream[
            tuple[str, Mapping[str, str]]
        ](max_buffer_size=64)
        self._wanted: set[str] = set()  # URLs with a refill queued: one each is enough

    def refill(self, url: str, headers: Mapping[str, str]) -> None:
        """Ask for a spare connection to `url` (llama-server's base URL); never waits."""
        if url in self._wanted:
            return
        try:
            self._send.send_nowait((url, headers))
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # a burst of streams: the ones queued already leave spares
        self._wanted.add(url)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Refill, one at a time, until cancelled (the lifespan's task group)."""
        task_status.started()
        with self._send, self._receive:  # closed here: refills after the end are dropped
            async for url, headers in self._receive:
                self._wanted.discard(url)
                await self._health(url, headers)

    async def _health(self, url: str, headers: Mapping[str, str]) -> None:
        # A failure is the supervisor's or the router's to see, on their own probes.
        with anyio.move_on_after(_WITHIN):
            try:
                async with self._http.get(url + "/health", headers=headers) as resp:
                    await resp.read()
            except aiohttp.ClientError:
                pass
