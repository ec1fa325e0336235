"""OpenAI's Responses dialect (/v1/responses), stateless: its body decoded into
`core.chat.ChatRequest` (the answer, whole or streamed, is `responses_answer`).

A table of what each field becomes: `input` (a string, or items: messages, `function_call`
and `function_call_output`) the messages, with `instructions` and `developer` messages as
system ones; function tools (those nested in a `namespace` tool too) the tools, checked by
`openai_tools` as /v1/chat/completions checks them; hosted tools (`web_search`, ...) are
left out of the prompt, as nothing here can run them. Fields a model can't act on
(`reasoning`, `include`, `prompt_cache_key`, `client_metadata`, `metadata`, `user`, ...)
are accepted and ignored. The server keeps no response: `previous_response_id`,
`conversation`, `background` and `store: true` are a 400 saying so."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from backends.vision import decode_base64_image
from core import chat
from core.config import Temp, TopP
from core.errors import BadRequest
from gateway.dialects.openai import checked_schema
from gateway.dialects.openai_tools import (
    Function,
    Named,
    NamedChoice,
    ToolChoiceWire,
    ToolDef,
    choice_of,
    tools_of,
)

# Content parts of input items.


class InputText(msgspec.Struct, tag_field="type", tag="input_text"):
    text: str


class OutputText(msgspec.Struct, tag_field="type", tag="output_text"):
    text: str


class Refusal(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


class InputImage(msgspec.Struct, tag_field="type", tag="input_image"):
    image_url: str | None = None
    file_id: str | None = None


Part = InputText | OutputText | Refusal | InputImage

# Input items.


class MessageItem(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class FunctionCallItem(msgspec.Struct, kw_only=True):
    call_id: Annotated[str, Meta(min_length=1)]
    name: str
    arguments: str = ""
    namespace: str | None = None


class FunctionCallOutputItem(msgspec.Struct, kw_only=True):
    call_id: str
    output: str | list[Part]


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem

# An item without `type` is a message (the SDK's "easy" input message); `reasoning` items
# (a client replaying its history) carry nothing a model here can read.
_ITEMS: dict[str, type[Item] | None] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": None,
}

_ROLES: dict[str, chat.Role] = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}


def _parts(content: str | list[Part], where: str) -> tuple[chat.Part, ...]:
    if isinstance(content, str):
        return (chat.TextPart(text=content),) if content else ()
    return tuple(_part(part, f"{where}[{j}]") for j, part in enumerate(content))


def _part(part: Part, where: str) -> chat.Part:
    match part:
        case InputText(text=text) | OutputText(text=text) | Refusal(refusal=text):
            return chat.TextPart(text=text)
        case InputImage(image_url=str(url)) if url.startswith("data:"):
            return chat.ImagePart(data=decode_base64_image(url))
    raise BadRequest(
        f"{where}: send an image as a data:image/...;base64 URL in image_url: this server "
        "never fetches a remote URL and keeps no files",
        param=where,
    )


def _item(raw: object, where: str) -> Item | None:
    kind = raw.get("type", "message") if isinstance(raw, dict) else None
    if not isinstance(kind, str) or kind not in _ITEMS:
        raise BadRequest(f"{where}: input items of type {kind!r} are not supported", param=where)
    if (type_ := _ITEMS[kind]) is None:
        return None
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{where}: {exc}", param=where) from None


def messages_of(instructions: str | None, input_: str | list[Any]) -> tuple[chat.Message, ...]:
    """The conversation: consecutive system texts as one system message (some chat
    templates take only one, first), a `function_call` joined to the assistant turn before
    it, a `function_call_output` as a tool message."""
    messages: list[chat.Message] = []
    if instructions:
        messages.append(chat.Message.of("system", instructions))
    items = [MessageItem(role="user", content=input_)] if isinstance(input_, str) else input_
    made: set[str] = set()
    for i, raw in enumerate(items):
        where = f"input[{i}]"
        item = raw if isinstance(raw, MessageItem) else _item(raw, where)
        if isinstance(item, FunctionCallItem):
            made.add(item.call_id)
        if isinstance(item, FunctionCallOutputItem) and item.call_id not in made:
            raise BadRequest(
                f"{where}: call_id {item.call_id!r} answers no earlier function_call",
                param=f"{where}.call_id",
            )
        if item is not None:
            _add(messages, item, where)
    return tuple(messages)


def _add(messages: list[chat.Message], item: Item, where: str) -> None:
    last = messages[-1] if messages else None
    match item:
        case MessageItem(role=role, content=content):
            message = chat.Message(role=_ROLES[role], content=_parts(content, f"{where}.content"))
            if last is not None and last.role == message.role == "system":
                message = chat.Message.of("system", f"{last.text}\n\n{message.text}")
                messages.pop()
            messages.append(message)
        case FunctionCallItem(call_id=call_id, name=name, arguments=arguments):
            call = chat.ToolCall(id=call_id, name=name, arguments=arguments)
            if last is not None and last.role == "assistant":
                calls = (*last.tool_calls, call)
                messages[-1] = msgspec.structs.replace(last, tool_calls=calls)
            else:
                messages.append(chat.Message(role="assistant", tool_calls=(call,)))
        case FunctionCallOutputItem(call_id=call_id, output=output):
            parts = _parts(output, f"{where}.output")
            messages.append(chat.Message(role="tool", content=parts, tool_call_id=call_id))


# Tools.


class NamespaceTool(msgspec.Struct, kw_only=True):
    name: str
    tools: list[dict[str, Any]] = []


def _function(raw: dict[str, Any], where: str) -> ToolDef:
    given = {k: v for k, v in raw.items() if v is not None and k != "type"}  # null: absent
    try:
        return ToolDef(type="function", function=msgspec.convert(given, Function))
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{where}: {exc}", param=where) from None


def functions_of(tools: Sequence[dict[str, Any]]) -> tuple[list[ToolDef], dict[str, str]]:
    """The function tools, a namespace's own among them, and the namespace of each of those;
    other tools (hosted ones, `custom`) are left out: nothing here can run them."""
    defs: list[ToolDef] = []
    namespaces: dict[str, str] = {}
    for i, raw in enumerate(tools):
        kind = raw.get("type")
        if kind == "function":
            defs.append(_function(raw, f"tools[{i}]"))
        elif kind == "namespace":
            try:
                space = msgspec.convert(raw, NamespaceTool)
            except msgspec.ValidationError as exc:
                raise BadRequest(f"tools[{i}]: {exc}", param=f"tools[{i}]") from None
            for j, inner in enumerate(space.tools):
                if inner.get("type") == "function":
                    defs.append(_function(inner, f"tools[{i}].tools[{j}]"))
                    namespaces[defs[-1].function.name] = space.name
    return defs, namespaces


class FunctionChoice(msgspec.Struct, kw_only=True):
    type: str
    name: str | None = None


def _choice_wire(choice: str | FunctionChoice | None) -> ToolChoiceWire | None:
    if choice is None or isinstance(choice, str):
        return choice  # type: ignore[return-value]  # the Literal, checked by the decoder
    if choice.type == "function" and choice.name:
        return NamedChoice(type="function", function=Named(choice.name))
    raise BadRequest(
        f"tool_choice of type {choice.type!r} is not supported: only auto, none, required "
        "or a function by name",
        param="tool_choice",
    )


# Text formats.


class TextFormatText(msgspec.Struct, tag_field="type", tag="text"):
    pass


class TextFormatJsonObject(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class TextFormatJsonSchema(msgspec.Struct, tag_field="type", tag="json_schema", kw_only=True):
    schema: dict[str, Any]
    name: str = "answer"
    description: str | None = None
    strict: bool | None = None  # the grammar always holds the answer to the schema


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormatText | TextFormatJsonObject | TextFormatJsonSchema | None = None


# The request.

MaxOutputTokens = Annotated[int, Meta(ge=1)]  # a ceiling: the context bounds it further


class ResponsesRequest(msgspec.Struct, kw_only=True):
    input: str | list[Any]
    model: str | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: MaxOutputTokens | None = None
    temperature: Temp | None = None
    top_p: TopP | None = None
    text: TextConfig | None = None
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    # State this server does not keep.
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None

    def check_stateless(self) -> None:
        kept = {
            "previous_response_id": self.previous_response_id is not None,
            "conversation": self.conversation is not None,
            "background": bool(self.background),
            "store": bool(self.store),
        }
        if fields := [name for name, is_set in kept.items() if is_set]:
            raise BadRequest(
                f"this server keeps no responses or conversations ({', '.join(fields)}): send "
                "the whole conversation in `input`, with `store` false or left out",
                param=fields[0],
            )

    def json_schema(self) -> dict[str, Any] | None:
        match self.text.format if self.text else None:
            case TextFormatJsonSchema(schema=schema):
                return checked_schema(schema, "text.format", "text.format.schema")
            case TextFormatJsonObject():
                return {"type": "object"}
        return None

    def decode(self) -> tuple[chat.ChatRequest, dict[str, str]]:
        """Ours, and the namespace of each function that came from a namespace tool."""
        self.check_stateless()
        messages = messages_of(self.instructions, self.input)
        if not messages:
            raise BadRequest("input: there is no message to answer", param="input")
        defs, namespaces = functions_of(self.tools or [])
        tools = tools_of(defs, None)
        request = chat.ChatRequest(
            messages=messages,
            model=self.model,
            tools=tools,
            tool_choice=choice_of(_choice_wire(self.tool_choice), None, tools),
            parallel_tool_calls=self.parallel_tool_calls is not False,  # true by default
            sampling=chat.Sampling(temp=self.temperature, top_p=self.top_p),
            max_tokens=self.max_output_tokens,
            json_schema=self.json_schema(),
            stream=self.stream,
        )
        return request, namespaces
