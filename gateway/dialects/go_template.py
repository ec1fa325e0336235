"""The subset of Go's text/template that Ollama's model templates use.

`parse(source, funcs)` reads a template into a small tree and `execute(tree, data, funcs)`
prints it with Go's rules (text/template: no HTML escaping). The grammar: text;
`{{ pipeline }}` with `{{- `/` -}}` trimming; `{{/* comments */}}`; `if`, `else if`, `else`,
`range` (`$i, $m :=`, `else`, `break`, `continue`), `with`, `else with`, `end`; variables
(`$x := ...`, `$x = ...`, `$`, `$x.Field`); string, integer and boolean literals; `( )` and
`|`; the functions eq ne lt le gt ge and or not len index slice printf (%s %d %v %%) and the
caller's. Anything else is a BadRequest (param "template") naming it: at parse time, or when
it runs for a function Go knows (print, html, ...) or one the caller names without a body.
Values are strings, integers, booleans, lists, `Struct`s (fields by name), `NilSlice`s and
None (Go's <no value>); printing a list or a struct, which Go prints as its internal form, is
refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from core.errors import BadRequest

# -- the tree ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    var: str | None  # None: a field of the dot
    names: tuple[str, ...]  # `.A.B` is (None, ("A", "B")); `.` is (None, ())


@dataclass(frozen=True)
class Lit:
    value: str | int | bool


@dataclass(frozen=True)
class Func:
    name: str


@dataclass(frozen=True)
class Pipe:
    decl: tuple[str, ...]
    assign: bool  # `$x = ...`, not `$x := ...`
    cmds: tuple[tuple[Arg, ...], ...]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Action:
    pipe: Pipe


@dataclass(frozen=True)
class Branch:
    kind: str  # if, range, with
    pipe: Pipe
    body: list[Node]
    orelse: list[Node]  # `else if` is an `if` alone in here, as in Go's tree


@dataclass(frozen=True)
class Jump:
    kind: str  # break, continue


Arg: TypeAlias = "Ref | Lit | Func | Pipe"
Node: TypeAlias = "Text | Action | Branch | Jump"


def names(nodes: Sequence[Node | Arg], *, variables: bool = True) -> Iterator[str]:
    """The names in the fields (and variables) of the pipelines of `nodes`, in order."""
    for node in nodes:
        if isinstance(node, Ref) and (node.var is None or variables):
            yield from (node.var, *node.names) if node.var else node.names
        elif isinstance(node, Pipe):
            yield from (n for cmd in node.cmds for n in names(cmd, variables=variables))
        elif isinstance(node, Action | Branch):
            yield from names([node.pipe], variables=variables)
        if isinstance(node, Branch):
            yield from names([*node.body, *node.orelse], variables=variables)


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
_BUILTINS = {"eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "len", "index", "slice"}
_BUILTINS |= {"printf", "print", "println", "html", "js", "urlquery", "call"}  # Go's
_DECLS = (["var", ":="], ["var", "="], ["var", ",", "var", ":="])
_Token: TypeAlias = tuple[str, str]  # kind (a group of _TOKEN), text


def _unquote(token: str) -> str:
    """Go's strconv.Unquote, but for a byte (\\x, octal) past ASCII."""

    def one(m: re.Match[str]) -> str:
        s = m.group()[1:]
        if s in _ESCAPES:
            return _ESCAPES[s]
        code = int(s[1:], 16) if s[0] in "xuU" and len(s) > 1 else int(s, 8) if len(s) > 1 else -1
        limit = 0x110000 if s[0] in "uU" else 0x80
        if not 0 <= code < limit or 0xD800 <= code < 0xE000:
            raise template_error(f"invalid or unsupported escape \\{s} in {token}")
        return chr(code)

    return _ESCAPE.sub(one, token[1:-1])


