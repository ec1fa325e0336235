"""Ollama's dialect as tables: each wire field onto `core.chat`, each bad value's 400, and
the answers' shapes (gateway/dialects/ollama.py, ollama_answers.py)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from core import chat
from core.errors import BadRequest
from gateway.dialects.ollama import ChatBody, EmbedBody, EmbeddingsBody, GenerateBody, options_of
from gateway.dialects.ollama_answers import Writer, durations, lines, replayed

PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def chat_body(**fields: Any) -> chat.ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields
    return msgspec.json.decode(json.dumps(body), type=ChatBody).decode()


def generate_body(**fields: Any) -> chat.ChatRequest:
    body = {"model": "m", "prompt": "hi"} | fields
    return msgspec.json.decode(json.dumps(body), type=GenerateBody).decode()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"temperature": 0.5}, {"sampling": chat.Sampling(temp=0.5)}),
        ({"temperature": 1}, {"sampling": chat.Sampling(temp=1.0)}),
        ({"top_p": 0.8, "top_k": 7}, {"sampling": chat.Sampling(top_p=0.8, top_k=7)}),
        ({"top_k": 7.9}, {"sampling": chat.Sampling(top_k=7)}),  # truncated, as Ollama
        ({"presence_penalty": 0.3}, {"sampling": chat.Sampling(presence_penalty=0.3)}),
        ({"frequency_penalty": -0.5}, {"sampling": chat.Sampling(frequency_penalty=-0.5)}),
        ({"mirostat": 2}, {"sampling": chat.Sampling(mirostat=2)}),
        ({"seed": 42}, {"seed": 42}),
        ({"seed": -1}, {"seed": None}),  # Ollama's "random"
        ({"stop": ["\n", "User:", ""]}, {"stop": ("\n", "User:")}),
        ({"num_predict": 12}, {"max_tokens": 12}),
        ({"num_predict": -1}, {"max_tokens": None}),
        ({"num_predict": -2}, {"max_tokens": None}),
        ({"num_ctx": 4096, "num_gpu": 0, "min_p": 0.1, "use_mmap": True}, {}),  # ignored
        ({"not_an_option": "x", "temperature": None}, {}),  # unknown and null: ignored
    ],
)
def test_options_onto_the_request(options: dict[str, Any], expected: dict[str, Any]) -> None:
    request = chat_body(options=options)
    for field, value in expected.items():
        assert getattr(request, field) == value
    if not expected:
        assert request.sampling == chat.Sampling()
        assert (request.seed, request.max_tokens, request.stop) == (None, None, ())


@pytest.mark.parametrize(
    ("options", "message", "param"),
    [
        ({"temperature": "hot"}, 'option "temperature" must be of type float32', "temperature"),
        ({"top_k": "7"}, 'option "top_k" must be of type integer', "top_k"),
        ({"num_ctx": True}, 'option "num_ctx" must be of type integer', "num_ctx"),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean', "use_mmap"),
        ({"stop": "x"}, 'option "stop" must be of type array', "stop"),
        ({"stop": [1]}, 'option "stop" must be of an array of strings', "stop"),
        ({"temperature": 500}, "`$.options.temperature`", "temperature"),
        ({"top_p": 0}, "`$.options.top_p`", "top_p"),
        ({"mirostat": 3}, "`$.options.mirostat`", "mirostat"),
    ],
)
def test_option_of_a_wrong_type_or_range_is_a_400(
    options: dict[str, Any], message: str, param: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        options_of(options)
    assert message in caught.value.message
    assert caught.value.param == f"options.{param}"


@pytest.mark.parametrize(
    ("fmt", "schema"),
    [
        (None, None),
        ("", None),
        ("json", {"type": "object"}),
        ({"type": "object", "properties": {"a": {"type": "integer"}}}, None),
    ],
)
def test_format(fmt: Any, schema: Any) -> None:
    expected = fmt if isinstance(fmt, dict) else schema
    assert chat_body(format=fmt).json_schema == expected


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        # /api/generate's
        ({"prompt": "x", "raw": True, "system": "x"}, "raw", "raw mode does not support template"),
        ({"prompt": "x", "raw": True, "context": [1]}, "raw", "raw mode does not support template"),
        ({"prompt": "x", "context": [1, 2, 3]}, "context", "does not return or take one"),
        ({"prompt": "x", "raw": True, "images": [PIXEL]}, "images", "not with raw"),
        ({"prompt": "x", "suffix": "y", "images": [PIXEL]}, "images", "not with suffix"),
        ({"prompt": "x", "template": "{{ .P", "images": [PIXEL]}, "images", "not with template"),
        ({"prompt": "x", "template": "{{ .Prompt"}, "template", "template:"),
        ({"prompt": "x", "template": '{{ template "t" }}'}, "template", "template:"),
        ({"prompt": "x", "images": ["not base64!"]}, "images[0]", "not base64"),
        # /api/chat's
        ({"format": "yaml"}, "format", 'format must be "json" or a JSON schema'),
        ({"format": {"type": "array", "minItems": 100000}}, "format", "over the limit"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "unknown role"),
        (
            {"messages": [{"role": "user", "content": "x", "images": ["%%%"]}]},
            "messages[0].images[0]",
            "not base64",
        ),
        ({"logprobs": True}, "logprobs", "not supported"),
        (
            {"messages": [{"role": "tool", "content": "4", "tool_call_id": "nope"}]},
            "messages[0].tool_call_id",
            "answers no earlier tool call",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}] * 2},
            "tools[1]",
            "used twice",
        ),
    ],
)
def test_bad_fields_are_400s_naming_them(fields: dict[str, Any], param: str, message: str) -> None:
    decode = generate_body if "prompt" in fields else chat_body
    with pytest.raises(BadRequest) as caught:
        decode(**fields)
    assert caught.value.param == param
    assert message in caught.value.message


def test_chat_messages_images_and_roles() -> None:
    request = chat_body(
        messages=[
            {"role": "System", "content": "be brief"},
            {"role": "user", "content": "what is it?", "images": [PIXEL]},
        ],
        stream=False,
    )
    system, user = request.messages
    assert system == chat.Message.of("system", "be brief")
    assert [type(p) for p in user.content] == [chat.ImagePart, chat.TextPart]
    assert user.images[0].data.startswith(b"\x89PNG")
    assert request.has_images and not request.stream


def test_stream_defaults_to_true() -> None:
    assert chat_body().stream and generate_body().stream
    assert not chat_body(stream=False).stream


def test_tool_calls_with_object_arguments_and_tool_messages_by_name() -> None:
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ("add", "mul")
    ]
    calls = [
        {"function": {"name": "add", "arguments": {"a": 1, "b": 2}}},
        {"function": {"name": "mul", "arguments": {"a": 3, "b": 4}}},
    ]
    request = chat_body(
        tools=tools,
        messages=[
            {"role": "user", "content": "1+2 and 3*4"},
            {"role": "assistant", "content": None, "tool_calls": calls},  # null, as Go reads it
            {"role": "tool", "content": "12", "tool_name": "mul"},
            {"role": "tool", "content": "3"},  # no name, no id: the oldest still open
        ],
    )
    assert [t.name for t in request.tools] == ["add", "mul"]
    assistant, mul, add = request.messages[1:]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in assistant.tool_calls] == [
        ("call_1_0", "add", {"a": 1, "b": 2}),
        ("call_1_1", "mul", {"a": 3, "b": 4}),
    ]
    assert (mul.tool_call_id, add.tool_call_id) == ("call_1_1", "call_1_0")
    assert request.tool_choice == "auto"


def test_generate_prompt_system_and_images() -> None:
    request = generate_body(system="be brief", images=[PIXEL], options={"num_predict": 3})
    system, user = request.messages
    assert system == chat.Message.of("system", "be brief")
    assert [type(p) for p in user.content] == [chat.ImagePart, chat.TextPart]
    assert user.text == "hi" and request.max_tokens == 3


def test_generate_raw_and_suffix_are_completions_of_the_prompt_as_it_is() -> None:
    raw = generate_body(prompt="<|im_start|>user\nhi", raw=True, stream=False)
    assert (raw.raw, raw.suffix, raw.prompt) == (True, None, "<|im_start|>user\nhi")
    assert raw.messages == (chat.Message.of("user", "<|im_start|>user\nhi"),)
    fill = generate_body(prompt="def add(a, b):\n", suffix="\n    return c\n", system="ignored")
    assert (fill.raw, fill.suffix, fill.prompt) == (True, "\n    return c\n", "def add(a, b):\n")
    assert not generate_body().raw and generate_body().suffix is None


def test_generate_template_builds_the_raw_prompt() -> None:
    """Ollama's `template` in place of the model's: the rendered text is the prompt."""
    chatml = (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
    )
    request = generate_body(template=chatml, system="Answer in one word.")
    assert request.raw and request.suffix is None
    assert request.prompt == (
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    # A fill-in-the-middle template takes the suffix itself: no /infill then.
    fim = generate_body(template="<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>", suffix="end")
    assert (fim.raw, fim.suffix, fim.prompt) == (True, None, "<PRE> hi <SUF>end <MID>")


def test_think_is_accepted() -> None:
    for think in (True, False, "high"):
        assert chat_body(think=think).messages


@pytest.mark.parametrize(
    ("body", "inputs"),
    [
        ({"model": "m", "input": "a"}, ["a"]),
        ({"model": "m", "input": ["a", "b"], "truncate": True}, ["a", "b"]),
        ({"model": "m", "input": ""}, []),
        ({"model": "m", "input": []}, []),
        ({"model": "m"}, []),
    ],
)
def test_embed_inputs(body: dict[str, Any], inputs: list[str]) -> None:
    assert msgspec.convert(body, EmbedBody).inputs() == inputs


def test_embed_refusals() -> None:
    with pytest.raises(BadRequest, match="dimensions") as caught:
        msgspec.convert({"model": "m", "input": "a", "dimensions": 8}, EmbedBody).inputs()
    assert caught.value.param == "dimensions"
    assert msgspec.convert({"model": "m", "prompt": "a"}, EmbeddingsBody).inputs() == ["a"]


# Answers.

USAGE = chat.Usage(
    prompt_tokens=9,
    completion_tokens=4,
    tokens_per_second=80.0,
    timings={"prompt_ms": 12.5, "predicted_ms": 50.0, "predicted_per_second": 80.0},
)


def test_durations_from_llama_server_timings() -> None:
    started = time.monotonic_ns() - 1_000_000_000
    got = durations(USAGE, started)
    assert got["prompt_eval_count"] == 9 and got["eval_count"] == 4
    assert got["prompt_eval_duration"] == 12_500_000
    assert got["eval_duration"] == 50_000_000
    assert got["total_duration"] >= 1_000_000_000
    assert got["load_duration"] == got["total_duration"] - 62_500_000


def test_durations_in_cli_mode_from_the_speed() -> None:
    usage = chat.Usage(prompt_tokens=9, completion_tokens=4, tokens_per_second=80.0)
    got = durations(usage, time.monotonic_ns())
    assert got["eval_duration"] == 50_000_000 and got["prompt_eval_duration"] == 0


async def _events(*events: chat.Event) -> AsyncIterator[chat.Event]:
    for event in events:
        yield event


async def _lines(writer: Writer, *events: chat.Event) -> list[dict[str, Any]]:
    return [json.loads(line) async for line in lines(_events(*events), writer)]


async def test_chat_stream_lines() -> None:
    writer = Writer("m:latest", time.monotonic_ns(), generate=False)
    got = await _lines(
        writer,
        chat.TextDelta(text="Hel"),
        chat.TextDelta(text="lo"),
        chat.Finish(reason="length"),
        USAGE,
    )
    assert [g["message"] for g in got] == [
        {"role": "assistant", "content": c} for c in ("Hel", "lo", "")
    ]
    assert [g["done"] for g in got] == [False, False, True]
    assert got[-1]["done_reason"] == "length" and got[-1]["eval_count"] == 4
    assert all(g["model"] == "m:latest" and g["created_at"].endswith("Z") for g in got)


async def test_generate_stream_lines() -> None:
    writer = Writer("m", time.monotonic_ns(), generate=True)
    got = await _lines(writer, chat.TextDelta(text="Paris"), chat.Finish(reason="stop"), USAGE)
    assert [(g["response"], g["done"]) for g in got] == [("Paris", False), ("", True)]
    assert got[-1]["done_reason"] == "stop" and "message" not in got[-1]


async def test_tool_calls_stream_as_one_line_with_object_arguments() -> None:
    writer = Writer("m", time.monotonic_ns(), generate=False)
    got = await _lines(
        writer,
        chat.ToolCallDelta(index=0, id="call_1", name="add"),
        chat.ToolCallDelta(index=0, arguments='{"a": 1, '),
        chat.ToolCallDelta(index=0, arguments='"b": 2}'),
        chat.Finish(reason="tool_calls"),
        USAGE,
    )
    call = {"id": "call_1", "function": {"index": 0, "name": "add", "arguments": {"a": 1, "b": 2}}}
    assert got[0]["message"] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert got[1]["done"] and got[1]["done_reason"] == "stop"
    assert "tool_calls" not in got[1]["message"]


async def test_a_failure_mid_stream_ends_with_an_error_line() -> None:
    writer = Writer("m", time.monotonic_ns(), generate=False)
    got = await _lines(
        writer,
        chat.TextDelta(text="Hel"),
        chat.Failure(type="upstream_error", message="llama-server crashed"),
        chat.TextDelta(text="never"),
    )
    assert got[-1] == {"error": "llama-server crashed"} and len(got) == 2


async def test_a_whole_answer_replayed_and_one_object() -> None:
    writer = Writer("m", time.monotonic_ns(), generate=False)
    answer = chat.Answer(text="red", usage=USAGE)
    got = [json.loads(line) async for line in replayed(answer, writer)]
    assert [(g["message"]["content"], g["done"]) for g in got] == [("red", False), ("", True)]
    whole = writer.whole(answer)
    assert whole["message"]["content"] == "red" and whole["done"] is True
    assert whole["prompt_eval_count"] == 9
