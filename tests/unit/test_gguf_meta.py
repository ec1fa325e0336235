from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import msgspec
import numpy as np
import pytest

from backends import gguf_meta
from backends.gguf_meta import (
    MARGIN,
    RUNTIME_BASE_BYTES,
    RUNTIME_BYTES_PER_TOKEN,
    GgufMeta,
    NotGguf,
    estimate,
    estimate_mb,
    kv_cache_bytes,
    read_meta,
)
from supervisor.process import resident_mb
from tests.helpers import gguf_bytes

GEMMA_270M = GgufMeta(
    architecture="gemma3",
    name=None,
    block_count=18,
    embedding_length=640,
    head_count=4,
    head_count_kv=1,
    key_length=256,
    value_length=256,
    context_length=32768,
    chat_template=None,
    bos_token=None,
    eos_token=None,
    tensor_count=236,
    version=3,
)


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_read_meta_reads_the_model_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        gguf_bytes(
            arch="llama", name="Tiny", block_count=30, embedding_length=576, head_count=9,
            head_count_kv=3, key_length=80, value_length=48, context_length=8192,
            chat_template="{{ messages }}", add_bos_token=True, tokens=("<s>", "</s>", "x"),
        ),
    )  # fmt: skip
    assert read_meta(path) == GgufMeta(
        architecture="llama",
        name="Tiny",
        block_count=30,
        embedding_length=576,
        head_count=9,
        head_count_kv=3,
        key_length=80,
        value_length=48,
        context_length=8192,
        chat_template="{{ messages }}",
        bos_token="<s>",  # noqa: S106 - a token, not a password
        eos_token="</s>",  # noqa: S106
        tensor_count=7,
        version=3,
        vocab_size=3,
        add_bos_token=True,
        add_eos_token=None,
    )


def test_read_meta_defaults_kv_heads_and_head_dims(tmp_path: Path) -> None:
    meta = read_meta(write(tmp_path, gguf_bytes(embedding_length=640, head_count=4)))
    assert (meta.head_count_kv, meta.key_length, meta.value_length) == (4, 160, 160)


def test_read_meta_leaves_unknown_fields_none(tmp_path: Path) -> None:
    meta = read_meta(write(tmp_path, gguf_bytes(embedding_length=None, tokens=(), tensors=0)))
    assert meta.architecture == "gemma3"
    assert (meta.block_count, meta.head_count_kv, meta.key_length) == (None, None, None)
    assert meta.bos_token is None
    assert meta.tensor_count == 0


def test_read_meta_takes_the_largest_of_per_layer_kv_heads(tmp_path: Path) -> None:
    meta = read_meta(write(tmp_path, gguf_bytes(head_count=8, head_count_kv=[2, 4, 2])))
    assert meta.head_count_kv == 4


def version_9() -> bytes:
    data = gguf_bytes()
    return data[:4] + struct.pack("<I", 9) + data[8:]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not a readable GGUF"),
        (b"PK\x03\x04" + bytes(40), "magic"),
        (version_9(), "version 9"),
        (gguf_bytes()[:30], "not a readable GGUF"),
        (gguf_bytes()[:200], "not a readable GGUF"),
        (gguf_bytes()[:300], "not a readable GGUF"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 0), "no general.architecture"),
    ],
)
def test_read_meta_rejects_non_models(tmp_path: Path, data: bytes, why: str) -> None:
    path = write(tmp_path, data, "bad.gguf")
    with pytest.raises(NotGguf, match=why) as caught:
        read_meta(path)
    assert str(path) in str(caught.value)


def test_read_meta_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotGguf, match=r"gone\.gguf"):
        read_meta(tmp_path / "gone.gguf")


def test_read_meta_caches_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real = gguf_meta._reader_type()

    def counting(path: str | os.PathLike[str]) -> gguf.GGUFReader:
        opened.append(str(path))
        return real(path)

    monkeypatch.setattr(gguf_meta, "_reader_type", lambda: counting)
    path = write(tmp_path, gguf_bytes(block_count=2))
    first = read_meta(path)
    assert read_meta(str(path)) is first
    assert read_meta(tmp_path / "." / "m.gguf") is first
    (tmp_path / "link.gguf").symlink_to(path)
    assert read_meta(tmp_path / "link.gguf") is first
    assert len(opened) == 1
    path.write_bytes(gguf_bytes(block_count=3))
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
    assert read_meta(path).block_count == 3
    assert len(opened) == 2


