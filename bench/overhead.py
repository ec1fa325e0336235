"""What the gateway adds in server mode, measured side by side in one run.

Figure 1: the same small request direct to llama-server and through the gateway (/api and /v1
routes), interleaved: embeddings of a short text, chat with max_tokens=1. The direct chat
sends exactly the body the gateway sends upstream. Figure 2: the same requests through
LiteLLM's proxy in front of the same llama-server (bench/litellm.py). Figure 8: 32 texts
embedded in one request, gateway vs direct, as a throughput ratio."""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import aiohttp
import anyio

from backends.base import ChatTask
from backends.llama_api import chat_payload
from bench.common import BENCH_MODEL, Machine, gateway, percentile, write_section
from bench.litellm import MODEL, VERSION, litellm_proxy
from core.chat import ChatRequest, Message
from core.config import LlmParams

ROUNDS = 100
BATCH_ROUNDS = 10
CHAT = [{"role": "user", "content": "Hi"}]
# What the gateway sends llama-server for CHAT (default parameters).
UPSTREAM_CHAT = chat_payload(
    ChatTask(
        model=BENCH_MODEL,
        request=ChatRequest(messages=(Message.of("user", "Hi"),)),
        max_tokens=1,
        params=LlmParams(),
    )
)
TEXTS = [f"sentence number {i} about llamas and their wool" for i in range(32)]


async def timed(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    async with http.post(url, json=body) as resp:
        await resp.read()
        resp.raise_for_status()
    return time.perf_counter() - started


async def measure(url: str, llama: str, peer: str | None) -> dict[str, list[float]]:
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "embed direct": (llama + "/v1/embeddings", {"input": "hello world"}),
        "embed /api": (url + "/api/generate-embeddings", {"input": "hello world"}),
        "embed /v1": (url + "/v1/embeddings", {"input": "hello world"}),
        "chat direct": (llama + "/v1/chat/completions", UPSTREAM_CHAT),
        "chat /api": (url + "/api/chat", {"messages": CHAT, "max_tokens": 1}),
        "chat /v1": (url + "/v1/chat/completions", {"messages": CHAT, "max_tokens": 1}),
        "batch direct": (llama + "/v1/embeddings", {"input": TEXTS}),
        "batch gateway": (url + "/api/generate-embeddings", {"input": TEXTS}),
    }  # fmt: skip
    if peer:
        cases["embed litellm"] = (peer + "/v1/embeddings", {"input": "hello world", "model": MODEL})
        cases["chat litellm"] = (
            peer + "/v1/chat/completions",
            {"messages": CHAT, "max_tokens": 1, "model": MODEL},
        )
    out: dict[str, list[float]] = {name: [] for name in cases}
    async with aiohttp.ClientSession() as http:
        for target, body in cases.values():  # warm every path
            await timed(http, target, body)
        for i in range(ROUNDS):
            names = [n for n in cases if not n.startswith("batch")]
            if i < BATCH_ROUNDS:
                names += ["batch direct", "batch gateway"]
            for name in names if i % 2 else names[::-1]:  # alternate the order
                out[name].append(await timed(http, *cases[name]))
    return out


def added(out: dict[str, list[float]], route: str, direct: str) -> str:
    p50 = statistics.median(out[route]) - statistics.median(out[direct])
    p99 = percentile(out[route], 0.99) - percentile(out[direct], 0.99)
    return f"{p50 * 1000:+.2f} / {p99 * 1000:+.2f}"


def paired(out: dict[str, list[float]], route: str, direct: str) -> tuple[float, str]:
    """The median of each round's difference (route less direct, the same round), and the
    quartiles, ms: the machine's drift between rounds cancels out."""
    diffs = [(a - b) * 1000 for a, b in zip(out[route], out[direct], strict=False)]
    q1, median, q3 = statistics.quantiles(diffs, n=4)
    return median, f"**{median:+.2f}** ({q1:+.2f} / {q3:+.2f})"


def main() -> int:
    machine = Machine()
    with gateway() as (url, llama, _), litellm_proxy(llama) as peer:
        out = anyio.run(measure, url, llama, peer)
    ms = {name: f"{statistics.median(v) * 1000:.2f}" for name, v in out.items()}
    if peer:
        peer_lines = [
            f"| embeddings, 1 short text | {added(out, 'embed /v1', 'embed direct')} | "
            f"{added(out, 'embed litellm', 'embed direct')} |",
            f"| chat, max_tokens 1 | {added(out, 'chat /v1', 'chat direct')} | "
            f"{added(out, 'chat litellm', 'chat direct')} |",
        ]
    else:
        peer_lines = ["| LiteLLM could not be installed or started here: see the bench log | | |"]
    ratio = statistics.median(out["batch direct"]) / statistics.median(out["batch gateway"])
    embed, embed_text = paired(out, "embed /v1", "embed direct")
    verdict = "met" if embed <= 1 else f"**not met**, by {embed - 1:.2f} ms"
    write_section(
        "overhead",
        [
            f"**Added latency, server mode** ({ROUNDS} rounds, interleaved; ms)",
            "",
            "| request | direct p50 | added p50 / p99 via /api | added p50 / p99 via /v1 |",
            "|---|---|---|---|",
            f"| embeddings, 1 short text | {ms['embed direct']} | "
            f"{added(out, 'embed /api', 'embed direct')} | "
            f"{added(out, 'embed /v1', 'embed direct')} |",
            f"| chat, max_tokens 1 | {ms['chat direct']} | "
            f"{added(out, 'chat /api', 'chat direct')} | {added(out, 'chat /v1', 'chat direct')} |",
            "",
            "Paired: each round's time through the gateway less the direct one's in the same "
            "round; median (quartiles), ms:",
            "",
            "| request | via /api | via /v1 |",
            "|---|---|---|",
            f"| embeddings, 1 short text | {paired(out, 'embed /api', 'embed direct')[1]} | "
            f"{embed_text} |",
            f"| chat, max_tokens 1 | {paired(out, 'chat /api', 'chat direct')[1]} | "
            f"{paired(out, 'chat /v1', 'chat direct')[1]} |",
            "",
            f"Target: one embedding through /v1 adds <= 1 ms p50 (paired median): {verdict}. "
            "The gateway on uvloop + httptools with its defaults (no API key); llama-server's two "
            "threads and the gateway share this machine's two cores.",
            "",
            f"**The peer**: added p50 / p99 (ms) over direct, same rounds, LiteLLM {VERSION} "
            "proxy (one worker) in front of the same llama-server",
            "",
            "| request | AI Server /v1 | LiteLLM /v1 |",
            "|---|---|---|",
            *peer_lines,
            "",
            f"**Embeddings batch** (32 texts, {BATCH_ROUNDS} rounds): gateway throughput "
            f"{ratio:.3f}x direct (median {ms['batch gateway']} vs {ms['batch direct']} ms).",
            "",
            machine.line(),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
