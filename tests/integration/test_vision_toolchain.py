"""The synthetic projector works with the real llama-mtmd-cli and llama-server --mmproj, and the
image really reaches the model."""

from __future__ import annotations

import base64
import io
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from backends import toolchain
from tests.integration.conftest import running_llama_server

pytestmark = pytest.mark.llama


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (28, 28), colour).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="session")
def mmproj(cache: Path) -> Path:
    return toolchain.resolve_model("mmproj", None, cache)


def test_llama_mtmd_cli_describes_an_image(
    llama_bin: Path, default_model: Path, mmproj: Path, tmp_path: Path
) -> None:
    image = tmp_path / "red.png"
    image.write_bytes(png((255, 0, 0)))
    argv = [
        str(llama_bin / "llama-mtmd-cli"), "-m", str(default_model), "--mmproj", str(mmproj),
        "--image", str(image), "-p", "Describe the image.", "-n", "8", "--temp", "0",
        "--no-jinja", "--chat-template", "gemma",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "encoding mtmd batch" in done.stderr  # the image went through the projector
    assert done.stdout.strip(), done.stdout


async def test_llama_server_mmproj_sees_different_images(
    llama_bin: Path, default_model: Path, mmproj: Path
) -> None:
    firsts = []
    async with running_llama_server(llama_bin, default_model, mmproj=mmproj) as server:
        for colour in ((255, 0, 0), (0, 0, 255)):
            url = "data:image/png;base64," + base64.b64encode(png(colour)).decode()
            content = [
                {"type": "text", "text": "What colour is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ]
            answer = await server.post(
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": content}], "max_tokens": 1,
                 "temperature": 0, "logprobs": True, "top_logprobs": 5, "cache_prompt": False},
            )  # fmt: skip
            firsts.append(answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"])  # type: ignore[index]
    # With temperature 0, only the image differs: the model's first-token view must too.
    assert firsts[0] != firsts[1]
