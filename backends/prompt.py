"""Chat templates rendered exactly as llama-server renders them (`--no-jinja`), so a cli-mode
request is the same prompt, token for token, as the same request in server mode.

Ports of llama.cpp's built-in `gemma` and `chatml` (src/llama-chat.cpp); a test compares
them with the real llama-server's `POST /apply-template`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.errors import BadRequest

# llama.cpp's trim(): std::isspace, i.e. ASCII whitespace only.
_SPACE = " \t\n\v\f\r"


class Message(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...


def _gemma(messages: Sequence[Message]) -> str:
    out: list[str] = []
    system = ""
    for message in messages:
        if message.role == "system":
            # Gemma has no system turn: llama.cpp prepends it to the next user turn.
            system += message.content.strip(_SPACE)
            continue
        role = "model" if message.role == "assistant" else message.role
        out.append(f"<start_of_turn>{role}\n")
        if system and role != "model":
            out.append(system + "\n\n")
            system = ""
        out.append(message.content.strip(_SPACE) + "<end_of_turn>\n")
    return "".join(out)


def _chatml(messages: Sequence[Message]) -> str:
    return "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)


# Each template, and how it opens the model's turn.
TEMPLATES = {
    "gemma": (_gemma, "<start_of_turn>model\n"),
    "chatml": (_chatml, "<|im_start|>assistant\n"),
}


def render_chat(template: str, messages: Sequence[Message]) -> str:
    """The prompt for `messages`, opening the model's turn unless the last message is already
    the assistant's (llama-server then continues that message)."""
    try:
        render, generation_turn = TEMPLATES[template]
    except KeyError:
        raise BadRequest(
            f"cli mode renders the chat templates {sorted(TEMPLATES)}; "
            f"the configured one is {template!r}"
        ) from None
    prompt = render(messages)
    return prompt if messages and messages[-1].role == "assistant" else prompt + generation_turn
