"""The built llama.cpp and the default model work: these prove the toolchain, not the gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from backends import toolchain
from backends.prompt import render_chat
from core.chat import Message
from tests.helpers import alive
from tests.integration.conftest import running_llama_server

pytestmark = pytest.mark.llama


async def test_llama_server_serves_chat_and_embeddings(
    llama_bin: Path, default_model: Path
) -> None:
    async with running_llama_server(llama_bin, default_model) as server:
        chat = await server.post(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8},
        )
        choice = chat["choices"][0]  # type: ignore[index]
        assert isinstance(choice["message"]["content"], str)
        assert 1 <= chat["usage"]["completion_tokens"] <= 8  # type: ignore[index]
        embedded = await server.post("/v1/embeddings", {"input": "hello world"})
        vector = embedded["data"][0]["embedding"]  # type: ignore[index]
        assert len(vector) == 640  # the default model's n_embd
        assert any(v != 0 for v in vector)
        pid = server.child.pid
    assert not alive(pid)


async def test_llama_server_renders_the_gemma_template(
    llama_bin: Path, default_model: Path
) -> None:
    """Evidence for `--no-jinja --chat-template gemma` over the chatml fallback: gemma's turn
    markers are single special tokens of this vocabulary; chatml's are plain text."""
    messages = [{"role": "user", "content": "hi"}]
    async with running_llama_server(llama_bin, default_model) as server:
        rendered = await server.post("/apply-template", {"messages": messages})
        assert rendered["prompt"] == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
        gemma = await server.post("/tokenize", {"content": "<start_of_turn><end_of_turn>"})
        chatml = await server.post("/tokenize", {"content": "<|im_start|><|im_end|>"})
    assert len(gemma["tokens"]) == 2  # type: ignore[arg-type]
    assert len(chatml["tokens"]) > 6  # type: ignore[arg-type]


def test_llama_completion_prints_only_the_generated_text(
    llama_bin: Path, default_model: Path, tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The capital of France is")
    argv = [
        str(llama_bin / "llama-completion"), "-m", str(default_model), "-f", str(prompt),
        "-n", "16", "-c", "512", "--temp", "0", "-no-cnv", "--no-display-prompt",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
    assert "The capital of France is" not in done.stdout


def test_doctor_lists_the_real_binaries_and_model() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "doctor"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for name in toolchain.BINARIES:
        shown = "no --version" if name == "rpc-server" else "version:"
        assert any(
            line.split()[:2] == ["ok", name] and shown in line for line in done.stdout.splitlines()
        ), done.stdout
    assert toolchain.DEFAULT_MODEL_FILE in done.stdout


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "  Be brief.\n"},
        {"role": "user", "content": "What is 2+2?  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "\tAnd 3+3?"},
    ],
    [{"role": "system", "content": "sys"}, {"role": "assistant", "content": "a"}],
]


@pytest.mark.parametrize("template", ["gemma", "chatml"])
async def test_cli_rendering_matches_llama_server_apply_template(
    llama_bin: Path, default_model: Path, template: str
) -> None:
    async with running_llama_server(llama_bin, default_model, chat_template=template) as server:
        for messages in CONVERSATIONS:
            rendered = await server.post("/apply-template", {"messages": messages})
            parsed = [
                msgspec.convert(m | {"content": [{"type": "text", "text": m["content"]}]}, Message)
                for m in messages
            ]
            assert render_chat(template, parsed, default_model) == rendered["prompt"], messages
