"""Ollama's `template` field: the subset of Go's text/template that model templates use.

`render(source, values)` prints what Ollama's `template.Execute` prints (its template/template.go)
for the values its `/api/generate` builds (server/routes.go, GenerateHandler):

- a prompt with a suffix (fill in the middle) sees `.Prompt`, `.Suffix` and `.Response` ("");
- a template that names `.Messages` sees `.System` (the system messages joined by a blank
  line), `.Messages` (consecutive messages of one role merged) and `.Tools` (none);
- any other template is executed once per turn with `.System`, `.Prompt` and `.Response`, the
  last turn cut after its `{{ .Response }}`. A template that names neither `.Messages` nor
  `.Response` gets a `{{ .Response }}` appended first.

`.Think` is false, `.ThinkLevel` "" and `.IsThinkSet` false (Ollama's values when the client
sends no `think` to a model that cannot think); a message's `.Thinking`, `.ToolName` and
`.ToolCallID` are "", its `.Images` and `.ToolCalls` empty. One of these top-level fields that
the case at hand does not set prints `<no value>`, as in Go; any other field is refused.

The grammar: text; `{{ pipeline }}` with `{{- `/` -}}` trimming; `{{/* comments */}}`; `if`,
`else if`, `else`, `range` (`$i, $m :=`, `else`, `break`, `continue`), `with`, `end`; variables
(`$x := ...`, `$x = ...`, `$`, `$x.Field`); string, integer and boolean literals; `( )` and
`|`; the functions eq ne lt le gt ge and or not len index slice printf (%s %v %d %%). Anything
else is a BadRequest naming it, at parse time, or when it runs for a function Go and Ollama
know (print, json, currentDate, ...): those appear in tool branches that a request without
tools never runs. `define`, `template` and `block` are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeAlias

import msgspec

from core.errors import BadRequest


class TemplateValues(msgspec.Struct, frozen=True, kw_only=True):
    """The request's side. `messages`, when not empty, is the conversation; else it is
    `system` (when not empty), the user's `prompt` and `response` (when not empty), which is
    what Ollama's generate builds from its body."""

    system: str = ""
    prompt: str = ""
    response: str = ""
    suffix: str = ""
    messages: tuple[tuple[str, str], ...] = ()


