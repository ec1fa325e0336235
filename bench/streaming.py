"""Time to first token and inter-chunk delay: llama-server direct vs through the gateway.

The same streamed request, alternating between the two targets, on the same llama-server.
Reports median / p99 of each and the difference the gateway adds.

The gateway's own part, without llama-server's noise: the same stream from the instant stub
(bench/stub_llama.py: its events at once), direct and through a gateway whose llama-server is
that stub (with an API key, metrics, the access log, admission), STUB_ROUNDS rounds, the
order alternating, a 5 ms pause before each request as a client's; the paired difference
per round (gateway less direct), median with its quartiles."""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import anyio

from backends.base import ChatTask
from backends.llama_api import chat_payload
from bench.common import (
    BENCH_MODEL,
    ROOT,
    Machine,
    free_port,
    gateway,
    process,
    summary_ms,
    write_section,
)
from core.chat import ChatRequest, Message
from core.config import LlmParams

ROUNDS = 30
PROMPT = "Write a short poem about the sea."
Timings = dict[str, list[float]]


STUB_ROUNDS = 300
KEY = "bench-key"


async def stream_once(
    http: aiohttp.ClientSession, url: str, body: dict[str, object], key: str | None = None
) -> tuple[float, list[float], int]:
    """(time to first event, gaps between events, number of events)."""
    started = time.perf_counter()
    arrivals: list[float] = []
    # A connection per stream for both (llama-server drops kept-alive ones after a stream).
    headers = {"Connection": "close"} | ({"Authorization": f"Bearer {key}"} if key else {})
    async with http.post(url, json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: "):
                arrivals.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return arrivals[0] - started, gaps, len(arrivals)


async def measure(url: str, llama: str) -> dict[str, Timings]:
    task = ChatTask(
        model=BENCH_MODEL,
        request=ChatRequest(messages=(Message.of("user", PROMPT),)),
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


@contextmanager
def stub_gateway() -> Iterator[tuple[str, str]]:
    """(gateway URL, stub URL): a gateway whose llama-server is the stub, and a stub."""
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "llama-server"  # what the gateway's supervisor starts
        stub.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT}/bench/stub_llama.py "$@"\n')
        stub.chmod(0o755)
        port = free_port()
        extra = f'[auth]\napi_keys = ["{KEY}"]\n[binaries]\nllama_server = "{stub}"\n'
        with (
            process([str(stub), "--port", str(port)], f"http://127.0.0.1:{port}/health"),
            gateway(extra=extra) as gw,
        ):
            yield gw.url, f"http://127.0.0.1:{port}"


async def paired(url: str, stub: str) -> tuple[list[float], list[float]]:
    """Per round, the time to first event direct, and through the gateway less direct."""
    body: dict[str, object] = {"messages": [{"role": "user", "content": "Hi"}],
                               "max_tokens": 16, "stream": True}  # fmt: skip
    targets = {"direct": (stub, None), "gateway": (url, KEY)}
    direct, added = [], []
    async with aiohttp.ClientSession() as http:
        for i in range(STUB_ROUNDS + 20):  # the first 20: warm-up
            first: dict[str, float] = {}
            for name in ("direct", "gateway") if i % 2 else ("gateway", "direct"):
                await anyio.sleep(0.005)
                target, key = targets[name]
                path = target + "/v1/chat/completions"
                first[name] = (await stream_once(http, path, body, key))[0]
            if i >= 20:
                direct.append(first["direct"])
                added.append(first["gateway"] - first["direct"])
    return direct, added


def stub_lines(direct: list[float], added: list[float]) -> list[str]:
    q1, median, q3 = statistics.quantiles(added, n=4)
    return [
        f"**The gateway's own part** (instant stub upstream, {STUB_ROUNDS} rounds, paired): "
        f"time to first event direct {statistics.median(direct) * 1000:.2f} ms median; added "
        f"through the gateway **{median * 1000:+.2f} ms** median of the paired differences, "
        f"quartiles {q1 * 1000:+.2f} / {q3 * 1000:+.2f} ms.",
    ]


def main() -> int:
    machine = Machine()
    with stub_gateway() as (url, stub):
        own = stub_lines(*anyio.run(paired, url, stub))
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
            f"Added time to first event, median: {added * 1000:.2f} ms (target <= 2 ms). The "
            "gateway on uvloop + httptools, a stream on a connection of its own to "
            "llama-server, kept open beforehand (backends.spares); both targets get a new "
            "client connection per stream.",
            "",
            *own,
            "",
            machine.line(),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
