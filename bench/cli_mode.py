"""Cli mode (figure 5): per-request wall time through the gateway vs running the same binary
with the same argv directly, alternating. The direct runs use the gateway's own argv
builders and prompt renderer, so both run exactly the same llama.cpp work."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from backends import toolchain
from backends.cli_args import completion_argv, embedding_argv
from backends.prompt import render_chat
from bench.common import gateway, write_section
from core.chat import Message
from core.config import LlmParams, cache_dir

ROUNDS = 12
MAX_TOKENS = 4
CONTENT = "Hi"
TEXT = "hello world"


def post(url: str, body: dict[str, object]) -> float:
    request = urllib.request.Request(  # noqa: S310
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as resp:  # noqa: S310
        resp.read()
    return time.perf_counter() - started


def run(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)  # noqa: S603
    return time.perf_counter() - started


def main() -> int:
    cache = cache_dir()
    model = str(toolchain.resolve_model("chat", None, cache))
    params = LlmParams()
    with tempfile.TemporaryDirectory() as tmp, gateway("cli") as gw:
        prompt = Path(tmp) / "prompt.txt"
        rendered = render_chat("gemma", [Message.of("user", CONTENT)], Path(model))
        prompt.write_text(rendered + "\n")  # as the cli backend writes it
        text = Path(tmp) / "input.txt"
        text.write_text(TEXT)
        binary = str(toolchain.resolve_binary("llama-completion", None, cache))
        embedder = str(toolchain.resolve_binary("llama-embedding", None, cache))
        cases: dict[str, Callable[[], float]] = {
            "chat direct": lambda: run(
                completion_argv(binary, model, str(prompt), params, MAX_TOKENS)
            ),
            "chat gateway": lambda: post(
                gw.url + "/api/chat",
                {"messages": [{"role": "user", "content": CONTENT}], "max_tokens": MAX_TOKENS},
            ),
            "embed direct": lambda: run(embedding_argv(embedder, model, str(text), "|", params)),
            "embed gateway": lambda: post(gw.url + "/api/generate-embeddings", {"input": TEXT}),
        }
        out: dict[str, list[float]] = {name: [] for name in cases}
        for measure in cases.values():  # warm the page cache for both
            measure()
        for i in range(ROUNDS):
            for name in cases if i % 2 == 0 else reversed(cases):
                out[name].append(cases[name]())
    ms = {name: statistics.median(values) * 1000 for name, values in out.items()}
    write_section(
        "cli",
        [
            f"**Cli mode** (wall time per request, {ROUNDS} rounds alternating; ms, median)",
            "",
            "| request | the binary run directly | through the gateway | ratio |",
            "|---|---|---|---|",
            f"| chat, max_tokens {MAX_TOKENS} (llama-completion) | {ms['chat direct']:.0f} | "
            f"{ms['chat gateway']:.0f} | {ms['chat gateway'] / ms['chat direct']:.3f}x |",
            f"| embeddings, 1 short text (llama-embedding) | {ms['embed direct']:.0f} | "
            f"{ms['embed gateway']:.0f} | {ms['embed gateway'] / ms['embed direct']:.3f}x |",
            "",
            "Target <= 1.05x.",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
