"""Tool calling by a JSON answer under a grammar, the same in both modes.

This llama.cpp (the 0.3.36 sdist) no longer has llama-server's "generic" tool format: with a
template that describes no tools (ChatML, SmolLM2's, Gemma's), llama-server renders the
request without the tools and lets the model answer freely, even for `tool_choice:
required` (checked with `POST /apply-template` and a real request). So the gateway does
what that generic format did, for both modes alike:

- the tools are described in a system message, and earlier calls and their results are
  written into the conversation as the JSON the model is asked to write;
- the answer is constrained by a JSON schema (llama.cpp turns it into a grammar):
  `{"tool_call": {"name": ..., "arguments": {...}}}` (`{"tool_calls": [...]}` when
  `parallel_tool_calls`), or, under `auto`, `{"response": "..."}` as well;
- the answer is parsed back into `core.chat` tool calls, each checked against its tool's
  `parameters` with `jsonschema`; one that does not parse or validate is never returned as a
  call: the client gets the model's text, and `failed` is told (a metric).

`ToolCalling` wraps a backend with this; requests without tools (or with `tool_choice:
none`) pass through untouched. A stream with tools is answered at its end: its text is JSON
until then (a call's id, name and arguments go out as tool-call deltas, a text answer as one
text delta).

A model whose template calls tools natively in the Hermes 2 Pro / Qwen 2.5 style gets
llama-server's own tool calling instead (backends.hermes): the backends receive the tools,
server mode passes them to llama-server, cli mode renders, constrains and parses as it does.
Its calls are checked here the same way. Not with `json_schema` (llama-server would then
ignore the tools), nor for parameters outside what backends.hermes turns into a grammar.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, Literal

import anyio
import jsonschema
import msgspec

from backends import hermes
from backends.base import Backend, ChatTask, Embedded
from backends.catalog import ModelDef
from backends.gguf_meta import NotGguf
from backends.ids import unique_id
from backends.prompt import template_source
from core.chat import (
    Answer,
    ChatRequest,
    Event,
    Failure,
    Finish,
    Message,
    NamedTool,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    collect,
)
from core.config import LlmParams


def uses_tools(request: ChatRequest) -> bool:
    return bool(request.tools) and request.tool_choice != "none"


def offered(request: ChatRequest) -> list[Tool]:
    """The tools the model may call: one, if `tool_choice` names it."""
    if isinstance(request.tool_choice, NamedTool):
        return [t for t in request.tools if t.name == request.tool_choice.name]
    return list(request.tools)


def _call_schema(tool: Tool) -> dict[str, Any]:
    parameters = tool.parameters or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": parameters},
        "required": ["name", "arguments"],
    }


def answer_schema(request: ChatRequest) -> dict[str, Any]:
    """The JSON schema of the answer: a call (or calls) of an offered tool; under `auto`
    also a text response (itself following `json_schema` when the request has one)."""
    calls = [_call_schema(tool) for tool in offered(request)]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    many: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    parallel = request.parallel_tool_calls
    branches = [_only("tool_calls", many) if parallel else _only("tool_call", call)]
    if request.tool_choice == "auto":
        branches.append(_only("response", request.json_schema or {"type": "string"}))
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def _only(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: value}, "required": [key]}


def instructions(request: ChatRequest) -> str:
    """The system text that describes the tools and the answer's form."""
    described = [
        {"name": t.name, "description": t.description, "parameters": t.parameters}
        for t in offered(request)
    ]
    key = "tool_calls" if request.parallel_tool_calls else "tool_call"
    example = '{"name": "<tool name>", "arguments": {<its arguments>}}'
    form = f"[{example}, ...]" if request.parallel_tool_calls else example
    lines = [
        "You can call the following tools to answer the user's request:",
        json.dumps(described, indent=2, ensure_ascii=False),
        "",
        f'To call a tool, respond with JSON: {{"{key}": {form}}}',
    ]
    if request.tool_choice == "auto":
        lines.append('To answer the user directly instead, respond with JSON: {"response": "..."}')
    lines.append("The result of a call comes back to you as a tool_response.")
    return "\n".join(lines)


def _as_json(call: ToolCall) -> dict[str, Any]:
    try:
        arguments: object = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        arguments = call.arguments  # as the client sent it: the model sees what happened
    return {"name": call.name, "arguments": arguments}


def conversation(messages: Sequence[Message]) -> list[Message]:
    """Earlier calls as the JSON the model writes, and their results as user turns: a
    template that knows no tools renders them as text it understands."""
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    out: list[Message] = []
    for message in messages:
        if message.role == "tool":
            result = {"name": names.get(message.tool_call_id or "", ""), "content": message.text}
            out.append(Message.of("user", json.dumps({"tool_response": result})))
        elif message.role == "assistant" and message.tool_calls:
            calls = [_as_json(call) for call in message.tool_calls]
            body = {"tool_calls": calls} if len(calls) > 1 else {"tool_call": calls[0]}
            out.append(Message.of("assistant", json.dumps(body, ensure_ascii=False)))
        else:
            out.append(message)
    return out


