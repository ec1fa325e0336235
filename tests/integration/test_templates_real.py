"""Cli mode renders every kind of chat template exactly as the real llama-server does: the
GGUF's own Jinja template (SmolLM2), a built-in one (gemma), the Jinja ChatML fallback of a
GGUF without a template, and Jinja source given on the command line."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from backends.gguf_meta import read_meta
from backends.prompt import render_chat
from core.chat import Message
from core.config import LlmParams
from tests.integration.conftest import RunningServer, running_llama_server

pytestmark = pytest.mark.llama

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "  Be brief.\n"},
        {"role": "user", "content": "What is 2+2?  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "\tAnd 3+3?"},
    ],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi, I am "}],
    [{"role": "system", "content": "sys"}, {"role": "assistant", "content": "a"}],
    [{"role": "user", "content": "Grüße 👋 — 日本語, naïve café\u00a0«»"}],
    [{"role": "user", "content": "\n\n  padded both sides \t\n"}],
    [{"role": "user", "content": ""}],
]

# Jinja source on the command line, written to exercise llama.cpp's lexer and built-ins:
# block and comment lines (trim_blocks, lstrip_blocks), the `-` markers, namespace, loop
# variables, filters, tojson, an undefined variable and add_generation_prompt's definedness.
TRICKY = """\
{# A comment line: it and its newline vanish. #}
{% set ns = namespace(n=0) %}
{% for message in messages %}
    {% set ns.n = ns.n + 1 %}
    {%- if message['role'] == 'system' -%}
<<SYS>> {{ message['content'] | trim }} <</SYS>>
    {% else %}
[{{ loop.index }}/{{ loop.length }} {{ message.role | upper }}]
{{ message.content }}
        {#- an indented comment #}
[/{{ message.role }}]{{ '\\n' if not loop.last }}
    {% endif %}
{% endfor %}
turns={{ ns.n }} meta={{ {'k': '<b>&', 'u': 'é'} | tojson }} none={{ undefined_name is defined }}
{% if add_generation_prompt is defined and add_generation_prompt %}
[ASSISTANT]
{% endif %}
"""


@asynccontextmanager
async def llama_server(
    llama_bin: Path, model: Path, template: str | None, params: LlmParams | None = None
) -> AsyncIterator[RunningServer]:
    """A real llama-server with exactly the template flags server mode gives `template`."""
    async with running_llama_server(
        llama_bin, model, embeddings=False, chat_template=template, params=params
    ) as server:
        yield server


async def assert_renders_alike(server: RunningServer, template: str | None, model: Path) -> None:
    for messages in CONVERSATIONS:
        expected = await server.post("/apply-template", {"messages": messages})
        parsed = [
            msgspec.convert(m | {"content": [{"type": "text", "text": m["content"]}]}, Message)
            for m in messages
        ]
        rendered = render_chat(template, parsed, model)
        assert rendered == expected["prompt"], messages
        ours = await server.post("/tokenize", {"content": rendered})
        theirs = await server.post("/tokenize", {"content": expected["prompt"]})
        assert len(ours["tokens"]) == len(theirs["tokens"]), messages  # type: ignore[arg-type]


async def test_smollm2_own_template_renders_as_llama_server(llama_bin: Path, smollm2: Path) -> None:
    async with llama_server(llama_bin, smollm2, None) as server:
        async with server.http.get(server.url + "/props") as resp:
            props = await resp.json()
        meta = read_meta(smollm2)  # what render_chat reads from the GGUF
        assert (meta.chat_template, meta.bos_token, meta.eos_token) == (
            props["chat_template"],
            props["bos_token"],
            props["eos_token"],
        )
        await assert_renders_alike(server, None, smollm2)


async def test_gemma_builtin_template_renders_as_llama_server(
    llama_bin: Path, default_model: Path
) -> None:
    async with llama_server(llama_bin, default_model, "gemma") as server:
        await assert_renders_alike(server, "gemma", default_model)


async def test_gguf_without_template_renders_jinja_chatml_as_llama_server(
    llama_bin: Path, default_model: Path
) -> None:
    """The default model's GGUF has no template: llama-server falls back to its Jinja ChatML."""
    async with llama_server(llama_bin, default_model, None) as server:
        await assert_renders_alike(server, None, default_model)


async def test_jinja_source_renders_as_llama_server(llama_bin: Path, smollm2: Path) -> None:
    async with llama_server(llama_bin, smollm2, TRICKY) as server:
        await assert_renders_alike(server, TRICKY, smollm2)


# A template that shows the model's BOS and EOS texts, which llama-server takes from the
# model's vocabulary whichever template it renders.
TOKENS = (
    "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}"
)


async def test_jinja_source_sees_the_model_tokens_as_llama_server(
    llama_bin: Path, smollm2: Path
) -> None:
    async with llama_server(llama_bin, smollm2, TOKENS) as server:
        await assert_renders_alike(server, TOKENS, smollm2)


async def test_jinja_bos_cut_when_the_tokenizer_adds_it_as_llama_server(
    llama_bin: Path, default_model: Path
) -> None:
    """gemma's tokenizer adds BOS itself: llama-server cuts it off the rendered prompt."""
    async with llama_server(llama_bin, default_model, TOKENS) as server:
        rendered = await server.post("/apply-template", {"messages": CONVERSATIONS[0]})
        assert rendered["prompt"] == "user: hi<eos>"
        await assert_renders_alike(server, TOKENS, default_model)


QUESTION = "What is the capital of France?"
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


async def ask(server: RunningServer, messages: list[dict[str, str]], **sampling: float) -> str:
    body = {"messages": messages, "max_tokens": 32, **sampling}
    reply = await server.post("/v1/chat/completions", body)
    content: str = reply["choices"][0]["message"]["content"]  # type: ignore[index]
    return content


@pytest.mark.timeout(300)  # 12 generations: slow on a busy 2-core machine
async def test_smollm2_answers_paris(
    llama_bin: Path, smollm2: Path, record_property: Callable[[str, object], None]
) -> None:
    """With the project's startup parameters (ctx 12192, batch 8192, ubatch 1024), greedy.

    The bare question alone is not enough for this 135M model: greedy, it answers in French
    ("L'Étoile, la Marseillaise, ..."). "Answer in one sentence." or a system message gets
    "The capital of France is Paris.". The project's default sampling (temp 0.35, top_p 0.9,
    top_k 40, presence_penalty 0.2) is random: recorded (run with -s to see), not asserted."""
    params = LlmParams()
    user = {"role": "user", "content": QUESTION}
    one_sentence = {"role": "user", "content": QUESTION + " Answer in one sentence."}
    sampling = {
        "temperature": params.temp,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "presence_penalty": params.presence_penalty,
    }
    async with llama_server(llama_bin, smollm2, None, params) as server:
        for messages in ([one_sentence], [SYSTEM, user]):
            answer = await ask(server, messages, temperature=0)
            assert "Paris" in answer, (messages, answer)
        record_property("greedy_bare_question", await ask(server, [user], temperature=0))
        for messages in ([user], [one_sentence]):
            answers = [await ask(server, messages, seed=seed, **sampling) for seed in range(5)]
            hits = sum("Paris" in a for a in answers)
            record_property(f"default_sampling {messages[-1]['content']!r}", (hits, answers))
            print(f"default sampling, {messages[-1]['content']!r}: Paris in {hits}/5")