@pytest.mark.parametrize(
    ("changes", "ctx_size", "expected"),
    [
        # gemma-3-270m: 2 B x 12288 cells x 18 layers x 1 KV head x (256 + 256)
        ({}, 12192, 2 * 12288 * 18 * 1 * 512),
        ({}, 12288, 2 * 12288 * 18 * 1 * 512),
        ({}, 2048, 2 * 2048 * 18 * 1 * 512),
        ({}, 1, 2 * 256 * 18 * 1 * 512),
        ({}, 257, 2 * 512 * 18 * 1 * 512),
        ({"head_count_kv": 4, "key_length": 64, "value_length": 32}, 512, 2 * 512 * 18 * 4 * 96),
        ({"block_count": None}, 4096, 0),
        ({"head_count_kv": None}, 4096, 0),
        ({"key_length": None}, 4096, 0),
        ({"value_length": None}, 4096, 0),
        # Gemma 3's sliding window (512): 3 of 18 layers full, 15 with 512 x 4 slots + a
        # ubatch (1024) cells, when that is less than the context (llama.cpp's log: 36 + 45 MiB)
        ({"sliding_window": 512}, 12192, 2 * (3 * 12288 + 15 * 3072) * 1 * 512),
        ({"sliding_window": 512}, 4096, 2 * (3 * 4096 + 15 * 3072) * 1 * 512),
        ({"sliding_window": 512}, 2048, 2 * 18 * 2048 * 1 * 512),
        # the file's own pattern: 1 full layer in 4 (18 / 4 rounded up: 5)
        ({"sliding_window": 512, "sliding_window_pattern": 4}, 12192,
         2 * (5 * 12288 + 13 * 3072) * 1 * 512),
        # a window on an architecture whose pattern llama.cpp keeps in code not known here:
        # every layer full, an upper bound
        ({"sliding_window": 512, "architecture": "newarch"}, 12192, 2 * 18 * 12288 * 1 * 512),
    ],
)  # fmt: skip
def test_kv_cache_bytes(changes: dict[str, Any], ctx_size: int, expected: int) -> None:
    meta = msgspec.structs.replace(GEMMA_270M, **changes)
    assert kv_cache_bytes(meta, ctx_size) == expected