def rewritten(request: ChatRequest) -> tuple[Message, ...]:
    """The conversation with the instructions in its system message."""
    out = conversation(request.messages)
    text = instructions(request)
    if out and out[0].role == "system":
        out[0] = Message.of("system", f"{out[0].text}\n\n{text}")
    else:
        out.insert(0, Message.of("system", text))
    return tuple(out)


def has_tool_turns(request: ChatRequest) -> bool:
    return any(m.role == "tool" or m.tool_calls for m in request.messages)


def prepared(task: ChatTask) -> ChatTask:
    """`task` as a plain chat: with tools on offer, one whose answer the schema holds to;
    with none (or `tool_choice: none`), only its earlier calls and results as text."""
    if not uses_tools(task.request):
        messages = tuple(conversation(task.request.messages))
        plain = msgspec.structs.replace(task.request, messages=messages, tools=())
        return msgspec.structs.replace(task, request=plain)
    request = msgspec.structs.replace(
        task.request,
        messages=rewritten(task.request),
        json_schema=answer_schema(task.request),
        tools=(),
        tool_choice="none",
    )
    return msgspec.structs.replace(task, request=request)


class Parsed(msgspec.Struct, frozen=True):
    calls: tuple[ToolCall, ...] = ()
    text: str = ""
    failed: bool = False  # the model's output was no valid call (`text` is that output)


def parse(text: str, request: ChatRequest) -> Parsed:
    """The answer's calls, or its text response; the raw text, failed, if it is neither."""
    try:
        value = json.loads(text)
    except ValueError:
        return Parsed(text=text, failed=True)
    if isinstance(value, dict) and "response" in value and request.tool_choice == "auto":
        response = value["response"]
        return Parsed(text=response if isinstance(response, str) else json.dumps(response))
    raw = value.get("tool_calls", [value.get("tool_call")]) if isinstance(value, dict) else None
    tools = {tool.name: tool for tool in offered(request)}
    calls = [checked(item, tools) for item in raw] if isinstance(raw, list) and raw else [None]
    if any(call is None for call in calls):
        return Parsed(text=text, failed=True)
    return Parsed(calls=tuple(call for call in calls if call is not None))


def checked(item: object, tools: dict[str, Tool]) -> ToolCall | None:
    """A call of an offered tool whose arguments validate against its parameters."""
    if not isinstance(item, dict) or (tool := tools.get(str(item.get("name")))) is None:
        return None
    arguments = item.get("arguments", {})
    try:
        jsonschema.validate(arguments, tool.parameters or {"type": "object"})
    except (jsonschema.ValidationError, jsonschema.SchemaError):
        return None
    text = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=f"call_{unique_id()}", name=tool.name, arguments=text)


def is_native(task: ChatTask) -> bool:
    """Whether `task` goes to llama-server's own tool calling (backends.hermes): a tool
    request (or one with earlier calls) to a model whose template calls tools natively.
    Reads the GGUF's template (cached): call in a worker thread."""
    request = task.request
    if not (request.tools or has_tool_turns(request)) or request.json_schema is not None:
        return False
    try:  # a model without a readable file here (remote only, not yet fetched) has no say
        path = Path(task.model.path) if task.model.path else None
        source = template_source(task.model.chat_template, path)
    except NotGguf:
        return False
    return hermes.is_hermes(source) and hermes.supported(offered(request))


def native(task: ChatTask) -> ChatTask:
    """`task` for llama-server's own tool calling: the offered tools (a named one alone,
    required); a required call opened at once (backends.hermes says why)."""
    request = task.request
    choice: Literal["auto", "none", "required"]
    if not request.tools:
        choice = "none"
    elif isinstance(request.tool_choice, NamedTool):
        choice = "required"
    else:
        choice = request.tool_choice
    messages, stop = request.messages, request.stop
    if choice == "required":
        messages = (*messages, Message.of("assistant", hermes.OPEN))
        if not request.parallel_tool_calls:
            # One call is all that is returned: stop after it rather than let the grammar's
            # further calls run to max_tokens (llama-server still parses the call).
            stop = (*stop, hermes.CLOSE)
    request = msgspec.structs.replace(
        request, messages=messages, stop=stop, tools=tuple(offered(request)), tool_choice=choice
    )
    return msgspec.structs.replace(task, request=request)


