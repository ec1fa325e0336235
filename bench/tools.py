"""Tool calls on the real SmolLM2 (issue 25): how many are valid, and how alike the modes are.

REQUESTS seeded requests with `tool_choice: required` over two tools (each seed asks one of a
few questions at temperature 0.7, so that the seeds give different calls), sent to a gateway
in server mode and to one in cli mode. Reported per mode: the fraction of answers that are one
call of an offered tool whose arguments validate against its parameters (jsonschema), and
across the modes the fraction of seeds whose call (name and arguments) is the same. No timing:
this is about what comes back.

`--native`: the same on SmolLM2's weights given deploy/templates/hermes-tools.jinja, a
Hermes/Qwen-style template: llama-server's own tool calling in server mode, its port in cli
mode (backends.hermes); written to its own section."""

from __future__ import annotations

import argparse
import json
from typing import Any

import aiohttp
import anyio
import jsonschema

from backends import toolchain
from backends.catalog import SMOLLM2
from bench.common import ROOT, gateway, write_section
from core.config import cache_dir

REQUESTS = 50
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather now in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert",
            "description": "Convert an amount of money between currencies",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "to": {"type": "string", "enum": ["EUR", "USD", "JPY"]},
                },
                "required": ["amount", "to"],
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTIONS = [
    "What is the weather in Paris?",
    "How much is 20 dollars in euros?",
    "Is it raining in Tokyo right now?",
    "Convert 1000 yen to US dollars.",
    "Should I take an umbrella in London today?",
]


def valid(call: tuple[str, dict[str, Any]] | None) -> bool:
    if call is None or call[0] not in SCHEMAS:
        return False
    try:
        jsonschema.validate(call[1], SCHEMAS[call[0]])
    except jsonschema.ValidationError:
        return False
    return True


NATIVE = "hermes-smollm2"
NATIVE_NOTE = [
    "Where llama.cpp 0.3.36 surprised: it finds the Hermes format by analysing the template "
    "(JSON_NATIVE calls between `<tool_call>\\n` and `</tool_call>`), not by name; its grammar "
    "for `tool_choice: required` lets any text come before the first call, and SmolLM2 then "
    "never starts one (60 of 60 tokens of prose), so the gateway opens the answer with "
    "`<tool_call>\\n` in both modes; a named `tool_choice` is taken as `auto` by llama-server "
    "(the gateway sends that one tool, required); the grammar allows further calls even with "
    "`parallel_tool_calls: false` (the gateway stops at `</tool_call>`); arguments come back "
    "as the model spaced them. Cli mode's grammar rules are llama-server's, rule for rule "
    "(tests/integration/test_hermes_real.py).",
]


def native_toml() -> str:
    """A model on SmolLM2's weights with the Hermes-style template."""
    model = toolchain.smollm2_model_path(cache_dir())
    template = ROOT / "deploy" / "templates" / "hermes-tools.jinja"
    return f'[models.{NATIVE}]\npath = "{model}"\nchat_template_file = "{template}"\n'


async def ask(
    http: aiohttp.ClientSession, url: str, seed: int, model: str
) -> tuple[str, Any] | None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTIONS[seed % len(QUESTIONS)]}],
        "tools": TOOLS,
        "tool_choice": "required",
        "temperature": 0.7,
        "seed": seed,
        "max_tokens": 120,
    }
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        answer = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {answer}")
    calls = answer["choices"][0]["message"].get("tool_calls") or []
    if len(calls) != 1:
        return None
    function = calls[0]["function"]
    try:
        return function["name"], json.loads(function["arguments"])
    except ValueError:
        return None


async def run(requests: int, native: bool) -> dict[str, list[tuple[str, Any] | None]]:
    found: dict[str, list[tuple[str, Any] | None]] = {}
    timeout = aiohttp.ClientTimeout(total=600)
    model, extra = (NATIVE, native_toml()) if native else (SMOLLM2, "")
    for backend in ("server", "cli"):
        with gateway(backend, extra) as gw:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                found[backend] = [await ask(http, gw.url, seed, model) for seed in range(requests)]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--native", action="store_true", help="the Hermes-style template")
    args = parser.parse_args()
    found = anyio.run(run, args.requests, args.native)
    server, cli = found["server"], found["cli"]
    same = sum(a is not None and a == b for a, b in zip(server, cli, strict=True))
    names = {b: sorted({c[0] for c in calls if c}) for b, calls in found.items()}
    how = (
        "SmolLM2's weights with deploy/templates/hermes-tools.jinja (native tool calls: "
        "llama-server's own in server mode, backends.hermes in cli mode)"
        if args.native
        else "SmolLM2 (its own template: the gateway's scheme)"
    )
    lines = [
        f"{args.requests} seeded requests, `tool_choice: required` over two tools, {how}.",
        "",
        "| | server mode | cli mode |",
        "|---|---|---|",
        f"| valid calls | {sum(map(valid, server)) / len(server):.2f} "
        f"| {sum(map(valid, cli)) / len(cli):.2f} |",
        f"| tools called | {', '.join(names['server'])} | {', '.join(names['cli'])} |",
        "",
        f"The same call in both modes for the same seed: {same / len(server):.2f} "
        f"({same} of {len(server)}).",
    ]
    if args.native:
        lines += ["", *NATIVE_NOTE]
    write_section("tools-native" if args.native else "tools", lines)


if __name__ == "__main__":
    main()
