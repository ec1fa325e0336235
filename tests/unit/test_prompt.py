from __future__ import annotations

import pytest

from backends.prompt import render_chat
from gateway.errors import BadRequest
from gateway.schemas import ChatMessage


def msgs(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=role, content=content) for role, content in pairs]  # type: ignore[arg-type]


def test_render_gemma_merges_system_into_the_first_user_turn() -> None:
    rendered = render_chat(
        "gemma",
        msgs(("system", " Be brief. "), ("user", "Hi\n"), ("assistant", "Yo"), ("user", "Q")),
    )
    assert rendered == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nYo<end_of_turn>\n"
        "<start_of_turn>user\nQ<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_render_leaves_a_last_assistant_turn_open_for_continuation() -> None:
    assert render_chat("chatml", msgs(("user", "a"), ("assistant", "b"))) == (
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
    )


def test_render_unknown_template_is_a_clear_error() -> None:
    with pytest.raises(BadRequest, match="renders the chat templates \\['chatml', 'gemma'\\]"):
        render_chat("llama3", msgs(("user", "a")))