def parse_native(answer: Answer, request: ChatRequest) -> Parsed:
    """The calls llama-server's parser (or cli mode's port of it) found, each checked; the
    model's text, failed, if one does not validate or a required call is missing."""
    tools = {tool.name: tool for tool in offered(request)}
    found = answer.tool_calls if request.parallel_tool_calls else answer.tool_calls[:1]
    calls = [checked({"name": c.name, "arguments": _loaded(c.arguments)}, tools) for c in found]
    if calls and all(call is not None for call in calls):
        return Parsed(calls=tuple(c for c in calls if c is not None), text=answer.text)
    written = "".join(f"{hermes.OPEN}{_as_text(c)}\n{hermes.CLOSE}" for c in answer.tool_calls)
    required = request.tool_choice != "auto"
    return Parsed(text=answer.text + written, failed=bool(written) or required)


def _loaded(arguments: str) -> object:
    try:
        return json.loads(arguments)
    except ValueError:
        return None  # validates against no object schema


def _as_text(call: ToolCall) -> str:
    return json.dumps({"name": call.name, "arguments": _as_json(call)["arguments"]})


def interpreted(answer: Answer, parsed: Parsed) -> Answer:
    if parsed.calls:
        return msgspec.structs.replace(
            answer, text=parsed.text, tool_calls=parsed.calls, finish_reason="tool_calls"
        )
    finish: Literal["stop", "length"] = "length" if answer.finish_reason == "length" else "stop"
    return msgspec.structs.replace(answer, text=parsed.text, finish_reason=finish)


def events_of(answer: Answer) -> list[Event]:
    """An interpreted answer as a stream's events: each call's head, then its arguments."""
    events: list[Event] = [TextDelta(text=answer.text)] if answer.text else []
    for index, call in enumerate(answer.tool_calls):
        events.append(ToolCallDelta(index=index, id=call.id, name=call.name))
        events.append(ToolCallDelta(index=index, arguments=call.arguments))
    events.append(Finish(reason=answer.finish_reason))
    return events


class ToolCalling:
    """`inner` with tool calling (this module's scheme) for the requests that offer tools.
    `failed(model)` is told of each answer that was meant as a call and is none."""

    def __init__(self, inner: Backend, failed: Callable[[str], None]) -> None:
        self.inner = inner
        self._failed = failed

    @property
    def name(self) -> Literal["server", "cli"]:
        return self.inner.name

    def _interpret(self, answer: Answer, task: ChatTask) -> Answer:
        parsed = parse(answer.text, task.request)
        if parsed.failed:
            self._failed(task.model.name)
        return interpreted(answer, parsed)

    async def chat(self, task: ChatTask) -> Answer:
        if not task.request.tools and not has_tool_turns(task.request):
            return await self.inner.chat(task)  # the common case: one check, no copy
        if await anyio.to_thread.run_sync(is_native, task):
            return await self._chat_native(task)
        if not uses_tools(task.request):
            return await self.inner.chat(prepared(task))
        return self._interpret(await self.inner.chat(prepared(task)), task)

    async def _chat_native(self, task: ChatTask) -> Answer:
        answer = await self.inner.chat(native(task))
        if not uses_tools(task.request):
            return answer
        parsed = parse_native(answer, task.request)
        if parsed.failed:
            self._failed(task.model.name)
        return interpreted(answer, parsed)

    async def chat_stream(self, task: ChatTask) -> AsyncGenerator[Event, None]:
        tooled = task.request.tools or has_tool_turns(task.request)
        if tooled and await anyio.to_thread.run_sync(is_native, task):
            answer = await self._chat_native(task)  # answered at its end, as below
            for event in events_of(answer):
                yield event
            if answer.usage is not None:
                yield answer.usage
            return
        if not uses_tools(task.request):
            plain = prepared(task) if has_tool_turns(task.request) else task
            async with aclosing(self.inner.chat_stream(plain)) as events:
                async for event in events:
                    yield event
            return
        seen: list[Event] = []
        async with aclosing(self.inner.chat_stream(prepared(task))) as events:
            async for event in events:
                if isinstance(event, Failure):
                    yield event
                    return
                seen.append(event)
        answer = self._interpret(collect(seen), task)
        for event in events_of(answer):
            yield event
        if answer.usage is not None:
            yield answer.usage

    async def embed(self, model: ModelDef, texts: Sequence[str], params: LlmParams) -> Embedded:
        return await self.inner.embed(model, texts, params)

    async def vision(self, task: ChatTask) -> Answer:
        return await self.inner.vision(task)

    async def count_tokens(self, task: ChatTask) -> int:
        """The prompt with its tools, as this scheme writes them into it."""
        counted = prepared(task) if task.request.tools or has_tool_turns(task.request) else task
        return await self.inner.count_tokens(counted)
