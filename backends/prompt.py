"""Chat templates rendered exactly as llama-server renders them, so a cli-mode request is the
same prompt, token for token, as the same request in server mode.

A model's `chat_template` is one of
- None: the GGUF's own Jinja template (llama-server with no template flag, Jinja on by
  default), or llama.cpp's Jinja ChatML when the file has none;
- a name in `TEMPLATES`: llama.cpp's built-in template (`--no-jinja --chat-template NAME`),
  ported here from src/llama-chat.cpp;
- anything else: Jinja source (`--chat-template SOURCE`).

Jinja runs in jinja2's immutable sandbox, set up like llama.cpp's own engine (common/jinja,
which replaced minja in these builds) and fed the context common/chat.cpp builds. Tests
compare every path with the real llama-server's `POST /apply-template`.

Known gaps, where llama-server runs template-specific C++: a trailing assistant message of a
reasoning template (Qwen3, DeepSeek-R1, ...) gets an empty reasoning block (`<think></think>`)
there and not here, and the templates it renders with dedicated code (Gemma 4, ...) differ.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backends.gguf_meta import GgufMeta, read_meta
from core.errors import BadRequest

# llama.cpp's trim(): std::isspace, i.e. ASCII whitespace only.
_SPACE = " \t\n\v\f\r"


class Message(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def text(self) -> str: ...


def _gemma(messages: Sequence[Message]) -> str:
    out: list[str] = []
    system = ""
    for message in messages:
        if message.role == "system":
            # Gemma has no system turn: llama.cpp prepends it to the next user turn.
            system += message.text.strip(_SPACE)
            continue
        role = "model" if message.role == "assistant" else message.role
        out.append(f"<start_of_turn>{role}\n")
        if system and role != "model":
            out.append(system + "\n\n")
            system = ""
        out.append(message.text.strip(_SPACE) + "<end_of_turn>\n")
    return "".join(out)


def _chatml(messages: Sequence[Message]) -> str:
    return "".join(f"<|im_start|>{m.role}\n{m.text}<|im_end|>\n" for m in messages)


# Each built-in template, and how it opens the model's turn.
TEMPLATES = {
    "gemma": (_gemma, "<start_of_turn>model\n"),
    "chatml": (_chatml, "<|im_start|>assistant\n"),
}

# common/chat.cpp's CHATML_TEMPLATE_SRC: what llama-server renders (with Jinja) for a GGUF
# without a template. Not the `chatml` port: a trailing assistant message stays open here.
JINJA_CHATML = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\n' -}}\n"
    "{%- endif -%}"
)


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    model: Path | None = None,
    tools: Sequence[dict[str, Any]] = (),
) -> str:
    """The prompt for `messages` under the model's `template` (see the module docstring). A
    Jinja template sees the BOS/EOS tokens of the GGUF `model` (None: empty); a None template
    is read from it (once per file version: read_meta's cache). The model's turn is
    opened unless the last message is already the assistant's: llama-server then continues
    that message. `tools` (llama-server's shape, `{"type": "function", "function": {...}}`)
    and the messages' tool calls and results reach a Jinja template as llama-server passes
    them. Raises BadRequest where llama-server answers 400."""
    if len(messages) >= 2 and messages[-1].role == messages[-2].role == "assistant":
        raise BadRequest("Cannot have 2 or more assistant messages at the end of the list.")
    if template in TEMPLATES:
        render, generation_turn = TEMPLATES[template]
        prompt = render(messages)
        return prompt if messages and messages[-1].role == "assistant" else prompt + generation_turn
    meta = read_meta(model) if model is not None else None
    if template is None:
        if meta is None:
            raise ValueError("the GGUF's own chat template needs the model file")
        # llama-server with no template: the GGUF's, or its Jinja ChatML when there is none.
        template = meta.chat_template or JINJA_CHATML
    return _render_jinja(template, messages, _tokens(meta), tools)


def template_source(template: str | None, model: Path | None) -> str | None:
    """The Jinja source llama-server renders for `template` (None for a built-in one)."""
    if template in TEMPLATES:
        return None
    if template is None and model is not None:
        return read_meta(model).chat_template or JINJA_CHATML
    return template


def _tokens(meta: GgufMeta | None) -> _Tokens:
    """The model's BOS/EOS texts: llama-server passes them to every Jinja template, its own
    or one from the command line."""
    if meta is None:
        return _Tokens()
    return _Tokens(
        bos=meta.bos_token or "",
        eos=meta.eos_token or "",
        # Unsaid (None), llama.cpp goes by the tokenizer type; the files seen here say.
        add_bos=bool(meta.add_bos_token),
        add_eos=bool(meta.add_eos_token),
    )


class _Tokens(NamedTuple):
    """The vocabulary facts a Jinja render needs: the BOS/EOS texts the template sees, and
    whether the tokenizer adds them itself (llama-server then cuts them off the prompt)."""

    bos: str = ""
    eos: str = ""
    add_bos: bool = False
    add_eos: bool = False


def _render_jinja(
    source: str, messages: Sequence[Message], tokens: _Tokens, tools: Sequence[dict[str, Any]]
) -> str:
    """common/chat.cpp's Jinja route. A trailing assistant message is "prefilled": the
    messages before it rendered without a generation prompt, then the text the generation
    prompt adds, then that message's content as is, its turn left open."""
    template = _template(source)
    turns = [_turn(m, template.object_arguments) for m in messages]
    prefill: str | None = None
    if turns and turns[-1]["role"] == "assistant":
        prefill = turns.pop()["content"]
    _fix_roles(turns, source, template.supports_system_role)
    extra = {"tools": list(tools)} if tools else {}
    try:
        if prefill is None:
            return template.render(turns, tokens, generation_prompt=True, extra=extra)
        closed = template.render(turns, tokens, generation_prompt=False, extra=extra)
        opened = template.render(turns, tokens, generation_prompt=True, extra=extra)
        return closed + opened[_common_prefix(closed, opened) :] + prefill
    except (jinja2.TemplateError, TypeError, ValueError) as exc:
        raise BadRequest(f"the chat template failed: {exc}") from None


def _turn(message: Message, object_arguments: bool) -> dict[str, Any]:
    """A message as common_chat_msg::to_json_oaicompat writes it: a result's `tool_call_id`,
    an assistant's `tool_calls`, their arguments parsed into an object when the template
    reads them as one (chat.cpp's func_args_not_string)."""
    turn: dict[str, Any] = {"role": message.role, "content": message.text}
    if call_id := getattr(message, "tool_call_id", None):
        turn["tool_call_id"] = call_id
    if calls := getattr(message, "tool_calls", ()):
        turn["tool_calls"] = [_call(call, object_arguments) for call in calls]
    return turn


def _call(call: Any, object_arguments: bool) -> dict[str, Any]:
    arguments: object = call.arguments
    if object_arguments:
        try:
            arguments = json.loads(call.arguments)
        except ValueError as exc:
            message = f"Failed to parse tool call arguments as JSON: {exc}"
            raise BadRequest(message, param="messages") from None
    function = {"name": call.name, "arguments": arguments}
    return {"type": "function", "function": function} | ({"id": call.id} if call.id else {})


def _fix_roles(turns: list[dict[str, Any]], source: str, supports_system_role: bool) -> None:
    """chat.cpp's workarounds, in its order (after the prefill message is taken off)."""
    if "You have access to the following functions in JSONSchema format" in source:
        for turn in turns:  # StepFun: llama.cpp trims every message (its issue #24181)
            turn["content"] = turn["content"].strip(_SPACE)
    if "<|channel|>" not in source:  # all but GPT-OSS
        for turn in turns:
            if turn["role"] == "developer":
                turn["role"] = "system"
    if turns and turns[0]["role"] == "system" and not supports_system_role:
        system = turns.pop(0)
        if turns:  # merged into the next message; alone, it is dropped
            turns[0]["content"] = system["content"] + "\n" + turns[0]["content"]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class _Raised(jinja2.TemplateError):
    """A template's own raise_exception()."""


def _raise_exception(message: str) -> None:
    raise _Raised(f"Jinja Exception: {message}")


def _strftime_now(fmt: str) -> str:
    return time.strftime(fmt, time.localtime())


def _trim(value: str, chars: str | None = None) -> str:
    """llama.cpp's strip: ASCII whitespace by default (Python's would also take U+00A0 etc.)."""
    return str(value).strip(_SPACE if chars is None else chars)


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """llama.cpp's tojson: no HTML escaping and no key sorting, unlike jinja2's filter."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        # llama.cpp: none or undefined + a string is that string (Python: TypeError).
        if isinstance(right, str) and (left is None or isinstance(left, jinja2.Undefined)):
            return right
        if isinstance(left, str) and (right is None or isinstance(right, jinja2.Undefined)):
            return left
        return super().call_binop(context, operator, left, right)

    def call(
        __self,  # jinja2's names: a template's kwargs may be called "context" or "obj"
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        # "s.strip()" in a template strips ASCII whitespace in llama.cpp, as its trim filter.
        if isinstance(getattr(__obj, "__self__", None), str) and __obj.__name__ in _STRIPS:
            args = args or (_SPACE,)
        return super().call(__context, __obj, *args, **kwargs)


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask markers): llama.cpp
    renders the body as is."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's API

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


_STRIPS = frozenset({"strip", "lstrip", "rstrip"})


def _environment() -> _Sandbox:
    # llama.cpp's lexer (like HF transformers) trims the newline after a block tag and the
    # indentation before one; an attribute of an undefined value is undefined, not an error;
    # {{ none }} prints nothing.
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.ChainableUndefined,
        extensions=["jinja2.ext.loopcontrols", _Generation],
        finalize=lambda value: "" if value is None else value,
    )
    env.filters["trim"] = _trim
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, tojson=_tojson)
    return env


def _llama_lexer_quirk(source: str) -> str:
    """llama.cpp's lexer drops the text before a first block tag when only whitespace
    follows the template's first character ("x {% if %}" and "\n{% if %}" lose "x " and
    "\n"): its lstrip_blocks scan stops at position 1 and cuts from 0. Jinja2 keeps it."""
    match = _FIRST_TEXT.match(source)
    return source[match.end() :] if match and not source.startswith(("{{", "{%", "{#")) else source


_FIRST_TEXT = re.compile(r"(?s:.)[ \t\v\f\r]*(?=\{[%#-])")


_ENV = _environment()

_PROBE = "PROBE_MARKER_8b7f"


@functools.lru_cache(maxsize=32)
def _template(source: str) -> _Template:
    return _Template(source)


class _Template:
    """One Jinja chat template, compiled once, with what llama-server learns by probing it."""

    def __init__(self, source: str) -> None:
        try:
            self._compiled = _ENV.from_string(_llama_lexer_quirk(source))
        except jinja2.TemplateSyntaxError as exc:
            raise BadRequest(f"the chat template does not parse: {exc}") from None
        probe = [{"role": "user", "content": "test"}]
        # llama-server turns enable_thinking on when its analyser (chat-diff-analyzer.cpp)
        # finds that the template reasons: approximated by its two main signs.
        reasoned = [*probe, {"role": "assistant", "content": "A", "reasoning_content": _PROBE}]
        self.thinking = _PROBE in self._probe(reasoned, thinking=True) or _adds_markers(
            self._probe(probe, thinking=False), self._probe(probe, thinking=True)
        )
        # common/jinja/caps.cpp: a template that ignores a system message does not support one.
        system = [{"role": "system", "content": _PROBE}, *probe]
        self.supports_system_role = _PROBE in self._probe(system, thinking=self.thinking)
        # caps.cpp: arguments are passed as an object when the template reads into one
        # (tojson reads all of it); here, when a value inside them reaches the prompt.
        call = {"name": "tool1", "arguments": {"arg": _PROBE}}
        called: list[dict[str, Any]] = [
            *probe,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": call}],
            },
        ]
        self.object_arguments = _PROBE in self._probe(called, thinking=self.thinking)

    def _probe(self, turns: list[dict[str, Any]], *, thinking: bool) -> str:
        try:
            return self._compiled.render(_context(turns, _Tokens(), True, thinking))
        except Exception:  # a probe that fails means "unsupported", as in llama.cpp
            return ""

    def render(
        self,
        turns: list[dict[str, Any]],
        tokens: _Tokens,
        *,
        generation_prompt: bool,
        extra: dict[str, Any] | None = None,
    ) -> str:
        context = _context(turns, tokens, generation_prompt, self.thinking) | (extra or {})
        prompt = self._compiled.render(context)
        # The tokenizer adds these itself: common_chat_template_direct_apply cuts them off.
        if tokens.add_bos and prompt.startswith(tokens.bos):
            prompt = prompt[len(tokens.bos) :]
        if tokens.add_eos and prompt.endswith(tokens.eos):
            prompt = prompt[: len(prompt) - len(tokens.eos)]
        return prompt


def _adds_markers(off: str, on: str) -> bool:
    """The first test of chat-diff-analyzer.cpp's compare_thinking_enabled, on characters
    rather than its marker segments: thinking is supported when switching enable_thinking
    only appends (or only removes) something at the end of the prompt, e.g. Qwen3's
    "<think>\n\n</think>\n\n" when it is off."""
    start = _common_prefix(off, on)
    end = _common_prefix(off[start:][::-1], on[start:][::-1])
    removed, added = off[start : len(off) - end], on[start : len(on) - end]
    if not removed.strip(_SPACE) and added.strip(_SPACE):
        return on.endswith(added.strip(_SPACE))
    if not added.strip(_SPACE) and removed.strip(_SPACE):
        return off.endswith(removed.strip(_SPACE))
    if not removed.strip(_SPACE) or not added.strip(_SPACE):
        return False
    # Both changed (SmolLM3 also rewrites its system message): does one prompt's tail end
    # the other, followed by exactly two markers such as "<think>\n\n</think>"?
    for base, extended in ((on, off), (off, on)):
        anchor = base[-64:]
        at = extended.rfind(anchor)
        if at >= 0 and _TWO_MARKERS.fullmatch(extended[at + len(anchor) :].strip(_SPACE)):
            return True
    return False


_TWO_MARKERS = re.compile(r"(<[^<>]*>|\[[^\[\]]*\])\s*(<[^<>]*>|\[[^\[\]]*\])")


def _context(
    turns: list[dict[str, Any]], tokens: _Tokens, generation_prompt: bool, thinking: bool
) -> dict[str, Any]:
    """What common_chat_template_direct_apply passes: no `tools` without tools, and
    `add_generation_prompt` only when true (undefined otherwise)."""
    now = time.localtime()
    context: dict[str, Any] = {
        "messages": turns,
        "bos_token": tokens.bos,
        "eos_token": tokens.eos,
        "enable_thinking": thinking,
        "datetime": time.strftime("%b %d %Y", now),
        "date_string": time.strftime("%d %b %Y", now),
        # llama-server's default kwarg preserve_reasoning=true, and the aliases it sets.
        "preserve_reasoning": True,
        "preserve_thinking": True,
        "clear_thinking": False,
        "truncate_history_thinking": False,
        "drop_thinking": False,
    }
    if generation_prompt:
        context["add_generation_prompt"] = True
    return context
