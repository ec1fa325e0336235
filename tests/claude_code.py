"""A request shaped as Claude Code sends it (2.1.197, recorded against a logging stub; issue
27): `POST /v1/messages?beta=true` with 24 tools (16 KB of input schemas, 64 KB with their
descriptions), `system` as three text blocks with `cache_control` (the first the
`x-anthropic-billing-header:` line), `max_tokens: 32000`, `thinking: {"type": "adaptive"}`,
`output_config`, `context_management`, `metadata`, and a `system` message inside `messages`.
The texts are stand-ins of the same sizes; the tests replay it and bench/anthropic_cache.py
times it."""

from __future__ import annotations

import random
from typing import Any

TOOL_NAMES = [
    "Task", "Bash", "Glob", "Grep", "ExitPlanMode", "Read", "Edit", "Write", "NotebookEdit",
    "WebFetch", "TodoWrite", "WebSearch", "BashOutput", "KillShell", "Skill", "SlashCommand",
    "AskUserQuestion", "EnterPlanMode", "ListMcpResourcesTool", "ReadMcpResourceTool",
    "MultiEdit", "LS", "Agent", "Monitor",
]  # fmt: skip
HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": (
        "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
        "prompt-caching-scope-2026-01-05,effort-2025-11-24,system-messages-in-messages-2026-04-01"
    ),
    "x-app": "cli",
    "user-agent": "claude-cli/2.1.197 (external, cli)",
}
WORDS = (
    "the file tool path command user code when use this must output run with before edit "
    "search result directory content read write never always only line pattern agent task "
    "parameter return error shell test change commit project description example"
).split()


def prose(rng: random.Random, size: int) -> str:
    """`size` characters of English-like text (a stand-in for Claude Code's own)."""
    out: list[str] = []
    length = 0
    while length < size:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16)))
        out.append(sentence.capitalize() + ".")
        length += len(out[-1]) + 1
    return " ".join(out)[:size]


def schema(rng: random.Random, size: int) -> dict[str, Any]:
    """An input schema of about `size` bytes of JSON."""
    properties: dict[str, Any] = {}
    while len(str(properties)) < size - 120:
        name = f"{rng.choice(WORDS)}_{len(properties)}"
        kind = rng.choice(["string", "number", "boolean"])
        properties[name] = {"type": kind, "description": prose(rng, rng.randint(30, 90))}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "required": sorted(properties)[:1],
        "additionalProperties": False,
    }


def billing_line(cch: str | None = None) -> str:
    tail = f" cch={cch};" if cch else ""
    return f"x-anthropic-billing-header: cc_version=2.1.197.1c0; cc_entrypoint=sdk-cli;{tail}"


def request(
    model: str,
    *,
    tools: int = 24,
    system_size: int = 8_000,
    stream: bool = False,
    cch: str | None = None,
    nonce: str = "",
) -> dict[str, Any]:
    """Claude Code's body; fewer tools and a shorter system prompt for a model with a small
    context; `cch` varies the billing line, `nonce` the system prompt after it."""
    rng = random.Random(2197)
    cache = {"type": "ephemeral"}
    described = [
        {
            "name": name,
            "description": prose(rng, 1950),
            "input_schema": schema(rng, 610),
        }
        for name in TOOL_NAMES[:tools]
    ]
    described[-1]["cache_control"] = cache
    system = [
        {"type": "text", "text": billing_line(cch)},
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": cache,
        },
        {"type": "text", "text": nonce + prose(rng, system_size), "cache_control": cache},
    ]
    return {
        "model": model,
        "max_tokens": 32000,
        "stream": stream,
        "system": system,
        "tools": described,
        "tool_choice": {"type": "auto"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "<system-reminder>" + prose(rng, 900) + "</system-reminder>",
                    },
                    {"type": "text", "text": "Say hello.", "cache_control": cache},
                ],
            },
            {"role": "system", "content": "The user's working directory is /home/user/project."},
        ],
        "metadata": {"user_id": "user_0123456789abcdef_account__session_0f1e2d3c"},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "temperature": 1,
    }
