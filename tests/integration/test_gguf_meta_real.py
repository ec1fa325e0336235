"""GGUF metadata of real models, and the memory estimate against a real llama-server's RSS."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends import toolchain
from backends.gguf_meta import estimate_mb, read_meta
from core.config import cache_dir
from supervisor.process import resident_mb
from tests.integration.conftest import running_llama_server

pytestmark = pytest.mark.llama

# A second real model with its own chat template; another setup step puts it in the cache.
SMOLLM2 = cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# running_llama_server's context and ubatch (it serves embeddings too).
CTX_SIZE, UBATCH = 2048, 512

# ~400 tokens: under the ubatch, which an embedding input must fit in.
LONG = "The quick brown fox jumps over the lazy dog. " * 40


def smollm2() -> Path:
    if not SMOLLM2.is_file():
        pytest.skip(f"{SMOLLM2} is not in the cache")
    return SMOLLM2


def test_read_meta_of_the_default_model(default_model: Path) -> None:
    meta = read_meta(default_model)
    assert (meta.architecture, meta.embedding_length, meta.chat_template) == ("gemma3", 640, None)
    assert meta.version == 3 and meta.tensor_count > 0
    assert meta.block_count and meta.head_count_kv and meta.key_length and meta.value_length
    assert (meta.bos_token, meta.eos_token) == ("<bos>", "<eos>")
    assert (meta.vocab_size, meta.add_bos_token, meta.add_eos_token) == (262144, True, False)


def test_read_meta_of_smollm2() -> None:
    meta = read_meta(smollm2())
    assert (meta.architecture, meta.embedding_length) == ("llama", 576)
    assert meta.chat_template is not None and "<|im_start|>" in meta.chat_template
    assert (meta.context_length, meta.vocab_size, meta.add_bos_token) == (8192, 49152, False)


@pytest.mark.parametrize("which", ["default", "smollm2"])
async def test_estimate_mb_covers_a_real_llama_server(
    which: str, default_model: Path, llama_bin: Path, cache: Path
) -> None:
    model = default_model if which == "default" else smollm2()
    mmproj = toolchain.default_mmproj_path(cache) if which == "default" else None
    async with running_llama_server(llama_bin, model, mmproj=mmproj) as server:
        # What costs memory: a long prompt, and a long embedding (with --embeddings every
        # token's logits are kept: ~1 GiB for the default model's vocabulary at ubatch 512).
        await server.post("/completion", {"prompt": LONG, "n_predict": 8})
        await server.post("/v1/embeddings", {"input": LONG})
        measured = resident_mb(server.child.pid)
    estimate = estimate_mb(model, mmproj, CTX_SIZE, ubatch_size=UBATCH, embeddings=True)
    print(f"{model.name}: estimate {estimate} MiB, measured RSS {measured} MiB")
    assert measured is not None
    assert measured <= estimate < 3 * measured
