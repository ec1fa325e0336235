"""The requests of the golden test (test_golden.py): the cases every mode sends, the faults
each mode's fake llama plays, and the few requests for the real models."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

JSON = "application/json"
# An 8x8 red PNG, as bytes that no Pillow version can change.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8ISfHgA0wYRUdtBIA0MoBFD5jqJkAAAAA"
    "SUVORK5CYII="
)
PNG = base64.b64decode(PNG_B64)
DATA_URL = "data:image/png;base64," + PNG_B64
IMAGE = {"type": "image_url", "image_url": {"url": DATA_URL}}
HI = [{"role": "user", "content": "Hi"}]
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
STREAM_USAGE = {"stream": True, "stream_options": {"include_usage": True}}
# llama-tokenize's stand-in (cli mode counts a text cut by a stop string with it): one id
# per word of its --file.
TOKENIZE = """import sys
text = open(sys.argv[sys.argv.index("--file") + 1]).read()
print(list(range(len(text.split()))))
"""


TOOL_F = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@dataclass(frozen=True)
class Case:
    """One request: a JSON `body`, or `raw` bytes labelled `content_type`, or a multipart
    `form` with PNG as its file `image`."""

    path: str
    body: object = None
    raw: bytes | None = None
    content_type: str = "application/json"
    form: dict[str, str] | None = None
    method: str = "POST"

    def shown(self) -> dict[str, Any]:
        """The request as the golden file shows it."""
        shown: dict[str, Any] = {"method": self.method, "path": self.path}
        if self.form is not None:
            shown["form"] = {"image": "<the 8x8 PNG>", **self.form}
        elif self.raw is not None:
            shown |= {"content_type": self.content_type, "raw": self.raw.decode()}
        elif self.body is not None:
            shown["body"] = self.body
        return shown

    def sent(self) -> dict[str, Any]:
        """aiohttp's arguments for it."""
        if self.form is not None:
            form = aiohttp.FormData()
            form.add_field("image", PNG, filename="red.png", content_type="image/png")
            for name, value in self.form.items():
                form.add_field(name, value)
            return {"data": form}
        if self.raw is not None:
            return {"data": self.raw, "headers": {"Content-Type": self.content_type}}
        if self.body is not None:
            return {"data": json.dumps(self.body).encode(), "headers": {"Content-Type": JSON}}
        return {}


CHAT, API_CHAT = "/v1/chat/completions", "/api/chat"
EMBED, API_EMBED = "/v1/embeddings", "/api/generate-embeddings"
UNKNOWN = "gpt-4"  # no such model or alias