def _lex(source: str) -> Iterator[str | tuple[int, list[_Token]]]:
    """The text between actions (trimmed as their markers say) and each action as (line,
    tokens); comments are dropped."""
    pos, trim_next, line = 0, False, 1
    while (start := source.find("{{", pos)) >= 0:
        line += source.count("\n", pos, start)  # the line where the action starts
        trim = source[start + 2 : start + 3] == "-" and source[start + 3 : start + 4] in (*_SPACE,)
        text = source[pos:start].lstrip(_SPACE) if trim_next else source[pos:start]
        yield text.rstrip(_SPACE) if trim else text
        pos = start + (4 if trim else 2)
        if source.startswith("/*", pos):
            end = source.find("*/", pos + 2)
            if end < 0:
                raise template_error(f"line {line}: unclosed comment")
            if not (m := _TOKEN.match(source, end + 2)) or m.lastgroup != "close":
                raise template_error(f"line {line}: comment ends before closing delimiter")
            line += source.count("\n", start, m.end())
            trim_next, pos = m.group() != "}}", m.end()
            continue
        tokens: list[_Token] = []
        while (m := _TOKEN.match(source, pos)) and m.lastgroup != "close":
            if m.lastgroup == "field" and source[pos - 1] == ")":
                raise template_error(f"line {line}: a field of a (pipeline) is not supported")
            if m.lastgroup != "space":
                tokens.append((m.lastgroup or "", m.group()))
            pos = m.end()
        if not m:
            what = f"{source[pos]!r} in action" if pos < len(source) else "unclosed action"
            raise template_error(f"line {line}: {what}")
        yield line, tokens
        line += source.count("\n", start, m.end())
        trim_next, pos = m.group() != "}}", m.end()
    yield source[pos:].lstrip(_SPACE) if trim_next else source[pos:]


def parse(source: str, funcs: Collection[str] = ()) -> list[Node]:
    """The tree of template `source`, which may call the functions named in `funcs`."""
    return _Parser(source, {*_BUILTINS, *funcs}).parse()


class _Parser:
    def __init__(self, source: str, funcs: set[str]) -> None:
        self.items = [item for item in _lex(source) if item != ""]
        self.pos, self.line, self.ranges, self.vars, self.funcs = 0, 0, 0, ["$"], funcs
        self.depth = 0  # of branches and parentheses: Python's stack is not Go's

    def parse(self) -> list[Node]:
        nodes, stop = self.body()
        if stop:
            raise self.error(f"unexpected {{{{{stop[0][1]}}}}}")
        return nodes

    def error(self, message: str) -> BadRequest:
        return template_error(f"line {self.line}: {message}")

    def body(self) -> tuple[list[Node], list[_Token]]:
        """Nodes up to an `{{ else ... }}` or `{{ end }}`, returned with its tokens."""
        nodes: list[Node] = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if isinstance(item, str):
                nodes.append(Text(item))
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
                nodes.append(Jump(word))
            elif word in ("define", "template", "block"):
                raise self.error(f"{{{{{word}}}}} is not supported")
            else:
                nodes.append(Action(self.pipe(tokens, "command")))
        return nodes, []

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH}")

    def branch(self, kind: str, tokens: list[_Token]) -> Branch:
        self.nest()
        mark = len(self.vars)
        pipe = self.pipe(tokens, kind)
        self.ranges += kind == "range"
        body, stop = self.body()
        self.ranges -= kind == "range"
        orelse: list[Node] = []
        if stop[:1] == [("word", "else")] and len(stop) > 1:
            if kind == "range" or stop[1][1] != kind:
                raise self.error(f"{{{{else {stop[1][1]}}}}} in {{{{{kind}}}}}")
            orelse, stop = [self.branch(kind, stop[2:])], [("word", "end")]
        elif stop[:1] == [("word", "else")]:
            orelse, stop = self.body()
        if stop != [("word", "end")]:
            raise self.error(f"unclosed {{{{{kind}}}}}" if not stop else "bad {{end}}")
        del self.vars[mark:]
        self.depth -= 1
        return Branch(kind, pipe, body, orelse)

    def pipe(self, tokens: list[_Token], context: str) -> Pipe:
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

    def commands(self, it: Iterator[_Token], context: str) -> Pipe:
        """Commands separated by `|`, up to the end of `it` or, for a `(`, its `)`."""
        cmds: list[tuple[Arg, ...]] = []
        args: list[Arg] = []
        for kind, text in it:
            if kind == "punct" and text in ("|", ")"):
                if not args or (text == ")" and context != "("):
                    raise self.error(f"unexpected {text!r} in {context}")
                cmds.append(tuple(args))
                args = []
                if text == ")":
                    return Pipe((), False, tuple(cmds))
            else:
                args.append(self.operand(kind, text, it))
        if context == "(" or not args:
            raise self.error("unclosed left paren" if args else f"missing value for {context}")
        return Pipe((), False, (*cmds, tuple(args)))

    def operand(self, kind: str, text: str, it: Iterator[_Token]) -> Arg:
        if kind == "string":
            return Lit(_unquote(text))
        if kind == "raw":
            return Lit(text[1:-1].replace("\r", ""))
        if kind == "number" and text.lstrip("+-").isdigit():
            return Lit(int(text))
        if kind in ("field", "dot"):
            return Ref(None, tuple(text.split(".")[1:]) if kind == "field" else ())
        if kind == "var":
            var, *names = text.split(".")
            if var not in self.vars:
                raise self.error(f"undefined variable {var}")
            return Ref(var, tuple(names))
        if (kind, text) == ("punct", "("):
            self.nest()
            pipe = self.commands(it, "(")
            self.depth -= 1
            return pipe
        if text in ("true", "false"):
            return Lit(text == "true")
        if text in self.funcs:
            return Func(text)
        if kind == "word" and text not in ("nil", "if", "else", "end", "range", "with"):
            raise self.error(f"function {text!r} not defined")
        raise self.error(f"{text!r} is not supported here")