def model_gguf(tmp_path: Path, arch: str = "llama", **keys: Any) -> Path:
    """A stub model with the header keys the estimate reads, written by gguf.GGUFWriter:
    SmolLM2-135M's by default (llama: 30 layers, n_embd 576, 9 heads of 64, 3 KV heads,
    n_ff 1536, 49152 tokens, trained at 8192), `keys` overriding them."""
    header: dict[str, Any] = {
        "block_count": 30, "embedding_length": 576, "head_count": 9, "head_count_kv": 3,
        "feed_forward_length": 1536, "context_length": 8192, "vocab_size": 49152,
    } | keys  # fmt: skip
    path = tmp_path / f"{arch}.gguf"
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for key, value in header.items():
        getattr(writer, f"add_{key}")(value)
    writer.add_tensor("stub.weight", np.zeros(1, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def mib(total: int) -> int:
    return math.ceil(total * (1 + MARGIN) / 2**20)


SMOLLM2_RUNTIME = RUNTIME_BASE_BYTES + RUNTIME_BYTES_PER_TOKEN * 49152


def test_estimate_of_a_chat_model_has_no_embeddings_outputs(tmp_path: Path) -> None:
    """Without --embeddings only each slot's last token has logits: 4 x 49152 f32, and the
    compute buffer holds a ubatch's activations and attention mask, no logits (llama.cpp
    reports 51 MiB at 12288 cells and ubatch 1024). Before: 256 MiB for all of that."""
    model = model_gguf(tmp_path)
    parts = estimate(model, None, 12192, ubatch_size=1024, embeddings=False)
    assert parts.outputs == 4 * 4 * 49152
    assert parts.compute == 1024 * (4 * (3 * 1536 + 4 * 576) + 2 * 12288) == 51 * 2**20
    kv = 2 * 12288 * 30 * 3 * (64 + 64)
    assert parts.kv_cache == kv
    files = model.stat().st_size
    assert estimate_mb(model, None, 12192, embeddings=False) == mib(
        files + kv + 4 * 4 * 49152 + 51 * 2**20 + SMOLLM2_RUNTIME
    )


def test_estimate_of_an_embeddings_model_adds_a_ubatch_of_logits(tmp_path: Path) -> None:
    """With --embeddings every token of a ubatch is an output: its logits and embedding in
    the output buffer, its logits in the compute buffer too."""
    model = model_gguf(tmp_path)
    chat = estimate(model, None, 4096, ubatch_size=512, embeddings=False)
    both = estimate(model, None, 4096, ubatch_size=512, embeddings=True)
    assert both.outputs == 4 * 512 * (49152 + 576)
    assert both.compute - chat.compute == 4 * 512 * 49152
    assert (both.files, both.kv_cache, both.runtime) == (chat.files, chat.kv_cache, chat.runtime)


def test_estimate_counts_the_configured_context_above_the_trained_one(tmp_path: Path) -> None:
    """A model trained at 8192 started with -c 12192: llama-server caps each slot at 8192,
    but allocates (and clears, so it is resident) the whole 12288-cell KV pool, measured:
    RssAnon 300 MB at -c 12192 against 208 at -c 8192."""
    model = model_gguf(tmp_path)
    assert read_meta(model).context_length == 8192
    parts = estimate(model, None, 12192, embeddings=False)
    assert parts.kv_cache == 2 * 12288 * 30 * 3 * 128
    assert parts.kv_cache > estimate(model, None, 8192, embeddings=False).kv_cache


def test_estimate_of_a_sliding_window_model(tmp_path: Path) -> None:
    """gemma-3-270m's shape: 3 of 18 layers keep the context, 15 a window (36 + 45 MiB at
    -c 12192, llama.cpp's own figures); its masks cover both kinds of cells."""
    model = model_gguf(
        tmp_path, "gemma3", block_count=18, embedding_length=640, head_count=4,
        head_count_kv=1, key_length=256, value_length=256, feed_forward_length=2048,
        context_length=32768, vocab_size=262144, sliding_window=512,
    )  # fmt: skip
    assert read_meta(model).sliding_window == 512
    parts = estimate(model, None, 12192, ubatch_size=1024, embeddings=False)
    assert parts.kv_cache == (36 + 45) * 2**20
    assert parts.compute == 1024 * (4 * (3 * 2048 + 4 * 1024) + 2 * (12288 + 3072))


def test_estimate_counts_a_projector_twice(tmp_path: Path) -> None:
    model = model_gguf(tmp_path)
    projector = write(tmp_path, gguf_bytes(arch="clip", tensors=40), "mmproj.gguf")
    alone = estimate(model, None, 4096)
    assert estimate(model, projector, 4096).files == alone.files + 2 * projector.stat().st_size


def test_estimate_counts_the_prompt_cache_it_is_given(tmp_path: Path) -> None:
    model = model_gguf(tmp_path)
    without = estimate(model, None, 4096)
    assert without.prompt_cache == 0
    assert estimate(model, None, 4096, cache_ram_mb=100).mb == mib(
        without.files + without.kv_cache + without.outputs + without.compute
        + without.runtime + 100 * 2**20
    )  # fmt: skip


def test_estimate_mb_defaults_to_the_configs_ubatch_with_embeddings(tmp_path: Path) -> None:
    model = model_gguf(tmp_path)
    assert estimate_mb(model, None, 4096) == estimate_mb(
        model, None, 4096, ubatch_size=1024, embeddings=True
    )


def test_read_meta_vocab_size_is_the_key_else_the_token_count(tmp_path: Path) -> None:
    assert read_meta(write(tmp_path, gguf_bytes(tokens=("a", "b", "c")), "a.gguf")).vocab_size == 3
    explicit = gguf_bytes(tokens=("a", "b", "c"), vocab_size=5)
    assert read_meta(write(tmp_path, explicit, "b.gguf")).vocab_size == 5
    assert read_meta(write(tmp_path, gguf_bytes(tokens=()), "c.gguf")).vocab_size is None


def test_estimate_mb_rejects_a_projector_that_is_no_gguf(tmp_path: Path) -> None:
    model = write(tmp_path, gguf_bytes())
    with pytest.raises(NotGguf, match=r"mmproj\.gguf"):
        estimate_mb(model, write(tmp_path, b"not a model", "mmproj.gguf"), 4096)


def test_resident_mb_of_a_live_and_a_gone_process() -> None:
    mine = resident_mb(os.getpid())
    assert mine is not None and 5 < mine < 4096
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert resident_mb(child.pid) is None