CASES: dict[str, Case] = {
    # /api
    "api_chat": Case(API_CHAT, {"messages": HI, "max_tokens": 16}),
    "api_chat_conversation_overrides": Case(
        API_CHAT,
        {
            "messages": CONVERSATION,
            "temp": 0.1,
            "top_p": 0.5,
            "top_k": 5,
            "presence_penalty": 0.5,
            "mirostat": 2,
        },
    ),
    "api_chat_length": Case(API_CHAT, {"messages": HI, "max_tokens": 3}),
    "api_chat_nul": Case(API_CHAT, {"messages": [{"role": "user", "content": "a\u0000b"}]}),
    "api_chat_stream": Case(API_CHAT, {"messages": HI, "stream": True}),
    "api_chat_stream_length": Case(API_CHAT, {"messages": HI, "max_tokens": 3, "stream": True}),
    "api_embeddings": Case(API_EMBED, {"input": ["one", "two"]}),
    "api_embeddings_string": Case(API_EMBED, {"input": "one"}),
    "api_tag_json": Case("/api/tag", {"image": PNG_B64}),
    "api_tag_multipart": Case("/api/tag", form={"max_tags": "1", "temp": "0.1"}),
    "api_describe_json": Case("/api/describe", {"image": DATA_URL, "prompt": "What colour?"}),
    "api_describe_multipart": Case("/api/describe", form={}),
    # /v1
    "v1_chat": Case(CHAT, {"messages": HI}),
    "v1_chat_developer_text_parts": Case(
        CHAT,
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
                },
            ]
        },
    ),
    "v1_chat_every_sampling_field": Case(
        CHAT,
        {
            "messages": HI,
            "model": "stub",
            "temperature": 0.2,
            "top_p": 0.8,
            "top_k": 20,
            "presence_penalty": -0.3,
            "frequency_penalty": 0.7,
            "mirostat": 1,
            "seed": 42,
            "max_tokens": 16,
            "stop": ["END", "\n\n"],
            "n": 1,
            "tools": [],
            "logprobs": False,
        },
    ),
    "v1_chat_max_completion_tokens": Case(CHAT, {"messages": HI, "max_completion_tokens": 3}),
    "v1_chat_stop_hit": Case(CHAT, {"messages": HI, "stop": "answer"}),
    "v1_chat_json_schema": Case(
        CHAT,
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": SCHEMA},
            },
        },
    ),
    "v1_chat_json_object": Case(CHAT, {"messages": HI, "response_format": {"type": "json_object"}}),
    "v1_chat_image": Case(
        CHAT,
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is it?"}, IMAGE]}
            ],
            "max_tokens": 8,
        },
    ),
    "v1_chat_stream": Case(CHAT, {"messages": HI, "stream": True}),
    "v1_chat_stream_usage": Case(CHAT, {"messages": HI} | STREAM_USAGE),
    "v1_chat_stream_usage_false": Case(
        CHAT, {"messages": HI, "stream": True, "stream_options": {"include_usage": False}}
    ),
    "v1_chat_stream_length": Case(CHAT, {"messages": HI, "max_tokens": 3} | STREAM_USAGE),
    "v1_chat_stream_stop_hit": Case(CHAT, {"messages": HI, "stop": ["answer"]} | STREAM_USAGE),
    "v1_chat_stream_json_schema": Case(
        CHAT,
        {
            "messages": HI,
            "stream": True,
            "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
        },
    ),
    "v1_embeddings": Case(EMBED, {"input": ["one", "two"]}),
    "v1_embeddings_string": Case(EMBED, {"input": "one", "encoding_format": "float"}),
    "v1_embeddings_base64": Case(EMBED, {"input": ["one", "two"], "encoding_format": "base64"}),
    # Errors
    "err_api_chat_invalid_json": Case(API_CHAT, raw=b"{not json"),
    "err_v1_chat_invalid_json": Case(CHAT, raw=b'{"messages": ['),
    "err_api_chat_not_json": Case(API_CHAT, raw=b"{}", content_type="text/plain"),
    "err_api_chat_too_large": Case(API_CHAT, raw=b'{"messages": "' + b"x" * 5000 + b'"}'),
    "err_api_chat_no_messages": Case(API_CHAT, {"max_tokens": 5}),
    "err_v1_chat_no_messages": Case(CHAT, {"model": "stub"}),
    "err_api_chat_empty_messages": Case(API_CHAT, {"messages": []}),
    "err_api_chat_bad_role": Case(API_CHAT, {"messages": [{"role": "robot", "content": "x"}]}),
    "err_api_chat_temp": Case(API_CHAT, {"messages": HI, "temp": -1}),
    "err_v1_chat_temperature": Case(CHAT, {"messages": HI, "temperature": -1}),
    "err_v1_chat_max_tokens": Case(CHAT, {"messages": HI, "max_tokens": 0}),
    "err_api_chat_unknown_model": Case(API_CHAT, {"messages": HI, "model": UNKNOWN}),
    "err_v1_chat_unknown_model": Case(CHAT, {"messages": HI, "model": UNKNOWN}),
    "err_v1_chat_stream_unknown_model": Case(
        CHAT, {"messages": HI, "model": UNKNOWN} | STREAM_USAGE
    ),
    "err_api_embeddings_unknown_model": Case(API_EMBED, {"input": "a", "model": UNKNOWN}),
    "err_v1_embeddings_unknown_model": Case(EMBED, {"input": "a", "model": UNKNOWN}),
    "err_api_tag_unknown_model": Case("/api/tag", {"image": PNG_B64, "model": UNKNOWN}),
    "err_v1_chat_n": Case(CHAT, {"messages": HI, "n": 2}),
    # Tools: the fakes answer text, not a call, so the client gets that text (never a call).
    "v1_chat_tools_text_answer": Case(CHAT, {"messages": HI, "tools": [TOOL_F]}),
    "v1_chat_tools_text_answer_stream": Case(
        CHAT, {"messages": HI, "tools": [TOOL_F], "tool_choice": "required", "stream": True}
    ),
    "api_chat_tools_text_answer": Case(
        "/api/chat", {"messages": HI, "tools": [TOOL_F], "tool_choice": "required"}
    ),
    "err_v1_chat_tools_twice": Case(CHAT, {"messages": HI, "tools": [TOOL_F, TOOL_F]}),
    "err_v1_chat_tool_choice_unknown": Case(
        CHAT,
        {
            "messages": HI,
            "tools": [TOOL_F],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
    ),
    "err_v1_chat_tool_result_of_nothing": Case(
        CHAT,
        {
            "messages": [*HI, {"role": "tool", "tool_call_id": "call_1", "content": "42"}],
            "tools": [TOOL_F],
        },
    ),
    "err_v1_chat_unsupported_fields": Case(
        CHAT, {"messages": HI, "logprobs": True, "logit_bias": {"1": 5}}
    ),
    "err_v1_chat_five_stops": Case(CHAT, {"messages": HI, "stop": ["a", "b", "c", "d", "e"]}),
    "err_v1_chat_response_format_type": Case(
        CHAT, {"messages": HI, "response_format": {"type": "xml"}}
    ),
    "err_v1_chat_json_schema_missing": Case(
        CHAT, {"messages": HI, "response_format": {"type": "json_schema"}}
    ),
    "err_v1_chat_json_schema_count": Case(
        CHAT,
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"schema": {"type": "string", "maxLength": 1000}},
            },
        },
    ),
    "err_v1_chat_image_stream": Case(
        CHAT, {"messages": [{"role": "user", "content": [IMAGE]}], "stream": True}
    ),
    "err_v1_chat_two_images": Case(CHAT, {"messages": [{"role": "user", "content": [IMAGE] * 2}]}),
    "err_v1_chat_image_not_base64": Case(
        CHAT,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}
                    ],
                }
            ]
        },
    ),
    "err_api_embeddings_blank": Case(API_EMBED, {"input": ["a", "  "]}),
    "err_v1_embeddings_empty": Case(EMBED, {"input": ""}),
    "err_v1_embeddings_dimensions": Case(EMBED, {"input": "a", "dimensions": 64}),
    "err_v1_embeddings_encoding_format": Case(EMBED, {"input": "a", "encoding_format": "hex"}),
    "err_api_tag_no_image": Case("/api/tag", {"prompt": "x"}),
    "err_api_describe_not_base64": Case("/api/describe", {"image": "%%%"}),
    "err_api_describe_not_an_image": Case(
        "/api/describe", {"image": base64.b64encode(b"hello").decode()}
    ),
    "err_api_chat_get": Case(API_CHAT, method="GET"),
    "err_v1_unknown_route": Case("/v1/nope", {"messages": HI}),
    # Last: a model's status says what ran before.
    "v1_models": Case("/v1/models", method="GET"),
}


