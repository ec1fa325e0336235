"""Native tool calls of Hermes 2 Pro / Qwen 2.5 style templates, as llama-server makes them.

Such a template describes the tools itself (in its system turn) and writes each call as
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. llama-server (0.3.36)
recognises the format by analysing the template (common/chat-diff-analyzer.cpp finds
JSON_NATIVE calls between `<tool_call>\\n` and `</tool_call>`), renders the tools with it,
constrains the answer with a grammar built from the tools (chat-auto-parser-generator.cpp,
json-schema-to-grammar.cpp) and parses the calls back. Server mode lets it; cli mode does
the same here: the same render (backends.prompt), the same grammar, the same parse.

`tool_choice: required` in llama-server lets text come before the first call, and the
135M default model never starts one by itself: the gateway makes a required (or named)
call start at once, in both modes, by opening the answer with `<tool_call>\\n` (an
assistant prefill llama-server continues). The grammar below is what llama-server's
required grammar leaves after that prefill.

Schemas are turned into grammar rules exactly as llama.cpp's converter names and writes
them, for the keywords tools use; a schema with others (`pattern`, `format`, `$ref`,
bounds on integers, ...) raises `Unsupported`: that request uses the gateway's own
scheme (backends.tools) in both modes instead.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any

from backends.prompt import render_chat
from core.chat import Message, Tool, ToolCall

OPEN = "<tool_call>\n"  # per_call_start, as llama-server's analyser finds it
CLOSE = "</tool_call>"

# llama.cpp's SPACE_RULE and the primitive rules the supported schemas use.
SPACE = '| " " | "\\n"{1,2} [ \\t]{0,20}'
_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "boolean": ('("true" | "false")', ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "number": (
        '("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?',
        ("integral-part", "decimal-part"),
    ),
    "integer": ('("-"? integral-part)', ("integral-part",)),
    "value": (
        "object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
    "object": (
        '"{" space ( string ":" space value ("," space string ":" space value)* )? space "}"',
        ("string", "value"),
    ),
    "array": ('"[" space ( value ("," space value)* )? space "]"', ("value",)),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": ('"\\"" char* "\\""', ("char",)),
    "null": ('"null"', ()),
}
_RESERVED = frozenset({"root", *_PRIMITIVES, "date", "time", "date-time"}) | {
    "date-string",
    "time-string",
    "date-time-string",
    "uuid",
}
_INVALID_RULE_CHARS = re.compile(r"[^a-zA-Z0-9-]+")
_LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}
_UNBOUNDED = 2**31 - 1


class Unsupported(ValueError):
    """A schema this port does not turn into llama.cpp's grammar."""


def literal(text: str) -> str:
    """llama.cpp's format_literal."""
    return '"' + re.sub(r'[\r\n"\\]', lambda m: _LITERAL_ESCAPES[m.group()], text) + '"'


def _dump(value: object) -> str:
    """nlohmann's json::dump(): compact, UTF-8 as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _repetition(item: str, low: int, high: int, separator: str = "") -> str:
    """llama.cpp's build_repetition (`high` _UNBOUNDED: no maximum)."""
    bounded = high != _UNBOUNDED
    if high == 0:
        return ""
    if low == 0 and high == 1:
        return item + "?"
    if not separator:
        if low == 1 and not bounded:
            return item + "+"
        if low == 0 and not bounded:
            return item + "*"
        return item + "{" + str(low) + "," + (str(high) if bounded else "") + "}"
    rest = _repetition(
        f"({separator} {item})", 0 if low == 0 else low - 1, high - 1 if bounded else high
    )
    result = item + " " + rest
    return f"({result})?" if low == 0 else result