# -- values and execution -----------------------------------------------------------------


class Struct:
    """A Go struct, or map: a value with fields."""

    kind = "struct"

    def field(self, name: str) -> Value:
        raise template_error(f"can't evaluate field {name} in a {self.kind}")


@dataclass(frozen=True)
class NilSlice:
    """Go's nil slice: false and empty; printed `[]`, or as its type's String method prints it."""

    printed: str = "[]"


Value: TypeAlias = "str | int | bool | list[Value] | Struct | NilSlice | None"
MAX_DEPTH = 64  # nested branches and parentheses
MAX_STEPS = 1_000_000  # nodes walked in one execution
MAX_OUTPUT = 16 * 2**20  # characters printed by one execution
Function: TypeAlias = Callable[[list["Value"]], "Value"]
_ARITY = {"ne": 2, "lt": 2, "le": 2, "gt": 2, "ge": 2, "not": 1, "len": 1}


def template_error(message: str) -> BadRequest:
    return BadRequest(f"template: {message}", param="template")


def kind(v: Value) -> str:
    """Its kind, as errors name it."""
    if isinstance(v, Struct | NilSlice):
        return v.kind if isinstance(v, Struct) else "list"
    return {bool: "bool", int: "int", str: "string", list: "list"}.get(type(v), "<no value>")


def _truth(v: Value) -> bool:
    return isinstance(v, Struct) or (not isinstance(v, NilSlice) and bool(v))


def _print(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int):
        return str(v)
    if v is None or isinstance(v, NilSlice):
        return "<no value>" if v is None else v.printed
    if v == []:
        return "[]"
    raise template_error(f"printing a {kind(v)} is not supported (Go prints its internal form)")


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def execute(tree: list[Node], data: Value, funcs: Mapping[str, Function | None] = {}) -> str:
    """`tree` printed with `data` as its dot and `$`. `funcs` are the functions that `parse`
    was told of; None is one that is not supported (a BadRequest if it runs)."""
    state = _State([("$", data)], funcs)
    state.walk(tree, data)
    return "".join(state.out)


