"""Ollama's `template` field: a Go template that builds the prompt in place of the model's.

`render(source, values)` prints what Ollama's `template.Execute` prints (its template/template.go)
for the values its `/api/generate` builds (server/routes.go, GenerateHandler), with the subset
of Go's text/template in `go_template`:

- a prompt with a suffix (fill in the middle) sees `.Prompt`, `.Suffix` and `.Response` ("");
- a template that names `.Messages` sees `.System` (the system messages joined by a blank
  line), `.Messages` (consecutive messages of one role merged) and `.Tools` (none);
- any other template is executed once per turn with `.System`, `.Prompt` and `.Response`, the
  last turn cut after its `{{ .Response }}`. A template that names neither `.Messages` nor
  `.Response` gets a `{{ .Response }}` appended first.

`.Think` is false, `.ThinkLevel` "" and `.IsThinkSet` false (Ollama's values when the client
sends no `think` to a model that cannot think); a message's `.Thinking`, `.ToolName` and
`.ToolCallID` are "", its `.Images` and `.ToolCalls` empty. A top-level field that the case
at hand does not set, or that Ollama never sets, is nothing: false, and printed `<no value>`,
as Go prints a missing key (qwen3's template asks for `.Thinking` there). A message has only
the fields of Ollama's; another is an error, as in Go. Ollama's functions: `json` of a string,
number, boolean or nothing; `currentDate`, `yesterdayDate` and `toTypeScriptType` are refused
if they run (they sit in the tool branches of model templates, which a request without tools
never runs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import msgspec

from gateway.dialects.go_template import (
    Action,
    Arg,
    Branch,
    Function,
    NilSlice,
    Node,
    Pipe,
    Ref,
    Struct,
    Value,
    execute,
    kind,
    names,
    parse,
    template_error,
)


class TemplateValues(msgspec.Struct, frozen=True, kw_only=True):
    """The request's side. `messages`, when not empty, is the conversation; else it is
    `system` (when not empty), the user's `prompt` and `response` (when not empty), which is
    what Ollama's generate builds from its body. A `prompt` with a `suffix` is filled in the
    middle, and then `system` is not seen, as in Ollama."""

    system: str = ""
    prompt: str = ""
    response: str = ""
    suffix: str = ""
    messages: tuple[tuple[str, str], ...] = ()


def render(source: str, values: TemplateValues) -> str:
    """The prompt Ollama would build from the template `source` and `values`. A template
    outside the subset, or one that fails as it runs, is a BadRequest with param "template"."""
    tree = parse(source, _FUNCS)
    named = {name.lower() for name in names(tree)}
    if "messages" not in named and "response" not in named:
        tree = [*tree, Action(Pipe((), False, ((Ref(None, ("Response",)),),)))]
    if values.prompt and values.suffix:
        fim: dict[str, Value] = {"Prompt": values.prompt, "Suffix": values.suffix, "Response": ""}
        return _execute(tree, fim)
    messages = values.messages or _conversation(values)
    system = "\n\n".join(content for role, content in messages if role == "system")
    collated = _collate(messages)
    if "messages" in named:
        chat: dict[str, Value] = {"System": system, "Messages": list(collated), "Response": ""}
        return _execute(tree, chat | {"Tools": NilSlice("null")})  # a JSON Stringer
    return _legacy(tree, collated)


class _Message(Struct):
    """Ollama's templateMessage."""

    kind = "message"

    def __init__(self, role: str, content: str) -> None:
        self.role, self.content = role, content

    def field(self, name: str) -> Value:
        if name in ("Role", "Content"):
            return self.role if name == "Role" else self.content
        if name in ("Thinking", "ToolName", "ToolCallID"):
            return ""
        return NilSlice() if name in ("Images", "ToolCalls") else super().field(name)


