"""Server mode's bodies and answers for native tool calling (backends.hermes)."""

from __future__ import annotations

from backends.base import ChatTask
from backends.catalog import ModelDef
from backends.llama_api import Upstream, answer_of, chat_payload
from core.chat import ChatRequest, Message, TextPart, Tool, ToolCall
from core.config import LlmParams

CITY = {"type": "object", "properties": {"city": {"type": "string"}}}


def task_of(request: ChatRequest) -> ChatTask:
    model = ModelDef(name="m", path="/m.gguf")
    return ChatTask(request=request, model=model, params=LlmParams(), max_tokens=16)


def test_chat_payload_passes_tools_calls_and_results_to_llama_server() -> None:
    request = ChatRequest(
        messages=(
            Message.of("user", "Weather?"),
            Message(role="assistant", tool_calls=(ToolCall(id="c1", name="w", arguments="{}"),)),
            Message(role="tool", content=(TextPart(text="sunny"),), tool_call_id="c1"),
        ),
        tools=(Tool(name="w", description="The weather", parameters=CITY),),
        tool_choice="required",
    )
    payload = chat_payload(task_of(request))
    assert payload["tools"] == [
        {
            "type": "function",
            "function": {"name": "w", "description": "The weather", "parameters": CITY},
        }
    ]
    assert (payload["tool_choice"], payload["parallel_tool_calls"]) == ("required", False)
    assert payload["messages"][1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
    ]
    assert payload["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    plain = chat_payload(task_of(ChatRequest(messages=(Message.of("user", "hi"),))))
    assert "tools" not in plain and "tool_choice" not in plain


def test_answer_of_reads_llama_servers_tool_calls() -> None:
    call = {
        "type": "function",
        "id": "x",
        "function": {"name": "w", "arguments": '{"city": "Nice"}'},
    }
    upstream = Upstream(
        choices=[{"message": {"content": "", "tool_calls": [call]}, "finish_reason": "tool_calls"}]
    )
    answer = answer_of(upstream)
    assert answer.tool_calls == (ToolCall(id="x", name="w", arguments='{"city": "Nice"}'),)
    assert answer.finish_reason == "tool_calls" and answer.text == ""