@dataclass
class _State:
    vars: list[tuple[str, Value]]  # a stack, popped at the end of a branch or an iteration
    funcs: Mapping[str, Function | None]
    out: list[str] = field(default_factory=list)
    steps: int = 0  # nodes walked, for MAX_STEPS: nested ranges multiply
    size: int = 0  # characters printed

    def walk(self, nodes: list[Node], dot: Value) -> None:
        self.steps += len(nodes)
        if self.steps > MAX_STEPS or self.size > MAX_OUTPUT:
            what = f"{MAX_STEPS} steps" if self.steps > MAX_STEPS else f"{MAX_OUTPUT} characters"
            raise template_error(f"the template runs past {what}")
        for node in nodes:
            if isinstance(node, Text | Action):
                text = node.text if isinstance(node, Text) else self.action(node.pipe, dot)
                self.out.append(text)
                self.size += len(text)
            elif isinstance(node, Jump):
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

    def action(self, pipe: Pipe, dot: Value) -> str:
        value = self.pipe(pipe, dot)
        return "" if pipe.decl else _print(value)

    def loop(self, node: Branch, dot: Value) -> None:
        """Go's range: its variables hold the whole value, then each index and element."""
        value, decl, top = self.pipe(node.pipe, dot), node.pipe.decl, len(self.vars)
        if isinstance(value, list):
            items: list[tuple[Value, Value]] = list(enumerate(value))
        elif isinstance(value, NilSlice) or value is None:
            items = []
        else:
            raise template_error(f"range can't iterate over a {kind(value)}")
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

    def pipe(self, pipe: Pipe, dot: Value) -> Value:
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
        raise template_error(f"undefined variable {var}")

    def command(self, cmd: tuple[Arg, ...], dot: Value, piped: list[Value]) -> Value:
        head, *args = cmd
        if isinstance(head, Func):
            return self.call(head.name, args, dot, piped)
        if args or piped:
            raise template_error(f"can't give an argument to a non-function ({head})")
        return self.arg(head, dot)

    def arg(self, arg: Arg, dot: Value) -> Value:
        if isinstance(arg, Lit):
            return arg.value
        if isinstance(arg, Pipe):
            return self.pipe(arg, dot)
        if isinstance(arg, Func):
            return self.call(arg.name, [], dot, [])
        value = dot if arg.var is None else self.vars[self.find(arg.var)][1]
        for name in arg.names:
            if isinstance(value, Struct):
                value = value.field(name)
            else:
                raise template_error(f"can't evaluate field {name} in a {kind(value)}")
        return value

    def call(self, name: str, args: list[Arg], dot: Value, piped: list[Value]) -> Value:
        if name in ("and", "or"):  # Go evaluates their arguments lazily
            if not args and not piped:
                raise template_error(f"wrong number of args for {name}: want at least 1 got 0")
            value: Value = None
            for i in range(len(args) + len(piped)):
                value = self.arg(args[i], dot) if i < len(args) else piped[0]
                if _truth(value) == (name == "or"):
                    break
            return value
        values = [self.arg(a, dot) for a in args] + piped
        if len(values) != _ARITY.get(name, len(values)):
            raise template_error(
                f"wrong number of args for {name}: want {_ARITY[name]} got {len(values)}"
            )
        if name == "eq":
            if len(values) < 2:
                raise template_error("missing argument for comparison")
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
        if function := self.funcs.get(name):
            return function(values)
        raise template_error(f"function {name!r} is not supported")


def _equal(a: Value, b: Value) -> bool:
    """Go's eq of two values: basic ones (string, int, bool) of one kind; <no value> and nil
    lists equal each other and nothing else; a struct only itself."""
    basic = ("string", "int", "bool")
    if kind(a) != kind(b) and (kind(a) in basic or kind(b) in basic):
        if a is None or b is None:
            return False
        raise template_error(f"eq: incompatible types for comparison: a {kind(a)} and a {kind(b)}")
    if kind(a) in basic:
        return a == b
    nil_a, nil_b = a is None or isinstance(a, NilSlice), b is None or isinstance(b, NilSlice)
    if (nil_a or nil_b) and (a is None or b is None or kind(a) == kind(b)):
        return nil_a and nil_b
    if isinstance(a, Struct) and isinstance(b, Struct):
        return a is b
    raise template_error(f"eq: non-comparable types: a {kind(a)} and a {kind(b)}")