def render(source: str, values: TemplateValues) -> str:
    """The prompt Ollama would build from the template `source` and `values`."""
    tree = _Parser(source).parse()
    names = {name.lower() for name in _names(tree)}
    if "messages" not in names and "response" not in names:
        tree = [*tree, _Action(_Pipe((), False, ((_Ref(None, ("Response",)),),)))]
    think: dict[str, Value] = {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    if values.prompt and values.suffix:
        fim: dict[str, Value] = {"Prompt": values.prompt, "Suffix": values.suffix, "Response": ""}
        return _execute(tree, fim | think)
    messages = values.messages or _conversation(values)
    system = "\n\n".join(content for role, content in messages if role == "system")
    collated = _collate(messages)
    if "messages" in names:
        chat: dict[str, Value] = {"System": system, "Messages": list(collated), "Response": ""}
        return _execute(tree, chat | {"Tools": _NIL_TOOLS} | think)
    return _legacy(tree, collated, think)


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


def _legacy(tree: list[_Node], messages: list[_Message], think: dict[str, Value]) -> str:
    """Ollama's Execute for a template without `.Messages`: one execution per turn, the last
    one cut after `{{ .Response }}` so that the model writes the answer."""
    out: list[str] = []
    system = prompt = response = ""
    for role, content in ((m.role, m.content) for m in messages):
        if (role == "system" and (prompt or response)) or (role == "user" and response):
            turn: dict[str, Value] = {"System": system, "Prompt": prompt, "Response": response}
            out.append(_execute(tree, turn | think))
            system = prompt = response = ""
        if role == "system":
            system = content
        elif role == "user":
            prompt = content
        elif role == "assistant":
            response = content
    last: dict[str, Value] = {"System": system, "Prompt": prompt, "Response": response}
    return "".join(out) + _execute(_cut(tree)[0], last | think)


def _cut(nodes: list[_Node]) -> tuple[list[_Node], bool]:
    """`nodes` up to the first `.Response` field, as Ollama's deleteNode cuts them: whatever
    follows it goes, even the rest of its action, and an action left with an empty command
    goes whole. Branch conditions are not looked at. (Where Ollama panics, an {{else}} after a
    cut in its {{if}}, the {{else}} goes too.)"""
    out: list[_Node] = []
    for node in nodes:
        if isinstance(node, _Action):
            pipe, found = _cut_pipe(node.pipe)
            out += [_Action(pipe)] if pipe else []
        elif isinstance(node, _Branch):
            body, found = _cut(node.body)
            orelse, found = ([], True) if found else _cut(node.orelse)
            out.append(replace(node, body=body, orelse=orelse))
        else:
            out.append(node)
            found = False
        if found:
            return out, True
    return out, False


def _cut_pipe(pipe: _Pipe) -> tuple[_Pipe | None, bool]:
    cmds: list[tuple[_Arg, ...]] = []
    found = False
    for cmd in pipe.cmds:
        args: list[_Arg] = []
        for arg in cmd:
            if isinstance(arg, _Ref) and arg.var is None and "Response" in arg.names:
                found = True  # deleteNode keeps every .Response field
                args.append(arg)
            elif isinstance(arg, _Pipe) and not found:
                inner, found = _cut_pipe(arg)
                args += [inner] if inner else []
            elif not found:
                args.append(arg)
        if not args:
            return None, found
        cmds.append(tuple(args))
    return replace(pipe, cmds=tuple(cmds)), found


# -- the tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    var: str | None  # None: a field of the dot
    names: tuple[str, ...]  # `.A.B` is (None, ("A", "B")); `.` is (None, ())


@dataclass(frozen=True)
class _Lit:
    value: str | int | bool


@dataclass(frozen=True)
class _Func:
    name: str


@dataclass(frozen=True)
class _Pipe:
    decl: tuple[str, ...]
    assign: bool  # `$x = ...`, not `$x := ...`
    cmds: tuple[tuple[_Arg, ...], ...]


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Action:
    pipe: _Pipe


@dataclass(frozen=True)
class _Branch:
    kind: str  # if, range, with
    pipe: _Pipe
    body: list[_Node]
    orelse: list[_Node]  # `else if` is an `if` alone in here, as in Go's tree


@dataclass(frozen=True)
class _Jump:
    kind: str  # break, continue


_Arg: TypeAlias = "_Ref | _Lit | _Func | _Pipe"
_Node: TypeAlias = "_Text | _Action | _Branch | _Jump"


def _names(nodes: Sequence[_Node | _Arg], *, variables: bool = True) -> Iterator[str]:
    """The names in fields (and variables) of pipelines, as Ollama's `Identifiers`: it tells
    which values a template gets."""
    for node in nodes:
        if isinstance(node, _Ref) and (node.var is None or variables):
            yield from (node.var, *node.names) if node.var else node.names
        elif isinstance(node, _Pipe):
            yield from (n for cmd in node.cmds for n in _names(cmd, variables=variables))
        elif isinstance(node, _Action | _Branch):
            yield from _names([node.pipe], variables=variables)
        if isinstance(node, _Branch):
            yield from _names([*node.body, *node.orelse], variables=variables)


# -- parsing --------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_TOKEN = re.compile(
    r"""(?P<space>(?:[ \t\r\n](?!-}}))+) | (?P<close>[ \t\r\n]-}}|}})
    | (?P<string>"(?:[^"\\\n]|\\.)*") | (?P<raw>`[^`]*`) | (?P<var>\$\w*(?:\.\w+)*)
    | (?P<field>(?:\.\w+)+) | (?P<dot>\.) | (?P<number>[-+]?\d[\w.]*) | (?P<word>\w+)
    | (?P<punct>:=|[=|(),])""",
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPES |= {"\\": "\\", '"': '"'}
_FUNCS = {"eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "len", "index", "slice"}
_FUNCS |= {"printf", "print", "println", "html", "js", "urlquery", "call"}  # Go's builtins
_FUNCS |= {"json", "currentDate", "yesterdayDate", "toTypeScriptType"}  # Ollama's
_DECLS = (["var", ":="], ["var", "="], ["var", ",", "var", ":="])
_Token: TypeAlias = tuple[str, str]  # kind (a group of _TOKEN), text


def _unquote(token: str) -> str:
    def one(m: re.Match[str]) -> str:
        s = m.group()[1:]
        if len(s) == 1 and s not in _ESCAPES:
            raise _error(f"invalid escape \\{s} in {token}")
        return _ESCAPES.get(s) or chr(int(s[1:], 16) if s[0] in "xuU" else int(s, 8))

    return _ESCAPE.sub(one, token[1:-1])


def _lex(source: str) -> Iterator[str | tuple[int, list[_Token]]]:
    """The text between actions (trimmed as their markers say) and each action as (line,
    tokens); comments are dropped."""
    pos, trim_next = 0, False
    while (start := source.find("{{", pos)) >= 0:
        line = source.count("\n", 0, start) + 1
        trim = source[start + 2 : start + 3] == "-" and source[start + 3 : start + 4] in (*_SPACE,)
        text = source[pos:start].lstrip(_SPACE) if trim_next else source[pos:start]
        yield text.rstrip(_SPACE) if trim else text
        pos = start + (4 if trim else 2)
        if source.startswith("/*", pos):
            end = source.find("*/", pos + 2)
            if end < 0:
                raise _error(f"line {line}: unclosed comment")
            if not (m := _TOKEN.match(source, end + 2)) or m.lastgroup != "close":
                raise _error(f"line {line}: comment ends before closing delimiter")
            trim_next, pos = m.group() != "}}", m.end()
            continue
        tokens: list[_Token] = []
        while (m := _TOKEN.match(source, pos)) and m.lastgroup != "close":
            if m.lastgroup == "field" and source[pos - 1] == ")":
                raise _error(f"line {line}: a field of a (pipeline) is not supported")
            if m.lastgroup != "space":
                tokens.append((m.lastgroup or "", m.group()))
            pos = m.end()
        if not m:
            what = f"{source[pos]!r} in action" if pos < len(source) else "unclosed action"
            raise _error(f"line {line}: {what}")
        trim_next, pos = m.group() != "}}", m.end()
        yield line, tokens
    yield source[pos:].lstrip(_SPACE) if trim_next else source[pos:]


class _Parser:
    def __init__(self, source: str) -> None:
        self.items = [item for item in _lex(source) if item != ""]
        self.pos, self.line, self.ranges, self.vars = 0, 0, 0, ["$"]

    def parse(self) -> list[_Node]:
        nodes, stop = self.body()
        if stop:
            raise self.error(f"unexpected {{{{{stop[0][1]}}}}}")
        return nodes

    def error(self, message: str) -> BadRequest:
        return _error(f"line {self.line}: {message}")

    def body(self) -> tuple[list[_Node], list[_Token]]:
        """Nodes up to an `{{ else ... }}` or `{{ end }}`, returned with its tokens."""
        nodes: list[_Node] = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if isinstance(item, str):
                nodes.append(_Text(item))
                continue
            self.line, tokens = item
            word = tokens[0][1] if tokens and tokens[0][0] == "word" else ""
            if word in ("else", "end"):
                return nodes, tokens
            if word in ("if", "range", "with"):
                nodes.append(self.branch(word, tokens[1:]))
            elif word in ("break", "continue"):
                if not self.ranges or len(tokens) > 1:
                    raise self.error(f"{{{{{word}}}}} outside {{{{range}}}}")
                nodes.append(_Jump(word))
            elif word in ("define", "template", "block"):
                raise self.error(f"{{{{{word}}}}} is not supported")
            else:
                nodes.append(_Action(self.pipe(tokens, "command")))
        return nodes, []

    def branch(self, kind: str, tokens: list[_Token]) -> _Branch:
        mark = len(self.vars)
        pipe = self.pipe(tokens, kind)
        self.ranges += kind == "range"
        body, stop = self.body()
        self.ranges -= kind == "range"
        orelse: list[_Node] = []
        if stop[:1] == [("word", "else")] and len(stop) > 1:
            if kind == "range" or stop[1][1] != kind:
                raise self.error(f"{{{{else {stop[1][1]}}}}} in {{{{{kind}}}}}")
            orelse, stop = [self.branch(kind, stop[2:])], [("word", "end")]
        elif stop[:1] == [("word", "else")]:
            orelse, stop = self.body()
        if stop != [("word", "end")]:
            raise self.error(f"unclosed {{{{{kind}}}}}" if not stop else "bad {{end}}")
        del self.vars[mark:]
        return _Branch(kind, pipe, body, orelse)

    def pipe(self, tokens: list[_Token], context: str) -> _Pipe:
        """A pipeline, with its declaration: `$x :=`, `$x =`, or `$i, $x :=` in a range."""
        shape = [kind if kind != "punct" else text for kind, text in tokens[:4]]
        n = next((len(s) for s in _DECLS if shape[: len(s)] == s), 0)
        if n == 4 and context != "range":
            raise self.error(f"too many declarations in {context}")
        decl = [text for kind, text in tokens[:n] if kind == "var"]
        if any("." in var for var in decl):
            raise self.error(f"cannot assign to a field: {tokens[0][1]}")
        if n and shape[n - 1] == "=" and decl[0] not in self.vars:
            raise self.error(f"undefined variable {decl[0]}")
        pipe = self.commands(iter(tokens[n:]), context)
        self.vars.extend(decl)
        return replace(pipe, decl=tuple(decl), assign=n > 0 and shape[n - 1] == "=")

    def commands(self, it: Iterator[_Token], context: str) -> _Pipe:
        """Commands separated by `|`, up to the end of `it` or, for a `(`, its `)`."""
        cmds: list[tuple[_Arg, ...]] = []
        args: list[_Arg] = []
        for kind, text in it:
            if kind == "punct" and text in ("|", ")"):
                if not args or (text == ")" and context != "("):
                    raise self.error(f"unexpected {text!r} in {context}")
                cmds.append(tuple(args))
                args = []
                if text == ")":
                    return _Pipe((), False, tuple(cmds))
            else:
                args.append(self.operand(kind, text, it))
        if context == "(" or not args:
            raise self.error("unclosed left paren" if args else f"missing value for {context}")
        return _Pipe((), False, (*cmds, tuple(args)))

    def operand(self, kind: str, text: str, it: Iterator[_Token]) -> _Arg:
        if kind == "string":
            return _Lit(_unquote(text))
        if kind == "raw":
            return _Lit(text[1:-1].replace("\r", ""))
        if kind == "number" and text.lstrip("+-").isdigit():
            return _Lit(int(text))
        if kind in ("field", "dot"):
            return _Ref(None, tuple(text.split(".")[1:]) if kind == "field" else ())
        if kind == "var":
            var, *names = text.split(".")
            if var not in self.vars:
                raise self.error(f"undefined variable {var}")
            return _Ref(var, tuple(names))
        if (kind, text) == ("punct", "("):
            return self.commands(it, "(")
        if text in ("true", "false"):
            return _Lit(text == "true")
        if text in _FUNCS:
            return _Func(text)
        if kind == "word" and text not in ("nil", "if", "else", "end", "range", "with"):
            raise self.error(f"function {text!r} not defined")
        raise self.error(f"{text!r} is not supported here")


# -- values and execution -------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    role: str
    content: str

    def field(self, name: str) -> Value:
        if name in ("Role", "Content"):
            return self.role if name == "Role" else self.content
        if name not in _UNSET:
            raise _error(f"can't evaluate field {name} in a message")
        return _UNSET[name]


@dataclass(frozen=True)
class _NilSlice:
    """Go's nil slice: false and empty; printed `[]`, or `null` for `.Tools` (a Stringer)."""

    printed: str


_NIL_LIST, _NIL_TOOLS = _NilSlice("[]"), _NilSlice("null")
_UNSET: dict[str, Value] = {"Thinking": "", "ToolName": "", "ToolCallID": ""}
_UNSET |= {"Images": _NIL_LIST, "ToolCalls": _NIL_LIST}  # a message's fields we never fill
_TOP = {"System", "Prompt", "Response", "Suffix", "Messages", "Tools", "Think", "ThinkLevel"}
_TOP |= {"IsThinkSet"}
_ARITY = {"ne": 2, "lt": 2, "le": 2, "gt": 2, "ge": 2, "not": 1, "len": 1}
Value: TypeAlias = "str | int | bool | list[Value] | dict[str, Value] | _Message | _NilSlice | None"


def _error(message: str) -> BadRequest:
    return BadRequest(f"template: {message}", param="template")


def _kind(v: Value) -> str:
    if isinstance(v, _Message | _NilSlice):
        return "message" if isinstance(v, _Message) else "list"
    return {bool: "bool", int: "int", str: "string", list: "list", dict: "map"}.get(
        type(v), "<no value>"
    )


def _truth(v: Value) -> bool:
    return isinstance(v, _Message) or (not isinstance(v, _NilSlice) and bool(v))


def _print(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int):
        return str(v)
    if v is None or isinstance(v, _NilSlice):
        return "<no value>" if v is None else v.printed
    if v == []:
        return "[]"
    raise _error(f"printing a {_kind(v)} is not supported (Go prints its internal form)")


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _execute(tree: list[_Node], data: dict[str, Value]) -> str:
    state = _State([("$", data)])
    state.walk(tree, data)
    return "".join(state.out)


@dataclass
class _State:
    vars: list[tuple[str, Value]]  # a stack, popped at the end of a branch or an iteration
    out: list[str] = field(default_factory=list)

    def walk(self, nodes: list[_Node], dot: Value) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipe(node.pipe, dot)
                self.out.append("" if node.pipe.decl else _print(value))
            elif isinstance(node, _Jump):
                raise _Break() if node.kind == "break" else _Continue()
            else:
                mark = len(self.vars)
                if node.kind == "range":
                    self.loop(node, dot)
                elif _truth(value := self.pipe(node.pipe, dot)):
                    self.walk(node.body, value if node.kind == "with" else dot)
                else:
                    self.walk(node.orelse, dot)
                del self.vars[mark:]

    def loop(self, node: _Branch, dot: Value) -> None:
        """Go's range: its variables hold the whole value, then each index and element."""
        value, decl, top = self.pipe(node.pipe, dot), node.pipe.decl, len(self.vars)
        if isinstance(value, list):
            items: list[tuple[Value, Value]] = list(enumerate(value))
        elif isinstance(value, dict | _NilSlice) or value is None:
            items = sorted(value.items()) if isinstance(value, dict) else []
        else:
            raise _error(f"range can't iterate over a {_kind(value)}")
        for key, item in items:
            if node.pipe.assign:
                self.vars[self.find(decl[0])] = (decl[0], item)
            elif decl:
                bound = [key, item] if len(decl) == 2 else [item]
                self.vars[top - len(decl) : top] = list(zip(decl, bound, strict=True))
            try:
                self.walk(node.body, item)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[top:]
        if not items:
            self.walk(node.orelse, dot)

    def pipe(self, pipe: _Pipe, dot: Value) -> Value:
        value: Value = None
        for i, cmd in enumerate(pipe.cmds):
            value = self.command(cmd, dot, [value] if i else [])
        if pipe.decl and pipe.assign:
            self.vars[self.find(pipe.decl[0])] = (pipe.decl[0], value)
        else:
            self.vars += [(name, value) for name in pipe.decl]
        return value

    def find(self, var: str) -> int:
        for at in range(len(self.vars) - 1, -1, -1):
            if self.vars[at][0] == var:
                return at
        raise _error(f"undefined variable {var}")

    def command(self, cmd: tuple[_Arg, ...], dot: Value, piped: list[Value]) -> Value:
        head, *args = cmd
        if isinstance(head, _Func):
            return self.call(head.name, args, dot, piped)
        if args or piped:
            raise _error(f"can't give an argument to a non-function ({head})")
        return self.arg(head, dot)

    def arg(self, arg: _Arg, dot: Value) -> Value:
        if isinstance(arg, _Lit):
            return arg.value
        if isinstance(arg, _Pipe):
            return self.pipe(arg, dot)
        if isinstance(arg, _Func):
            return self.call(arg.name, [], dot, [])
        value = dot if arg.var is None else self.vars[self.find(arg.var)][1]
        for name in arg.names:
            if isinstance(value, _Message):
                value = value.field(name)
            elif isinstance(value, dict):
                if name not in _TOP:
                    raise _error(f"unknown field .{name}")
                value = value.get(name)  # not set in this case: Go prints <no value>
            else:
                raise _error(f"can't evaluate field {name} in a {_kind(value)}")
        return value

    def call(self, name: str, args: list[_Arg], dot: Value, piped: list[Value]) -> Value:
        if name in ("and", "or"):  # Go evaluates their arguments lazily
            if not args and not piped:
                raise _error(f"wrong number of args for {name}: want at least 1 got 0")
            value: Value = None
            for i in range(len(args) + len(piped)):
                value = self.arg(args[i], dot) if i < len(args) else piped[0]
                if _truth(value) == (name == "or"):
                    break
            return value
        values = [self.arg(a, dot) for a in args] + piped
        if len(values) != _ARITY.get(name, len(values)):
            raise _error(f"wrong number of args for {name}: want {_ARITY[name]} got {len(values)}")
        if name == "eq":
            if len(values) < 2:
                raise _error("missing argument for comparison")
            return any(_equal(values[0], v) for v in values[1:])
        if name == "ne":
            return not _equal(*values)
        if name in ("lt", "le", "gt", "ge"):
            order = _order(name, *values)
            return {"lt": order < 0, "le": order <= 0, "gt": order > 0, "ge": order >= 0}[name]
        if name == "not":
            return not _truth(values[0])
        if name == "len":
            return _len(values[0])
        if name == "index":
            return _index(values)
        if name == "slice":
            return _slice(values)
        if name == "printf":
            return _printf(values)
        if name == "json":
            return _json(values)
        raise _error(f"function {name!r} is not supported")


def _json(values: list[Value]) -> str:
    """Ollama's `json` (Go's json.Marshal) of a string, integer, boolean or nothing."""
    (v,) = values if len(values) == 1 else [[]]
    if isinstance(v, _NilSlice) or v is None:
        return "null"
    if not isinstance(v, str | int):
        raise _error(f"json of a {_kind(v)} is not supported")
    text = json.dumps(v, ensure_ascii=False)
    for char in "<>&\u2028\u2029":  # json.Marshal escapes these for HTML
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _equal(a: Value, b: Value) -> bool:
    """Go's eq of two values: basic ones (string, int, bool) of one kind; <no value> and nil
    lists equal each other and nothing else; a message only itself."""
    basic = ("string", "int", "bool")
    if _kind(a) != _kind(b) and (_kind(a) in basic or _kind(b) in basic):
        if a is None or b is None:
            return False
        raise _error(f"eq: incompatible types for comparison: a {_kind(a)} and a {_kind(b)}")
    if _kind(a) in basic:
        return a == b
    if a is None or b is None or isinstance(a, _NilSlice) or isinstance(b, _NilSlice):
        comparable = a is None or b is None or _kind(a) == _kind(b)
        if comparable:
            return (a is None or isinstance(a, _NilSlice)) and (
                b is None or isinstance(b, _NilSlice)
            )
    elif isinstance(a, _Message) and isinstance(b, _Message):
        return a is b
    raise _error(f"eq: non-comparable types: a {_kind(a)} and a {_kind(b)}")


def _order(name: str, a: Value, b: Value) -> int:
    """-1, 0 or 1: Go's lt, le, gt and ge compare two strings or two integers."""
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    if isinstance(a, int) and isinstance(b, int) and _kind(a) == _kind(b) == "int":
        return (a > b) - (a < b)
    raise _error(f"{name}: can't compare a {_kind(a)} with a {_kind(b)}")


def _len(v: Value) -> int:
    if isinstance(v, str | list | dict | _NilSlice):
        return 0 if isinstance(v, _NilSlice) else len(v.encode() if isinstance(v, str) else v)
    raise _error(f"len of a {_kind(v)}")


def _int(v: Value) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _error(f"cannot index with a {_kind(v)}")
    return v


def _index(values: list[Value]) -> Value:
    """Go's `index x 1 2`: x[1][2], of lists, the top-level map and strings (a byte)."""
    v, *keys = values or [None]
    if v is None:
        raise _error("index of untyped nil")
    for key in keys:
        if isinstance(v, dict) and isinstance(key, str):
            v = v.get(key)
        elif isinstance(v, list | str | _NilSlice):
            seq = v.encode() if isinstance(v, str) else [] if isinstance(v, _NilSlice) else v
            if not 0 <= _int(key) < len(seq):
                raise _error(f"index out of range: {key}")
            v = seq[_int(key)]
        else:
            raise _error(f"can't index a {_kind(v)} with {key!r}")
    return v


def _slice(values: list[Value]) -> Value:
    """Go's `slice x 1 2`: x[1:2], of a list or of a string by its UTF-8 bytes."""
    v, *bounds = values or [None]
    if isinstance(v, _NilSlice) and all(_int(b) == 0 for b in bounds):
        return v
    if not isinstance(v, str | list) or len(bounds) > (2 if isinstance(v, str) else 3):
        raise _error(f"can't slice a {_kind(v)} with {len(bounds)} indexes")
    seq: bytes | list[Value] = v.encode() if isinstance(v, str) else v
    lo, hi, cap = [*map(_int, bounds), *(0, len(seq), len(seq))[len(bounds) :]]
    if not 0 <= lo <= hi <= cap <= len(seq):
        raise _error(f"slice index out of range: {bounds}")
    return seq[lo:hi].decode(errors="replace") if isinstance(seq, bytes) else seq[lo:hi]


_MISSING: Value = []  # a marker: no argument left
_VERBS = {"s": ("string",), "d": ("int",), "v": ("string", "int", "bool")}


def _printf(values: list[Value]) -> str:
    """Go's fmt.Sprintf for %s, %d, %v and %% of strings, integers and booleans, with Go's
    marks for a wrong, missing or extra argument (`%!d(string=x)`, `%!s(MISSING)`)."""
    fmt, *args = values or [None]
    if not isinstance(fmt, str) or any(not isinstance(a, str | int | None) for a in args):
        raise _error("printf of anything but strings, integers and booleans is not supported")
    rest = iter(args)

    def verb(m: re.Match[str]) -> str:
        if m.group() == "%%" or m.group() == "%":
            return "%" if m.group() == "%%" else "%!(NOVERB)"
        if (c := m.group()[1]) not in _VERBS:
            raise _error(f"printf verb {m.group()!r} is not supported")
        if (arg := next(rest, _MISSING)) is _MISSING:
            return f"%!{c}(MISSING)"
        if arg is None:  # <no value> is a nil interface to printf
            return "<nil>" if c == "v" else f"%!{c}(<nil>)"
        ok = _kind(arg) in _VERBS[c]
        return _print(arg) if ok else f"%!{c}({_kind(arg)}={_print(arg)})"

    text = re.sub(r"%.?", verb, fmt, flags=re.DOTALL)
    extra = ", ".join(f"{_kind(a)}={_print(a)}" if a is not None else "<nil>" for a in rest)
    return text + (f"%!(EXTRA {extra})" if extra else "")
