from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

from backends.prompt import JINJA_CHATML, render_chat
from core.errors import BadRequest

# A ChatML-like template written the way real ones are: block tags on lines of their own,
# indented; only trim_blocks + lstrip_blocks (as llama.cpp's lexer) make those lines vanish.
CHATML_LIKE = """\
{% for message in messages %}
  {% if loop.first and message.role != 'system' %}
<|im_start|>system
You are helpful.<|im_end|>
  {% endif %}
<|im_start|>{{ message.role }}
{{ message.content | trim }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""


@dataclass(frozen=True)
class Msg:
    role: str
    text: str


def msgs(*pairs: tuple[str, str]) -> list[Msg]:
    return [Msg(role, content) for role, content in pairs]


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


def test_render_builtin_leaves_a_last_assistant_turn_closed_without_a_generation_prompt() -> None:
    assert render_chat("chatml", msgs(("user", "a"), ("assistant", "b"))) == (
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
    )


def test_render_jinja_opens_the_assistant_turn() -> None:
    assert render_chat(CHATML_LIKE, msgs(("system", "S"), ("user", " hi "))) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chat(CHATML_LIKE, msgs(("user", "hi"))) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_render_jinja_prefills_a_last_assistant_message_leaving_its_turn_open() -> None:
    """llama-server renders the messages before it, adds what the generation prompt adds,
    then the content as is (not trimmed by the template: it is no template output)."""
    assert render_chat(CHATML_LIKE, msgs(("user", "a"), ("assistant", "The answer is "))) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nThe answer is "
    )


def test_render_jinja_add_generation_prompt_is_undefined_when_false() -> None:
    template = "{{ add_generation_prompt is defined }}|"
    assert render_chat(template, msgs(("user", "a"))) == "True|"
    # prefill: "False|" (no generation prompt) and "True|" differ from the first character
    assert render_chat(template, msgs(("user", "a"), ("assistant", "b"))) == "False|True|b"


def test_render_refuses_two_trailing_assistant_messages_as_llama_server_does() -> None:
    for template in ("chatml", CHATML_LIKE):
        with pytest.raises(BadRequest, match="2 or more assistant messages"):
            render_chat(template, msgs(("user", "a"), ("assistant", "b"), ("assistant", "c")))


def test_render_jinja_merges_a_system_message_the_template_ignores() -> None:
    template = (
        "{% for m in messages %}{% if m.role != 'system' %}[{{ m.content }}]{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    assert render_chat(template, msgs(("system", "S"), ("user", "U"))) == "[S\nU]>"
    assert render_chat(template, msgs(("system", "S"))) == ">"  # alone, it is dropped
    # The prefilled message is taken off first: the system one is then alone, and dropped.
    assert render_chat(template, msgs(("system", "S"), ("assistant", "A"))) == ">A"


def test_render_jinja_maps_developer_to_system() -> None:
    assert render_chat(CHATML_LIKE, msgs(("developer", "D"))) == (
        "<|im_start|>system\nD<|im_end|>\n<|im_start|>assistant\n"
    )


def test_render_jinja_raise_exception_is_a_bad_request() -> None:
    template = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}x"
    assert render_chat(template, msgs(("user", "a"))) == "x"
    with pytest.raises(BadRequest, match="Jinja Exception: user first"):
        render_chat(template, msgs(("assistant", "a"), ("user", "b")))


def test_render_jinja_broken_template_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="does not parse"):
        render_chat("{% for m in messages %}", msgs(("user", "a")))


def test_render_jinja_filters_behave_like_llama_cpp() -> None:
    """trim strips ASCII whitespace only; tojson neither escapes HTML nor sorts keys."""
    template = "[{{ messages[0].content | trim }}]{{ {'b': '<&>', 'a': 'é'} | tojson }}"
    assert render_chat(template, msgs(("user", "\u00a0 x \n"))) == (
        '[\u00a0 x]{"b": "<&>", "a": "é"}'
    )


def test_render_jinja_quirks_of_llama_cpp_engine() -> None:
    """Each checked against llama-server's /apply-template."""
    one = msgs(("user", "\u00a0 hi \n"))
    cases = {
        "{{ messages[0].content.strip() }}|": "\u00a0 hi|",  # ASCII whitespace only
        "{{ none }}|{{ 'a' + none }}|{{ undefined_name + 'b' }}": "|a|b",
        "{% generation %}G{% endgeneration %}": "G",  # HF's assistant-mask tag
        "x {% if true %}y{% endif %}": "y",  # its lexer drops text before a first block...
        "\n{% if true %}y{% endif %}": "y",
        "ab {% if true %}y{% endif %}": "ab y",  # ...only when one character leads it
    }
    for template, expected in cases.items():
        assert render_chat(template, one) == expected, template


def test_render_jinja_enable_thinking_follows_the_template_reasoning() -> None:
    """llama-server turns enable_thinking on only for templates its analyser finds reasoning
    in (checked against /apply-template): one that shows reasoning_content, or whose
    generation prompt gains only reasoning markers when thinking is off."""
    off_block = "{% if enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    body = "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<a>"
    shows_reasoning = (
        "{% for m in messages %}{% if m.reasoning_content %}<think>{{ m.reasoning_content }}"
        "</think>{% endif %}{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<a>" + off_block + "{% endif %}"
    )
    one = msgs(("user", "q"))
    assert render_chat(shows_reasoning, one) == "q<a>"  # on: no empty think block
    toggles = body + "{% if enable_thinking is false %}<think></think>{% endif %}{% endif %}"
    assert render_chat(toggles, one) == "q<a>"
    # llama.cpp's test wants the prompt to end with the markers, not with whitespace: off.
    assert render_chat(body + off_block + "{% endif %}", one) == "q<a><think>\n\n</think>\n\n"
    assert render_chat("{{ enable_thinking }}", one) == "False"


def test_render_jinja_globals() -> None:
    template = "{{ strftime_now('%Y') | length }} {{ tools is defined }} {{ bos_token }}."
    assert render_chat(template, msgs(("user", "a"))) == "4 False ."


def write_gguf(path: Path, *, template: str | None) -> Path:
    writer = gguf.GGUFWriter(str(path), arch="llama")
    if template is not None:
        writer.add_chat_template(template)
    writer.add_token_list(["<s>", "</s>", "x"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_tensor("stub.weight", np.zeros(1, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_render_none_uses_the_gguf_template_and_tokens(tmp_path: Path) -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m.content + eos_token }}{% endfor %}"
    model = write_gguf(tmp_path / "m.gguf", template=template)
    assert render_chat(None, msgs(("user", "a"), ("user", "b")), model) == "<s>a</s>b</s>"


def test_render_none_without_a_gguf_template_is_llama_cpp_jinja_chatml(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "m.gguf", template=None)
    conversation = msgs(("user", "a"), ("assistant", "b"))
    assert render_chat(None, conversation, model) == render_chat(JINJA_CHATML, conversation)
    assert render_chat(None, conversation, model) == (
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb"
    )


def test_render_none_needs_the_model_file() -> None:
    with pytest.raises(ValueError, match="needs the model file"):
        render_chat(None, msgs(("user", "a")))