@dataclass(frozen=True)
class Fault:
    """A llama that misbehaves ($FAKE_LLAMA for the fakes) for `cases`, each sent to a
    gateway of its own with `timeout_s` as limits.request_timeout_s."""

    behaviour: dict[str, object]
    cases: tuple[str, ...]
    timeout_s: float = 10


# A llama that fails fails each of these once: chat, streamed or not, embeddings and vision.
EVERY_PATH = (
    "api_chat",
    "api_chat_stream",
    "v1_chat",
    "v1_chat_stream_usage",
    "api_embeddings",
    "v1_embeddings",
    "api_describe_json",
)
FAULTS: dict[str, dict[str, Fault]] = {
    "server": {
        "llama_answers_500": Fault(
            {"fail_status": 500},
            EVERY_PATH,
        ),
        "llama_answers_400": Fault({"fail_status": 400}, ("api_chat", "v1_chat_stream_usage")),
        "llama_crashes_at_start": Fault({"exit_at_start": 1}, ("api_chat", "v1_chat_stream")),
        "llama_stalls_mid_stream": Fault(
            {"stream_fault": "stall"}, ("api_chat_stream", "v1_chat_stream_usage"), timeout_s=1
        ),
        "llama_cuts_mid_stream": Fault(
            {"stream_fault": "cut"}, ("api_chat_stream", "v1_chat_stream_usage")
        ),
        "llama_hangs": Fault({"hang_completion": True}, ("v1_chat", "v1_chat_stream"), timeout_s=1),
    },
    "cli": {
        "llama_exits_3": Fault(
            {"exit": 3},
            EVERY_PATH,
        ),
        "llama_dies_mid_answer": Fault(
            {"partial": 3}, ("api_chat", "api_chat_stream", "v1_chat_stream_usage")
        ),
        "llama_stalls_mid_stream": Fault(
            {"drip": [1, 30]}, ("api_chat_stream", "v1_chat_stream_usage"), timeout_s=1
        ),
        "llama_hangs": Fault(
            {"sleep": 60},
            ("v1_chat", "v1_chat_stream", "v1_embeddings", "api_describe_json"),
            timeout_s=1,
        ),
    },
}


# The real models: greedy, so one llama.cpp build answers the same text each time (the
# finish_reason stays), and long enough that cli mode's stream comes in several reads.
STORY = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]
GREEDY_V1 = {"messages": STORY, "max_tokens": 16, "temperature": 0}
GREEDY_API = {"messages": STORY, "max_tokens": 16, "temp": 0}
REAL_CASES = {
    "v1_chat": Case(CHAT, GREEDY_V1),
    "v1_chat_stream_usage": Case(CHAT, GREEDY_V1 | STREAM_USAGE),
    "api_chat": Case(API_CHAT, GREEDY_API),
    "api_chat_stream": Case(API_CHAT, GREEDY_API | {"stream": True}),
}
