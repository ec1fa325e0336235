"""Ollama's chat routes on the Ollama port, through the clients Ollama's users run (the
official `ollama` package and `langchain-ollama`), on the real default models, in both modes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings
from PIL import Image

from backends.catalog import GEMMA, SMOLLM2
from tests.e2e.conftest import Client, real_settings, serving

pytestmark = pytest.mark.llama

FEW = {"num_predict": 8, "temperature": 0, "seed": 7}


def get_weather(city: str) -> str:
    """The weather now in a city.

    Args:
      city: the city's name
    """
    return f"Sunny and 21 degrees in {city}."


def host(client: Client) -> str:
    assert client.ollama is not None
    return client.ollama.url


def ollama_client(client: Client) -> ollama.AsyncClient:
    """The official client, each request on its own connection (its pool is never closed
    otherwise: the client has no `async with`)."""
    return ollama.AsyncClient(host=host(client), headers={"Connection": "close"})


def assert_counted(last: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    """The last object: done, its reason, the counts and the durations in ns."""
    assert last.done and last.done_reason in ("stop", "length"), last
    assert last.prompt_eval_count and last.prompt_eval_count > 0
    assert last.eval_count and 0 < last.eval_count <= 8
    assert last.total_duration and last.eval_duration
    assert last.total_duration >= last.eval_duration > 0
    assert last.load_duration is not None and last.load_duration >= 0


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_ollama_client_chat_generate_and_embed(tmp_path: Path, backend: str) -> None:
    async with serving(real_settings(tmp_path, backend=backend)) as client:
        c = ollama_client(client)
        ask = [{"role": "user", "content": "What is the capital of France?"}]

        whole = await c.chat(model=SMOLLM2, messages=ask, options=FEW)
        assert whole.message.role == "assistant" and whole.message.content
        assert_counted(whole)

        parts = [p async for p in await c.chat(model=f"{SMOLLM2}:latest", messages=ask,
                                               options=FEW, stream=True)]  # fmt: skip
        assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
        assert "".join(p.message.content or "" for p in parts).strip()
        assert parts[-1].model == f"{SMOLLM2}:latest"
        assert_counted(parts[-1])

        generated = await c.generate(model=SMOLLM2, prompt="The capital of France is",
                                     system="Answer in one word.", options=FEW)  # fmt: skip
        assert generated.response and generated.context is None
        assert_counted(generated)

        # `format` a schema: llama.cpp's grammar holds the answer to it.
        city = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"]}  # fmt: skip
        shaped = await c.chat(model=SMOLLM2, messages=ask, format=city,
                              options=FEW | {"num_predict": 40})  # fmt: skip
        assert shaped.done_reason == "stop", shaped
        assert isinstance(json.loads(shaped.message.content or "")["city"], str), shaped

        embedded = await c.embed(model=GEMMA, input=["hello", "world"])
        assert [len(v) for v in embedded.embeddings] == [640, 640]
        assert embedded.embeddings[0] != embedded.embeddings[1]
        single = await c.embed(model=GEMMA, input="hello")
        assert single.embeddings[0] == pytest.approx(embedded.embeddings[0], abs=1e-4)
        # A backslash is a backslash (llama.cpp's own escapes are off in cli mode).
        escaped = await c.embed(model=GEMMA, input=["a\\nb", "a\nb"])
        assert escaped.embeddings[0] != escaped.embeddings[1]
        older = await c.embeddings(model=GEMMA, prompt="hello")
        assert len(older.embedding) == 640

        with pytest.raises(ollama.ResponseError) as caught:
            await c.chat(model="nope", messages=ask)
        assert (caught.value.status_code, caught.value.error) == (404, "model 'nope' not found")
        with pytest.raises(ollama.ResponseError) as caught:
            await c.chat(model=SMOLLM2, messages=ask, options={"temperature": "hot"})
        assert caught.value.status_code == 400
        assert caught.value.error == 'option "temperature" must be of type float32'


# SmolLM2's chat template on a system prompt and a question, opening the model's turn.
CHATML = (
    "<|im_start|>system\nAnswer in one word.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)

GO_CHATML = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_raw_generate_is_the_prompt_as_it_is(tmp_path: Path, backend: str) -> None:
    """`raw`: the prompt reaches the model without its template; written out by hand, or
    built by a Go `template`, the template's own text gives the chat's answer, token for
    token, in both modes."""
    async with serving(real_settings(tmp_path, backend=backend)) as client:
        c = ollama_client(client)
        ask = [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "What is the capital of France?"},
        ]
        chatted = await c.chat(model=SMOLLM2, messages=ask, options=FEW)
        raw = await c.generate(model=SMOLLM2, prompt=CHATML, raw=True, options=FEW)
        assert raw.response == chatted.message.content, (raw, chatted)
        assert raw.prompt_eval_count == chatted.prompt_eval_count
        assert_counted(raw)
        assert raw.prompt_eval_duration and raw.prompt_eval_duration > 0  # cli mode too

        # The same template as Go's, from Ollama's `template` field.
        system, question = (m["content"] for m in ask)
        templated = await c.generate(model=SMOLLM2, prompt=question, system=system,
                                     template=GO_CHATML, options=FEW)  # fmt: skip
        assert templated.response == chatted.message.content, templated

        streamed = [p async for p in await c.generate(model=SMOLLM2, prompt=CHATML, raw=True,
                                                      options=FEW, stream=True)]  # fmt: skip
        assert "".join(p.response or "" for p in streamed) == raw.response
        assert_counted(streamed[-1])

        # Without its template the base model just goes on with the text.
        plain = await c.generate(model=GEMMA, prompt="1, 2, 3, 4,", raw=True, options=FEW)
        # Cut at num_predict: nothing of what llama-completion writes as it exits ("\n\n").
        assert (plain.response, plain.prompt_eval_count) == (" 5, 6, 7", 12), plain
        cut = await c.generate(model=GEMMA, prompt="1, 2, 3, 4,", raw=True,
                               options=FEW | {"stop": [" 6"]})  # fmt: skip
        assert (cut.response, cut.done_reason) == (" 5,", "stop"), cut
        with pytest.raises(ollama.ResponseError) as caught:
            await c.generate(model=SMOLLM2, prompt="x", raw=True, system="be brief")
        assert caught.value.status_code == 400
        assert caught.value.error == "raw mode does not support template, system, or context"


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_ollama_client_tool_loop(tmp_path: Path, backend: str) -> None:
    """A Python function as the tool: the model calls it with arguments as an object, its
    result goes back as a `tool` message named after it, and the model answers."""
    async with serving(real_settings(tmp_path, backend=backend)) as client:
        c = ollama_client(client)
        messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
        options = FEW | {"num_predict": 100}
        called = await c.chat(model=SMOLLM2, messages=messages, tools=[get_weather],
                              options=options)  # fmt: skip
        (call,) = called.message.tool_calls or []
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments["city"], str)
        assert called.done_reason == "stop"
        messages += [
            called.message,
            {"role": "tool", "content": get_weather(**call.function.arguments),
             "tool_name": "get_weather"},
        ]  # fmt: skip
        # Without tools on offer the model answers from the result (Ollama has no
        # tool_choice: offering none is how a client asks for the answer).
        answer = await c.chat(model=SMOLLM2, messages=messages, options=FEW)
        assert answer.message.content and not answer.message.tool_calls

        streamed = [p async for p in await c.chat(model=SMOLLM2, messages=messages[:1],
                                                  tools=[get_weather], options=options,
                                                  stream=True)]  # fmt: skip
        calls = [tc for p in streamed for tc in p.message.tool_calls or []]
        assert [(tc.function.name, dict(tc.function.arguments)) for tc in calls] == [
            (call.function.name, dict(call.function.arguments))
        ]
        assert streamed[-1].done


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_ollama_client_image_to_the_vision_model(tmp_path: Path, backend: str) -> None:
    """Gemma with the synthetic projector: the image goes through the image checks to it."""
    async with serving(real_settings(tmp_path, backend=backend)) as client:
        c = ollama_client(client)
        ask = {"role": "user", "content": "Describe this image.", "images": [png((200, 0, 0))]}
        whole = await c.chat(model=GEMMA, messages=[ask], options=FEW)
        assert whole.done and isinstance(whole.message.content, str)
        parts = [p async for p in await c.chat(model=GEMMA, messages=[ask], options=FEW,
                                               stream=True)]  # fmt: skip
        assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
        generated = await c.generate(model=GEMMA, prompt="This image shows",
                                     images=[png((0, 0, 200))], options=FEW)  # fmt: skip
        assert generated.done
        with pytest.raises(ollama.ResponseError) as caught:
            await c.chat(model=GEMMA, messages=[ask | {"images": [b"not an image"]}])
        assert caught.value.status_code == 400


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_langchain_ollama_tool_loop_and_embeddings(tmp_path: Path, backend: str) -> None:
    lc_weather = tool(get_weather)
    # Each request on its own connection: LangChain never closes its clients' pools.
    close = {"headers": {"Connection": "close"}}
    async with serving(real_settings(tmp_path, backend=backend)) as client:
        model = ChatOllama(
            model=SMOLLM2, base_url=host(client), client_kwargs=close, temperature=0, seed=7,
            num_predict=100,
        )  # fmt: skip
        messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
        called = await model.bind_tools([lc_weather]).ainvoke(messages)
        assert len(called.tool_calls) == 1, called
        call = called.tool_calls[0]
        assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
        messages += [called, ToolMessage(lc_weather.invoke(call["args"]), tool_call_id=call["id"])]
        answer = await model.ainvoke(messages)
        assert not answer.tool_calls
        assert isinstance(answer.content, str) and answer.content.strip()

        embeddings = OllamaEmbeddings(
            model=f"{GEMMA}:latest", base_url=host(client), client_kwargs=close
        )
        vectors = await embeddings.aembed_documents(["hello", "world"])
        assert [len(v) for v in vectors] == [640, 640]
        assert await embeddings.aembed_query("hello") == pytest.approx(vectors[0], abs=1e-4)


async def test_raw_ndjson_lines_and_their_content_type(tmp_path: Path) -> None:
    """What a client without a library reads: one JSON object per line, `stream` on unless
    the body turns it off."""
    async with serving(real_settings(tmp_path)) as client, httpx.AsyncClient(timeout=120) as http:
        body = {"model": SMOLLM2, "prompt": "Hello", "options": FEW}
        async with http.stream("POST", host(client) + "/api/generate", json=body) as resp:
            assert resp.headers["content-type"] == "application/x-ndjson"
            lines = [line async for line in resp.aiter_lines() if line]
        assert len(lines) >= 2 and '"done":true' in lines[-1]
        whole = await http.post(host(client) + "/api/generate", json=body | {"stream": False})
        assert whole.headers["content-type"] == "application/json"
        assert whole.json()["done"] is True
