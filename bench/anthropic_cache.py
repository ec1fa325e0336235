"""The cache trap of issue 27: time to first token of a Claude Code-shaped request (tests/
claude_code.py, cut to fit SmolLM2's 8192-token context) in server mode, side by side in one
run: cold (a system prompt llama-server has not seen), the same request again (its prompt
cache hit), and the same request with only its `x-anthropic-billing-header:` line changed,
once as Claude Code sends it (/v1/messages leaves that line out of the prompt) and once with
the line moved after the one-line identity block, where it stays at the top of the prompt
(the prompt as it was without that rule). Each request is streamed with max_tokens 1: the time
is the prompt's evaluation, plus the tools' grammar and one token."""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from typing import Any

import aiohttp
import anyio

from backends.catalog import SMOLLM2
from bench.common import Machine, gateway, write_section
from tests.claude_code import request

ROUNDS = 3
TOOLS = 6  # of Claude Code's 24, with the system prompt below: well inside 8192 tokens
SYSTEM_SIZE = 5000


def anthropic_body(nonce: str, cch: str, *, keep_line: bool = False) -> dict[str, Any]:
    """Claude Code's request; `keep_line`: its billing line moved into the next block, after
    its one identity line, so that it stays at the top of the prompt (a block that starts
    with the line is left out)."""
    body = request(SMOLLM2, tools=TOOLS, system_size=SYSTEM_SIZE, nonce=nonce, cch=cch)
    if keep_line:
        line, identity, rest = body["system"]
        body["system"] = [identity | {"text": f"{identity['text']}\n{line['text']}"}, rest]
    return body | {"stream": True, "max_tokens": 1}


async def first_token(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    """Seconds to the end of the streamed answer: with max_tokens 1 (and a stream with tools
    answered at its end), the time to its first token."""
    started = time.monotonic()
    async with http.post(url, json=body) as resp:
        text = await resp.text()
        if resp.status != 200 or "event: error" in text:
            raise RuntimeError(f"{resp.status}: {text[-500:]}")
    return time.monotonic() - started


async def run(rounds: int) -> tuple[dict[str, list[float]], int]:
    times: dict[str, list[float]] = {"cold": [], "hit": [], "messages": [], "kept": []}
    timeout = aiohttp.ClientTimeout(total=900)
    with gateway("server") as gw:
        # A connection per request (a kept-alive one failed after a streamed answer here).
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(gw.url, timeout=timeout, connector=connector) as http:
            messages = "/v1/messages"
            warm = anthropic_body("warm-up ", "0")
            count = {k: v for k, v in warm.items() if k not in ("stream", "max_tokens")}
            async with http.post(messages + "/count_tokens", json=count) as resp:
                tokens = int((await resp.json())["input_tokens"])
            await first_token(http, messages, warm)  # loads SmolLM2
            for r in range(rounds):
                nonce = f"Session {r}-{secrets.token_hex(4)}. "
                body = anthropic_body(nonce, secrets.token_hex(4))
                times["cold"].append(await first_token(http, messages, body))
                times["hit"].append(await first_token(http, messages, body))
                changed = anthropic_body(nonce, secrets.token_hex(4))
                times["messages"].append(await first_token(http, messages, changed))
                kept = anthropic_body(nonce, secrets.token_hex(4), keep_line=True)
                await first_token(http, messages, kept)  # this prompt, line kept
                kept = anthropic_body(nonce, secrets.token_hex(4), keep_line=True)
                times["kept"].append(await first_token(http, messages, kept))
    return times, tokens


DECISION = [
    "Claude Code 2.1.197 sent the same billing line twice in a row, but earlier versions put a",
    "`cch=` hash in it that changes on every request, and the line is the first of the",
    "prompt: a changed line costs the whole prompt again (the last row), where leaving it",
    "out keeps the cache (the row before). So /v1/messages leaves the line out, always: it",
    "is billing metadata, nothing a local model can use. Cli mode has no prompt cache:",
    "every request evaluates its whole prompt, as the cold row.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    machine = Machine()
    times, tokens = anyio.run(run, args.rounds)
    cold = statistics.median(times["cold"])
    rows = [
        ("cold: a system prompt not seen before", "cold"),
        ("the same request again: prompt cache hit", "hit"),
        ("only the billing line changed, /v1/messages (line left out of the prompt)", "messages"),
        ("only the billing line changed, the line kept (second line of the prompt)", "kept"),
    ]
    lines = [
        f"Claude Code-shaped request ({TOOLS} of its 24 tools, its three system blocks, "
        f"{tokens} prompt tokens by /v1/messages/count_tokens), SmolLM2, server mode, streamed "
        f"with max_tokens 1; {args.rounds} rounds, each variant once per round, in turn.",
        "",
        "| request | time to first token (median) | vs cold |",
        "|---|---|---|",
        *(
            f"| {label} | {statistics.median(times[key]):.2f} s "
            f"| {statistics.median(times[key]) / cold:.2f} |"
            for label, key in rows
        ),
        "",
        f"Each time: {json.dumps({k: [round(t, 2) for t in v] for k, v in times.items()})}.",
        "",
        *DECISION,
        "",
        machine.line(),
    ]
    write_section("anthropic cache", lines)


if __name__ == "__main__":
    main()
