"""Reading llama-server's server-sent events (its streamed chat completions)."""

from __future__ import annotations

import aiohttp


async def read_event(content: aiohttp.StreamReader) -> bytes | None:
    """The next complete event (its lines and the blank line ending it), None at the end."""
    lines: list[bytes] = []
    while line := await content.readline():
        if line.strip():
            lines.append(line)
        elif lines:
            return b"".join(lines) + b"\n"
    return b"".join(lines) + b"\n" if lines else None
