"""A request shaped as Codex CLI 0.171 sends it to `POST {base}/responses` (issue 27:
recorded against a logging stub): streamed, stateless, with the fields a model here can't
act on, a 17 KB developer message, 7 strict functions, a namespace tool and a hosted one."""

from __future__ import annotations

from typing import Any

# Codex's own guidance is ~17 KB of prose; these lines repeated are as long.
_GUIDANCE = (
    "You are a coding agent running in a terminal. Read files before you change them, keep "
    "changes small, run the tests that cover what you touched, and explain what you did. "
)
DEVELOPER_TEXT = (_GUIDANCE * (17 * 1024 // len(_GUIDANCE) + 1))[: 17 * 1024]


def _function(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "description": description,
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        },
    }


_TEXT = {"type": "string"}
FUNCTIONS = [
    _function("shell", "Run a shell command", {"command": {"type": "array", "items": _TEXT}}),
    _function("exec_command", "Start a command in a PTY", {"cmd": _TEXT, "workdir": _TEXT}),
    _function("write_stdin", "Write to a running command", {"session_id": _TEXT, "chars": _TEXT}),
    _function("update_plan", "Update the plan", {"explanation": _TEXT, "plan": _TEXT}),
    _function("apply_patch", "Apply a patch to files", {"input": _TEXT}),
    _function("view_image", "Look at an image file", {"path": _TEXT}),
    _function("list_mcp_resources", "List MCP resources", {"server": _TEXT}),
]
NAMESPACE = {
    "type": "namespace",
    "name": "mcp__docs__",
    "description": "The docs MCP server",
    "tools": [
        {
            "type": "function",
            "name": "search_docs",
            "description": "Search the documentation",
            "strict": False,
            "parameters": {"type": "object", "properties": {"query": _TEXT}},
        }
    ],
}
WEB_SEARCH = {"type": "web_search", "external_web_access": False}


def codex_body(model: str, question: str = "List the files here.") -> dict[str, Any]:
    return {
        "model": model,
        "instructions": "You are Codex, based on GPT-5.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": DEVELOPER_TEXT}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": question}],
            },
        ],
        "tools": [*FUNCTIONS, NAMESPACE, WEB_SEARCH],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "client_metadata": {"originator": "codex_cli_rs", "version": "0.171.0"},
        "text": {"verbosity": "medium"},
    }