def _order(name: str, a: Value, b: Value) -> int:
    """-1, 0 or 1: Go's lt, le, gt and ge compare two strings or two integers."""
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    if isinstance(a, int) and isinstance(b, int) and kind(a) == kind(b) == "int":
        return (a > b) - (a < b)
    raise template_error(f"{name}: can't compare a {kind(a)} with a {kind(b)}")


def _len(v: Value) -> int:
    if isinstance(v, str | list | NilSlice):
        return 0 if isinstance(v, NilSlice) else len(_utf8(v) if isinstance(v, str) else v)
    raise template_error(f"len of a {kind(v)}")


def _int(v: Value) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise template_error(f"cannot index with a {kind(v)}")
    return v


def _index(values: list[Value]) -> Value:
    """Go's `index x 1 2`: x[1][2], of lists and strings (a byte)."""
    v, *keys = values or [None]
    if v is None:
        raise template_error("index of untyped nil")
    for key in keys:
        if isinstance(v, list | str | NilSlice):
            seq = _utf8(v) if isinstance(v, str) else [] if isinstance(v, NilSlice) else v
            if not 0 <= _int(key) < len(seq):
                raise template_error(f"index out of range: {key}")
            v = seq[_int(key)]
        else:
            raise template_error(f"can't index a {kind(v)} with {key!r}")
    return v


def _slice(values: list[Value]) -> Value:
    """Go's `slice x 1 2`: x[1:2], of a list or of a string by its UTF-8 bytes."""
    v, *bounds = values or [None]
    if isinstance(v, NilSlice) and all(_int(b) == 0 for b in bounds):
        return v
    if not isinstance(v, str | list) or len(bounds) > (2 if isinstance(v, str) else 3):
        raise template_error(f"can't slice a {kind(v)} with {len(bounds)} indexes")
    seq: bytes | list[Value] = _utf8(v) if isinstance(v, str) else v
    lo, hi, cap = [*map(_int, bounds), *(0, len(seq), len(seq))[len(bounds) :]]
    if not 0 <= lo <= hi <= cap <= len(seq):
        raise template_error(f"slice index out of range: {bounds}")
    return seq[lo:hi].decode(errors="replace") if isinstance(seq, bytes) else seq[lo:hi]


def _utf8(s: str) -> bytes:
    """Go's strings are bytes: their length and indexes count UTF-8 bytes."""
    return s.encode("utf-8", "surrogatepass")


_MISSING: Value = []  # a marker: no argument left
_VERBS = {"s": ("string",), "d": ("int",), "v": ("string", "int", "bool")}


def _printf(values: list[Value]) -> str:
    """Go's fmt.Sprintf for %s, %d, %v and %% of strings, integers and booleans, with Go's
    marks for a wrong, missing or extra argument (`%!d(string=x)`, `%!s(MISSING)`)."""
    fmt, *args = values or [None]
    if not isinstance(fmt, str) or any(not isinstance(a, str | int | None) for a in args):
        raise template_error(
            "printf of anything but strings, integers and booleans is not supported"
        )
    rest = iter(args)

    def verb(m: re.Match[str]) -> str:
        if m.group() == "%%" or m.group() == "%":
            return "%" if m.group() == "%%" else "%!(NOVERB)"
        if (c := m.group()[1]) not in _VERBS:
            raise template_error(f"printf verb {m.group()!r} is not supported")
        if (arg := next(rest, _MISSING)) is _MISSING:
            return f"%!{c}(MISSING)"
        if arg is None:  # <no value> is a nil interface to printf
            return "<nil>" if c == "v" else f"%!{c}(<nil>)"
        ok = kind(arg) in _VERBS[c]
        return _print(arg) if ok else f"%!{c}({kind(arg)}={_print(arg)})"

    text = re.sub(r"%.?", verb, fmt, flags=re.DOTALL)
    extra = ", ".join(f"{kind(a)}={_print(a)}" if a is not None else "<nil>" for a in rest)
    return text + (f"%!(EXTRA {extra})" if extra else "")
