"""Ollama's chat routes over the fake llama binaries: what reaches llama-server for each
field, Ollama's error shapes and statuses, and a stream that fails after it started."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
from PIL import Image

from tests.e2e.conftest import Client, fake_settings, recorded, serving
from tests.supervisor.conftest import behave

ASK = [{"role": "user", "content": "hi"}]


def ollama_of(client: Client) -> Client:
    assert client.ollama is not None
    return client.ollama


async def test_options_format_and_stop_reach_llama_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "llama.jsonl"
    behave(monkeypatch, record=str(log))
    async with serving(fake_settings(tmp_path)) as client:
        options = {
            "temperature": 0.25, "top_p": 0.5, "top_k": 7, "presence_penalty": 0.1,
            "frequency_penalty": 0.2, "mirostat": 1, "seed": 9, "stop": ["\n\n"],
            "num_predict": 17, "num_ctx": 99999, "min_p": 0.3,
        }  # fmt: skip
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        body = {"model": "stub", "messages": ASK, "options": options, "format": schema}
        status, answer = await ollama_of(client).post("/api/chat", body | {"stream": False})
        assert status == 200, answer
        assert answer["message"] == {"role": "assistant", "content": "fake answer"}
        assert answer["done"] is True and answer["done_reason"] == "stop"
        assert (answer["prompt_eval_count"], answer["eval_count"]) == (3, 2)
        status, generated = await ollama_of(client).post(
            "/api/generate",
            {"model": "stub:latest", "prompt": "hi", "system": "be brief", "format": "json",
             "stream": False},
        )  # fmt: skip
        assert status == 200 and generated["response"] == "fake answer", generated
    chat, generate = [e["body"] for e in recorded(log) if e.get("path") == "/v1/chat/completions"]
    assert chat["temperature"] == 0.25 and chat["top_p"] == 0.5 and chat["top_k"] == 7
    assert chat["presence_penalty"] == 0.1 and chat["frequency_penalty"] == 0.2
    assert (chat["mirostat"], chat["seed"], chat["stop"]) == (1, 9, ["\n\n"])
    assert chat["max_tokens"] == 17 and chat["json_schema"] == schema
    assert generate["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert generate["json_schema"] == {"type": "object"}


async def test_streams_are_ndjson_by_default(tmp_path: Path) -> None:
    async with serving(fake_settings(tmp_path)) as client, aiohttp.ClientSession() as http:
        url = ollama_of(client).url + "/api/chat"
        async with http.post(url, json={"model": "stub", "messages": ASK}) as resp:
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            lines = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert [line["message"]["content"] for line in lines] == ["fake", " answer", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 2
    assert all(line["model"] == "stub" for line in lines)


async def test_a_stream_that_fails_midway_ends_with_an_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, stream_fault="cut")
    async with serving(fake_settings(tmp_path)) as client, aiohttp.ClientSession() as http:
        url = ollama_of(client).url + "/api/generate"
        async with http.post(url, json={"model": "stub", "prompt": "hi"}) as resp:
            assert resp.status == 200
            lines = [json.loads(line) for line in (await resp.read()).splitlines()]
        assert lines[0]["response"] == "fake" and not lines[0]["done"]
        assert list(lines[-1]) == ["error"] and "llama-server" in lines[-1]["error"]
        assert len(lines) == 2

        # The official client raises it, after the part it already yielded.
        c = ollama.AsyncClient(host=ollama_of(client).url, headers={"Connection": "close"})
        seen: list[str] = []
        with pytest.raises(ollama.ResponseError) as caught:
            async for part in await c.chat(model="stub", messages=ASK, stream=True):
                seen.append(part.message.content or "")
        assert seen == ["fake"] and "llama-server" in caught.value.error


def png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("/api/chat", {"messages": ASK}, 400, "model is required"),
    ("/api/chat", {"model": "nope", "messages": ASK}, 404, "model 'nope' not found"),
    ("/api/chat", {"model": "nope:latest", "messages": ASK}, 404, "model 'nope:latest' not found"),
    (
        "/api/chat",
        {"model": "stub", "messages": ASK, "options": {"temperature": "hot"}},
        400,
        'option "temperature" must be of type float32',
    ),
    (
        "/api/chat",
        {"model": "stub", "messages": [{"role": "user", "content": "x", "images": ["%%"]}]},
        400,
        "messages[0].images[0] is not base64 image data",
    ),
    (
        "/api/chat",
        {"model": "stub", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
        400,
        "not an image",
    ),
    (
        "/api/generate",
        {"model": "stub", "prompt": "x", "suffix": "y"},
        400,
        "does not support insert",
    ),
    ("/api/generate", {"model": "stub", "prompt": "x", "raw": True, "system": "y"}, 400, "raw"),
    ("/api/generate", {"model": "stub", "prompt": "x", "format": "xml"}, 400, "format"),
    (
        "/api/generate",
        {"model": "stub", "prompt": "x", "template": "{{ .Prompt }}" * 6000},
        400,
        "$.template",
    ),
    ("/api/generate", {"model": "stub", "prompt": "x", "template": "{{ end }}"}, 400, "template"),
    ("/api/embed", {"model": "stub", "input": "x", "dimensions": 2}, 400, "dimensions"),
    ("/api/embed", {"model": "stub", "input": 3}, 400, "$.input"),
    ("/api/embed", {"input": "x"}, 400, "model is required"),
]


async def test_bad_input_gets_ollamas_error_shape_and_status(tmp_path: Path) -> None:
    async with serving(fake_settings(tmp_path)) as client:
        for path, body, status, message in BAD:
            got, answer = await ollama_of(client).post(path, body)
            assert (got, list(answer)) == (status, ["error"]), (path, body, answer)
            assert message in answer["error"], (path, body, answer)


async def test_empty_prompts_embed_nothing_and_answer_a_status(tmp_path: Path) -> None:
    """What clients send to load a model: no prompt, no messages, no input."""
    async with serving(fake_settings(tmp_path)) as client:
        o = ollama_of(client)
        status, loaded = await o.post("/api/generate", {"model": "stub"})
        assert status == 200 and loaded["done"] and loaded["done_reason"] == "load", loaded
        status, loaded = await o.post("/api/chat", {"model": "stub:latest", "messages": []})
        assert status == 200 and loaded["message"]["content"] == "", loaded
        status, embedded = await o.post("/api/embed", {"model": "stub", "input": []})
        assert (status, embedded["embeddings"]) == (200, [])
        status, older = await o.post("/api/embeddings", {"model": "stub", "prompt": ""})
        assert (status, older) == (200, {"embedding": []})


async def test_an_image_goes_to_the_vision_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "llama.jsonl"
    behave(monkeypatch, record=str(log))
    async with serving(fake_settings(tmp_path)) as client:
        ask = [{"role": "user", "content": "what is it?", "images": [png()]}]
        status, answer = await ollama_of(client).post(
            "/api/chat", {"model": "stub", "messages": ask, "stream": False}
        )
        assert status == 200 and answer["message"]["content"] == "fake answer", answer
    (sent,) = [e["body"] for e in recorded(log) if e.get("path") == "/v1/chat/completions"]
    image, text = sent["messages"][0]["content"]
    assert image["image_url"]["url"].startswith("data:image/")
    assert text == {"type": "text", "text": "what is it?"}


async def test_no_prompt_loads_and_keep_alive_0_unloads(tmp_path: Path) -> None:
    """Open WebUI's load and unload buttons: an empty prompt loads the model, and with
    `keep_alive: 0` unloads it (server mode; the main port's /api/models shows it)."""

    async def status() -> str:
        _, pool = await client.get("/api/models")
        (stub,) = [m for m in pool["models"] if m["name"] == "stub"]
        return str(stub["status"])

    async with serving(fake_settings(tmp_path)) as client:
        got, loaded = await ollama_of(client).post("/api/generate", {"model": "stub"})
        assert (got, loaded["done_reason"]) == (200, "load")
        assert await status() == "loaded"
        got, unloaded = await ollama_of(client).post(
            "/api/chat", {"model": "stub:latest", "messages": [], "keep_alive": 0}
        )
        assert (got, unloaded["done_reason"]) == (200, "unload"), unloaded
        assert await status() == "unloaded"
        got, error = await ollama_of(client).post(
            "/api/generate", {"model": "stub", "prompt": "hi", "keep_alive": "soon"}
        )
        assert got == 400 and "keep_alive" in error["error"]