class Rules:
    """llama.cpp's common_chat_schema_converter, for the keywords tools use: rules by name,
    written out sorted by name as its std::map does."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {"space": SPACE}

    def add(self, name: str, rule: str) -> str:
        name = _INVALID_RULE_CHARS.sub("-", name)
        if self.rules.get(name, rule) == rule:
            self.rules[name] = rule
            return name
        i = 0
        while f"{name}{i}" in self.rules and self.rules[f"{name}{i}"] != rule:
            i += 1
        self.rules[f"{name}{i}"] = rule
        return f"{name}{i}"

    def primitive(self, name: str, kind: str) -> str:
        rule, deps = _PRIMITIVES[kind]
        added = self.add(name, rule)
        for dep in deps:
            if dep not in self.rules:
                self.primitive(dep, dep)
        return added

    def text(self) -> str:
        return "".join(f"{name} ::= {self.rules[name]}\n" for name in sorted(self.rules))

    def schema(self, schema: object, name: str) -> str:
        """The rule for `schema` (visit()): its name."""
        rule_name = name + "-" if name in _RESERVED else name or "root"
        if not isinstance(schema, dict):
            raise Unsupported("a schema must be an object")
        if any(key in schema for key in ("$ref", "allOf", "pattern", "format", "prefixItems")):
            raise Unsupported("$ref, allOf, pattern, format and prefixItems")
        for key in ("oneOf", "anyOf"):
            if key in schema:
                return self._union(schema[key], name, rule_name)
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise Unsupported("an empty type list")
            return self._union([schema | {"type": k} for k in kind], name, rule_name)
        if "const" in schema:
            return self.add(rule_name, literal(_dump(schema["const"])))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise Unsupported("enum must be a non-empty array")
            return self.add(rule_name, "(" + " | ".join(literal(_dump(v)) for v in values) + ")")
        return self._typed(schema, kind, name, rule_name)

    def _union(self, alternatives: object, name: str, rule_name: str) -> str:
        if not isinstance(alternatives, list):
            raise Unsupported("anyOf/oneOf must be an array")
        prefix = name + ("-" if name else "alternative-")
        rules = [self.schema(alt, f"{prefix}{i}") for i, alt in enumerate(alternatives)]
        return self.add(rule_name, " | ".join(rules))

    def _typed(self, schema: dict[str, Any], kind: object, name: str, rule_name: str) -> str:
        has_properties = (
            "properties" in schema or schema.get("additionalProperties", True) is not True
        )
        if kind is None:
            if has_properties:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            elif "minLength" in schema or "maxLength" in schema:
                kind = "string"
            else:
                return self.add(rule_name, self.primitive("value", "value"))
        match kind:
            case "object":
                return self._object(schema, name, rule_name)
            case "array":
                return self._array(schema, name, rule_name)
            case "string":
                return self._string(schema, rule_name)
            case "integer":
                if "minimum" in schema or "maximum" in schema or "exclusiveMinimum" in schema:
                    raise Unsupported("integer bounds")
                if "exclusiveMaximum" in schema:
                    raise Unsupported("integer bounds")
                return self.primitive("root" if rule_name == "root" else "integer", "integer")
            case "number" | "boolean" | "null":
                return self.primitive("root" if rule_name == "root" else kind, kind)
        raise Unsupported(f"type {kind!r}")

    def _string(self, schema: dict[str, Any], rule_name: str) -> str:
        low, high = _count(schema, "minLength", 0), _count(schema, "maxLength", -1)
        if low > 0 or high >= 0:
            char = self.primitive("char", "char")
            repeated = _repetition(char, low, _UNBOUNDED if high < 0 else high)
            return self.add(rule_name, '"\\"" ' + repeated + ' "\\""')
        return self.primitive("root" if rule_name == "root" else "string", "string")

    def _array(self, schema: dict[str, Any], name: str, rule_name: str) -> str:
        items = schema.get("items", {})
        if isinstance(items, list):
            raise Unsupported("tuple items")
        low, high = _count(schema, "minItems", 0), _count(schema, "maxItems", -1)
        if not items and low == 0 and high < 0:
            return self.primitive("root" if rule_name == "root" else "array", "array")
        item = self.schema(items, (name + "-" if name else "") + "item")
        repeated = _repetition(item, low, _UNBOUNDED if high < 0 else high, '"," space')
        return self.add(rule_name, '"[" space ' + repeated + ' space "]"')

    def _object(self, schema: dict[str, Any], name: str, rule_name: str) -> str:
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", "properties" not in schema)
        if not isinstance(properties, dict):
            raise Unsupported("properties must be an object")
        if extra is True and not properties:
            return self.add(rule_name, self.primitive("object", "object"))
        if extra not in (False, None):
            raise Unsupported("additionalProperties beside properties")
        required = {r for r in schema.get("required", []) if isinstance(r, str)}
        prefix = name + "-" if name else ""
        kv: dict[str, str] = {}
        for prop, sub in properties.items():
            rule = self.schema(sub, prefix + prop)
            kv[prop] = self.add(
                f"{prefix}{prop}-kv", literal(_dump(prop)) + ' space ":" space ' + rule
            )
        needed = [p for p in properties if p in required]
        optional = [p for p in properties if p not in required]
        if not needed and not optional:
            return self.add(rule_name, '"{" space "}"')
        rule = '"{" space ' + ' "," space '.join(kv[p] for p in needed)
        if optional:
            rule += " (" + (' "," space ( ' if needed else "")
            rule += " | ".join(
                self._rest(optional[i:], kv, prefix, first_optional=False)
                for i in range(len(optional))
            )
            rule += (" )" if needed else "") + " )?"
        return self.add(rule_name, rule + ' space "}"')

    def _rest(
        self, keys: list[str], kv: dict[str, str], prefix: str, *, first_optional: bool
    ) -> str:
        """get_recursive_refs: the optional properties from keys[0] on, in order."""
        if not keys:
            return ""
        first = kv[keys[0]]
        out = f'( "," space {first} )?' if first_optional else first
        if len(keys) > 1:
            rest = self._rest(keys[1:], kv, prefix, first_optional=True)
            out += " " + self.add(f"{prefix}{keys[0]}-rest", rest)
        return out


def _count(schema: dict[str, Any], key: str, default: int) -> int:
    value = schema.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise Unsupported(f"{key} must be a count")
    return value


def parameters_of(tool: Tool) -> dict[str, Any]:
    """common_chat_tool_parameters: none (or {}) is an object without properties."""
    return tool.parameters or {"type": "object", "properties": {}}


def _call_rule(tool: Tool, rules: Rules) -> str:
    """The peg builder's rule for one call of `tool` (build_json_tools_flat_keys)."""
    schema = rules.schema(parameters_of(tool), f"tool-{tool.name}-schema")
    body = (
        '"{" space "\\"name\\"" space ":" space ("\\"" '
        + literal(tool.name)
        + ' "\\"") space "," space "\\"arguments\\"" space ":" space '
        + schema
        + ' space "}"'
    )
    return rules.add(f"tool-{tool.name}", body)


