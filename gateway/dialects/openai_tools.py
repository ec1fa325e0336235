"""OpenAI's tool fields (`tools`, `tool_choice`, `parallel_tool_calls`, the legacy
`functions` / `function_call`, assistant `tool_calls` and `tool` messages), decoded into
`core.chat`, with the checks that make a bad one a 400 naming its field. The seed's
/api/chat takes the same fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from core import chat
from core.errors import BadRequest

MAX_TOOLS = 128
# One tool's `parameters`, and all of them together: room for the real agents (Claude Code
# sends 24 tools with 16 KB of input schemas, 64 KB with their descriptions), bounded so one
# request cannot make llama.cpp build a huge grammar.
PARAMETERS_MAX_BYTES = 32 * 1024
TOOLS_MAX_BYTES = 256 * 1024

ToolName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Function(msgspec.Struct, kw_only=True):
    name: ToolName
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # the grammar always holds the arguments to `parameters`


class ToolDef(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    function: Function


class Named(msgspec.Struct):
    name: str


class NamedChoice(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    function: Named


ToolChoiceWire = Literal["auto", "none", "required"] | NamedChoice
FunctionCallWire = Literal["auto", "none"] | Named


class CalledFunction(msgspec.Struct, kw_only=True):
    name: str
    arguments: str = ""  # JSON text, as the model wrote it


class ToolCallWire(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


def tools_of(
    tools: Sequence[ToolDef] | None, functions: Sequence[Function] | None
) -> tuple[chat.Tool, ...]:
    """`tools`, or the legacy `functions` (not both): unique names, bounded schemas."""
    if tools and functions:
        raise BadRequest("send `tools` or the legacy `functions`, not both", param="functions")
    field = "tools" if tools else "functions"
    defs = [t.function for t in tools] if tools else list(functions or [])
    if len(defs) > MAX_TOOLS:
        raise BadRequest(
            f"{field}: {len(defs)} tools is over the limit of {MAX_TOOLS}", param=field
        )
    seen: set[str] = set()
    total = 0
    for i, f in enumerate(defs):
        if f.name in seen:
            raise BadRequest(f"{field}: the name {f.name!r} is used twice", param=f"{field}[{i}]")
        seen.add(f.name)
        size = len(msgspec.json.encode(f.parameters or {}))
        if size > PARAMETERS_MAX_BYTES:
            raise BadRequest(
                f"{field}[{i}] ({f.name}): its parameters are over {PARAMETERS_MAX_BYTES} bytes",
                param=f"{field}[{i}].parameters",
            )
        total += size + len(f.description)
    if total > TOOLS_MAX_BYTES:
        raise BadRequest(
            f"{field}: the tools are over {TOOLS_MAX_BYTES} bytes together", param=field
        )
    return tuple(
        chat.Tool(name=f.name, description=f.description, parameters=f.parameters or {})
        for f in defs
    )


def choice_of(
    tool_choice: ToolChoiceWire | None,
    function_call: FunctionCallWire | None,
    tools: Sequence[chat.Tool],
) -> chat.ToolChoice:
    """`tool_choice` (or the legacy `function_call`); a named one must be offered."""
    field = "tool_choice" if tool_choice is not None else "function_call"
    wire = tool_choice if tool_choice is not None else function_call
    if wire is None:
        return "auto"
    if isinstance(wire, NamedChoice):
        name = wire.function.name
    elif isinstance(wire, Named):
        name = wire.name
    else:
        if wire == "required" and not tools:
            raise BadRequest("tool_choice is required, but no tools are offered", param=field)
        return wire
    if name not in {t.name for t in tools}:
        raise BadRequest(f"{field} names {name!r}, which is not one of the tools", param=field)
    return chat.NamedTool(name=name)


def calls_of(calls: Sequence[ToolCallWire]) -> tuple[chat.ToolCall, ...]:
    return tuple(
        chat.ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in calls
    )


def check_results(messages: Sequence[chat.Message]) -> None:
    """Every `tool` message answers a call made earlier in the conversation."""
    made: set[str] = set()
    for i, message in enumerate(messages):
        made.update(call.id for call in message.tool_calls)
        if message.role == "tool" and message.tool_call_id not in made:
            raise BadRequest(
                f"messages[{i}]: tool_call_id {message.tool_call_id!r} answers no earlier "
                "tool call",
                param=f"messages[{i}].tool_call_id",
            )


def tool_calls_out(calls: Sequence[chat.ToolCall]) -> list[dict[str, Any]]:
    """Calls as OpenAI writes them in a message."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]
