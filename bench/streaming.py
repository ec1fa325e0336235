"""Time to first token and inter-chunk delay: llama-server direct vs through the gateway.

The same streamed request, alternating between the two targets, on the same llama-server.
Reports median / p99 of each and the difference the gateway adds."""

from __future__ import annotations

import itertools
import statistics
import sys
import time

import aiohttp
import anyio

from backends.base import ChatTask
from backends.server import chat_payload
from bench.common import BENCH_MODEL, gateway, summary_ms, write_section
from gateway.config import LlmParams
from gateway.schemas import ChatMessage

ROUNDS = 30
PROMPT = "Write a short poem about the sea."
Timings = dict[str, list[float]]


async def stream_once(
    http: aiohttp.ClientSession, url: str, body: dict[str, object]
) -> tuple[float, list[float], int]:
    """(time to first event, gaps between events, number of events)."""
    started = time.perf_counter()
    arrivals: list[float] = []
    # A connection per stream for both (llama-server drops kept-alive ones after a stream).
    async with http.post(url, json=body, headers={"Connection": "close"}) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: "):
                arrivals.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return arrivals[0] - started, gaps, len(arrivals)


async def measure(url: str, llama: str) -> dict[str, Timings]:
    task = ChatTask(
        model=BENCH_MODEL,
        messages=[ChatMessage(role="user", content=PROMPT)],
        max_tokens=16,
        params=LlmParams(temp=0.0),
    )
    bodies: dict[str, dict[str, object]] = {
        "direct": chat_payload(task) | {"stream": True},
        "gateway": {
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 16,
            "temperature": 0.0,
            "stream": True,
        },
    }
    targets = {"direct": llama, "gateway": url}
    out: dict[str, Timings] = {name: {"ttft": [], "gaps": [], "events": []} for name in targets}
    async with aiohttp.ClientSession() as http:
        for name in targets:  # warm both paths
            await stream_once(http, targets[name] + "/v1/chat/completions", bodies[name])
        for i in range(ROUNDS):
            for name in ("direct", "gateway") if i % 2 else ("gateway", "direct"):
                first, between, count = await stream_once(
                    http, targets[name] + "/v1/chat/completions", bodies[name]
                )
                out[name]["ttft"].append(first)
                out[name]["gaps"].extend(between)
                out[name]["events"].append(count)
    return out


def main() -> int:
    with gateway() as (url, llama, _):
        result = anyio.run(measure, url, llama)
    d, g = result["direct"], result["gateway"]
    added = statistics.median(g["ttft"]) - statistics.median(d["ttft"])
    write_section(
        "streaming",
        [
            f"**Streaming** ({ROUNDS} rounds each, alternating; max_tokens 16, temperature 0; "
            "ms, median / p99)",
            "",
            "| | direct llama-server | through the gateway |",
            "|---|---|---|",
            f"| time to first event | {summary_ms(d['ttft'])} | {summary_ms(g['ttft'])} |",
            f"| gap between events | {summary_ms(d['gaps'])} | {summary_ms(g['gaps'])} |",
            f"| events per stream | {sorted(set(d['events']))} | {sorted(set(g['events']))} |",
            "",
            f"Added time to first event, median: {added * 1000:.2f} ms.",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