def grammar(tools: Sequence[Tool], parallel: bool) -> str:
    """GBNF for the answer after the `<tool_call>\\n` prefill: what llama-server's grammar
    for `tool_choice: required` leaves once the prefill went through it (its root is
    `generation-prompt space until? tool-calls`, tool-calls ::= (tool-call space)+)."""
    rules = Rules()
    names = [_call_rule(tool, rules) for tool in tools]
    choice = "(" + " | ".join(names) + ")"
    calls = choice + (f' (space "," space {choice})*' if parallel else "")
    rules.add("tool-call", literal(OPEN) + " space " + calls + " space " + literal(CLOSE))
    rules.add("root", "space " + calls + " space " + literal(CLOSE) + " space (tool-call space)*")
    return rules.text()


def supported(tools: Sequence[Tool]) -> bool:
    try:
        grammar(tools, parallel=False)
    except Unsupported:
        return False
    return True


def tools_json(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The tools as llama-server passes them to a template (common_chat_tools_to_json_oaicompat)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
            },
        }
        for t in tools
    ]


@functools.lru_cache(maxsize=32)
def is_hermes(source: str | None) -> bool:
    """Whether llama-server handles this Jinja template's tool calls as Hermes-style JSON:
    it writes `<tool_call>` (and none of the XML-argument or MiniMax formats chat.cpp
    routes to dedicated code) and shows the tools it is given."""
    if source is None or "<tool_call>" not in source:
        return False
    if any(mark in source for mark in ("<function=", "<invoke name=", "<arg_key>", "]<]minimax")):
        return False
    probe = Tool(name="probe_tool_5d1e", parameters={"type": "object", "properties": {}})
    try:
        shown = render_chat(source, [Message.of("user", "hi")], tools=tools_json([probe]))
    except Exception:  # a template that fails on tools has no native support
        return False
    return probe.name in shown


_DECODER = json.JSONDecoder()


def parse(text: str) -> tuple[str, list[ToolCall]]:
    """llama-server's parse of a Hermes-style answer: the text before the first
    `<tool_call>`, and every complete call (`{"name": ..., "arguments": {...}}` between the
    markers, several separated by commas); an unfinished last call is dropped. Arguments as
    the model wrote them; ids left empty."""
    start = text.find("<tool_call>")
    if start < 0:
        return text, []
    content, calls, at = text[:start], [], start
    while text.startswith("<tool_call>", at):
        found, at = _block(text, at + len("<tool_call>"))
        if found is None:
            break
        calls.extend(found)
        at = _skip_space(text, at)
    return content, calls


def _block(text: str, at: int) -> tuple[list[ToolCall] | None, int]:
    calls: list[ToolCall] = []
    while True:
        try:
            value, end = _DECODER.raw_decode(text, _skip_space(text, at))
        except ValueError:
            return None, at
        name, arguments = (
            (value.get("name"), value.get("arguments")) if isinstance(value, dict) else (None, None)
        )
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return None, at
        calls.append(
            ToolCall(id="", name=name, arguments=json.dumps(arguments, ensure_ascii=False))
        )
        at = _skip_space(text, end)
        if text.startswith(",", at):
            at += 1
            continue
        if text.startswith(CLOSE, at):
            return calls, at + len(CLOSE)
        return None, at


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at
