"""POST /v1/responses with the real llama.cpp and default models, in both modes, through the
`openai` SDK (`responses.create`, `responses.stream`) and as Codex sends it."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from openai.types.responses import (
    FunctionToolParam,
    ResponseFormatTextJSONSchemaConfigParam,
    ResponseFunctionToolCall,
)
from PIL import Image

from backends.catalog import GEMMA, SMOLLM2
from core.config import Limits, ModelConfig
from tests.codex import codex_body
from tests.e2e.conftest import real_settings, serving
from tests.e2e.test_responses_fake import sse_events
from tests.helpers import sdk

pytestmark = pytest.mark.llama

MODES = ["server", "cli"]
CITY: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather now in a city",
    "parameters": CITY,
    "strict": True,
}


@pytest.mark.parametrize("backend", MODES)
async def test_create_and_stream_answer_alike(tmp_path: Path, backend: str) -> None:
    settings = real_settings(tmp_path, backend=backend)
    common: dict[str, Any] = {
        "model": SMOLLM2, "input": "What is the capital of France?",
        "instructions": "Answer in one short sentence.", "max_output_tokens": 12,
        "temperature": 0,
    }  # fmt: skip
    async with serving(settings), sdk(settings) as client:
        created = await client.responses.create(**common)
        async with client.responses.stream(**common) as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            streamed = await stream.get_final_response()
        cut = await client.responses.create(**common | {"max_output_tokens": 2})
    assert created.output_text.strip() and created.status in ("completed", "incomplete")
    assert [o.to_dict().keys() for o in streamed.output] == [
        o.to_dict().keys() for o in created.output
    ]
    assert [(o.type, getattr(o, "status", None)) for o in streamed.output] == [
        (o.type, getattr(o, "status", None)) for o in created.output
    ]
    assert streamed.output_text == "".join(deltas) == created.output_text
    assert created.usage and streamed.usage and created.usage.output_tokens > 0
    assert created.usage.total_tokens == created.usage.input_tokens + created.usage.output_tokens
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("backend", MODES)
async def test_function_tool_loop(tmp_path: Path, backend: str) -> None:
    """The model calls the tool (required: the grammar makes a 135M model do it), its output
    goes back as a function_call_output, and the model answers in text."""
    settings = real_settings(tmp_path, backend=backend)
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    common: dict[str, Any] = {
        "model": SMOLLM2, "tools": [WEATHER], "max_output_tokens": 60, "temperature": 0,
        "parallel_tool_calls": False,  # true by default: the 135M model calls again and again
    }  # fmt: skip
    async with serving(settings), sdk(settings) as client:
        called = await client.responses.create(**common, input=ask, tool_choice="required")
        async with client.responses.stream(**common, input=ask, tool_choice="required") as s:
            streamed = await s.get_final_response()
        (call,) = [o for o in called.output if isinstance(o, ResponseFunctionToolCall)]
        assert call.name == "get_weather" and call.call_id and call.status == "completed"
        jsonschema.validate(json.loads(call.arguments), CITY)
        (again,) = [o for o in streamed.output if isinstance(o, ResponseFunctionToolCall)]
        assert (again.name, json.loads(again.arguments)) == (call.name, json.loads(call.arguments))
        result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
        history = [*ask, call.model_dump(exclude_none=True), result]
        answer = await client.responses.create(**common, input=history, tool_choice="none")
    assert [o.type for o in answer.output] == ["message"]
    assert answer.output_text.strip()


@pytest.mark.parametrize("backend", MODES)
async def test_text_format_json_schema_holds_the_answer(tmp_path: Path, backend: str) -> None:
    settings = real_settings(tmp_path, backend=backend)
    fmt: ResponseFormatTextJSONSchemaConfigParam = {
        "type": "json_schema", "name": "place", "schema": CITY, "strict": True,
    }  # fmt: skip
    async with serving(settings), sdk(settings) as client:
        response = await client.responses.create(
            model=SMOLLM2, input="Name a city in Japan.", text={"format": fmt},
            max_output_tokens=40, temperature=0,
        )  # fmt: skip
    jsonschema.validate(json.loads(response.output_text), CITY)
    assert response.text and response.text.format and response.text.format.type == "json_schema"


def png_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("backend", MODES)
async def test_an_image_goes_to_the_vision_model(tmp_path: Path, backend: str) -> None:
    settings = real_settings(tmp_path, backend=backend)
    content: list[Any] = [
        {"type": "input_text", "text": "What is in this picture?"},
        {"type": "input_image", "image_url": png_url(), "detail": "auto"},
    ]
    async with serving(settings), sdk(settings) as client:
        response = await client.responses.create(
            model=GEMMA, input=[{"role": "user", "content": content}], max_output_tokens=8
        )
    assert response.model == GEMMA and response.status in ("completed", "incomplete")
    assert [o.type for o in response.output] == ["message"]
    assert isinstance(response.output_text, str)


CODEX_SEQUENCE_ENDS = {"response.completed", "response.incomplete"}


@pytest.mark.timeout(300)  # a 4,500-token prompt, evaluated afresh by each cli run
@pytest.mark.parametrize("backend", MODES)
async def test_a_codex_request_gets_the_whole_event_sequence(tmp_path: Path, backend: str) -> None:
    """Codex's request, as recorded (stream, store false, include, reasoning, 17 KB developer
    message, 7 strict functions, a namespace tool, web_search), with no max_output_tokens:
    the configured default, kept small here, bounds it."""
    settings = real_settings(tmp_path, backend=backend, limits=Limits(default_max_tokens=40))
    async with serving(settings) as client:
        status, events = await sse_events(client, codex_body(SMOLLM2))
    assert status == 200, events
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-2] == "response.output_item.done" and kinds[-1] in CODEX_SEQUENCE_ENDS, kinds
    final = events[-1]["response"]
    assert final["output"] and final["usage"]["input_tokens"] > 3000  # the whole prompt
    for item in final["output"]:
        if item["type"] == "function_call":  # a call names an offered function
            assert item["name"] in {t["name"] for t in codex_body("")["tools"][:7]} | {
                "search_docs"
            }
            msgspec.json.decode(item["arguments"])


@pytest.mark.parametrize("backend", MODES)
async def test_max_output_tokens_over_the_context_is_a_ceiling(
    tmp_path: Path, backend: str
) -> None:
    """A budget far beyond what the context leaves is no error: the answer stops where the
    context ends, and says it was cut (a 512-token context keeps the run short)."""
    models = {SMOLLM2: ModelConfig(ctx_size=512)}
    settings = real_settings(tmp_path, backend=backend, models=models)
    numbers = ", ".join(str(i) for i in range(1, 100))
    async with serving(settings), sdk(settings) as client:
        response = await client.responses.create(
            model=SMOLLM2, input=f"Continue this list without stopping: {numbers}",
            max_output_tokens=10**6, temperature=0,
        )  # fmt: skip
    assert response.status == "incomplete", response
    assert response.incomplete_details and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage and response.usage.total_tokens == 512
