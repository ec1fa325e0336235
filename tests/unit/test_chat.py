"""core.chat: the answer a stream's events add up to."""

from __future__ import annotations

from core.chat import (
    Answer,
    Event,
    Finish,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    collect,
)


def test_collect_adds_up_text_calls_finish_and_usage() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=5)
    events: list[Event] = [
        TextDelta(text="Let me "),
        TextDelta(text="check."),
        ToolCallDelta(index=1, id="b", name="time"),
        ToolCallDelta(index=0, id="a", name="weather"),
        ToolCallDelta(index=0, arguments='{"city": '),
        ToolCallDelta(index=0, arguments='"Paris"}'),
        ToolCallDelta(index=1, arguments="{}"),
        Finish(reason="tool_calls"),
        usage,
    ]
    assert collect(events) == Answer(
        text="Let me check.",
        tool_calls=(
            ToolCall(id="a", name="weather", arguments='{"city": "Paris"}'),
            ToolCall(id="b", name="time", arguments="{}"),
        ),
        finish_reason="tool_calls",
        usage=usage,
    )
    assert collect([]) == Answer(text="")