class _Values(Struct):
    """The map Ollama's Execute gives a template (with missingkey=zero: a missing key is a nil
    interface, which Go prints `<no value>`)."""

    kind = "map"

    def __init__(self, values: dict[str, Value]) -> None:
        self.values: dict[str, Value] = {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
        self.values |= values

    def field(self, name: str) -> Value:
        return self.values.get(name)


def _json(values: list[Value]) -> str:
    """Ollama's `json` (Go's json.Marshal) of a string, integer, boolean or nothing."""
    (v,) = values if len(values) == 1 else [[]]
    if isinstance(v, NilSlice) or v is None:
        return "null"
    if not isinstance(v, str | int):
        raise template_error(f"json of a {kind(v)} is not supported")
    text = json.dumps(v, ensure_ascii=False)
    for char in "<>&\u2028\u2029":  # json.Marshal escapes these for HTML
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


_FUNCS: dict[str, Function | None] = {"json": _json, "currentDate": None, "yesterdayDate": None}
_FUNCS |= {"toTypeScriptType": None}


def _execute(tree: list[Node], values: dict[str, Value]) -> str:
    return execute(tree, _Values(values), _FUNCS)


def _conversation(values: TemplateValues) -> list[tuple[str, str]]:
    turns = [("system", values.system)] if values.system else []
    turns.append(("user", values.prompt))
    return turns + ([("assistant", values.response)] if values.response else [])


def _collate(messages: Sequence[tuple[str, str]]) -> list[_Message]:
    """Consecutive messages of one role (but `tool`) merged with a blank line, as Ollama's."""
    out: list[_Message] = []
    for role, content in messages:
        if out and out[-1].role == role and role != "tool":
            out[-1] = _Message(role, out[-1].content + "\n\n" + content)
        else:
            out.append(_Message(role, content))
    return out


def _legacy(tree: list[Node], messages: list[_Message]) -> str:
    """Ollama's Execute for a template without `.Messages`: one execution per turn, the last
    one cut after `{{ .Response }}` so that the model writes the answer."""
    out: list[str] = []
    system = prompt = response = ""
    for role, content in ((m.role, m.content) for m in messages):
        if (role == "system" and (prompt or response)) or (role == "user" and response):
            out.append(_execute(tree, {"System": system, "Prompt": prompt, "Response": response}))
            system = prompt = response = ""
        if role == "system":
            system = content
        elif role == "user":
            prompt = content
        elif role == "assistant":
            response = content
    last: dict[str, Value] = {"System": system, "Prompt": prompt, "Response": response}
    return "".join(out) + _execute(_cut(tree)[0], last)


def _cut(nodes: list[Node]) -> tuple[list[Node], bool]:
    """`nodes` up to the first `.Response` field, as Ollama's deleteNode cuts them: whatever
    follows it goes, even the rest of its action, and an action left with an empty command
    goes whole. Branch conditions are not looked at. (Where Ollama panics, an {{else}} after a
    cut in its {{if}}, the {{else}} goes too.)"""
    out: list[Node] = []
    for node in nodes:
        if isinstance(node, Action):
            pipe, found = _cut_pipe(node.pipe)
            out += [Action(pipe)] if pipe else []
        elif isinstance(node, Branch):
            body, found = _cut(node.body)
            orelse, found = ([], True) if found else _cut(node.orelse)
            out.append(replace(node, body=body, orelse=orelse))
        else:
            out.append(node)
            found = False
        if found:
            return out, True
    return out, False


def _cut_pipe(pipe: Pipe) -> tuple[Pipe | None, bool]:
    cmds: list[tuple[Arg, ...]] = []
    found = False
    for cmd in pipe.cmds:
        args: list[Arg] = []
        for arg in cmd:
            if isinstance(arg, Ref) and arg.var is None and "Response" in arg.names:
                found = True  # deleteNode keeps every .Response field
                args.append(arg)
            elif isinstance(arg, Pipe) and not found:
                inner, found = _cut_pipe(arg)
                args += [inner] if inner else []
            elif not found:
                args.append(arg)
        if not args:
            return None, found
        cmds.append(tuple(args))
    return replace(pipe, cmds=tuple(cmds)), found
