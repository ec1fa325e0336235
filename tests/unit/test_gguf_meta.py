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
import pytest

from backends import gguf_meta
from backends.gguf_meta import (
    COMPUTE_ALLOWANCE_MB,
    GgufMeta,
    NotGguf,
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
    ],
)
def test_kv_cache_bytes(changes: dict[str, Any], ctx_size: int, expected: int) -> None:
    meta = msgspec.structs.replace(GEMMA_270M, **changes)
    assert kv_cache_bytes(meta, ctx_size) == expected


GQA: dict[str, Any] = {"block_count": 4, "head_count": 8, "head_count_kv": 2}  # heads of 80


@pytest.mark.parametrize(
    ("options", "ctx_size", "mmproj", "ubatch", "embeddings", "kv", "logits"),
    [
        ({}, 4096, False, 1024, False, 0, 0),
        ({}, 4096, False, 1024, True, 0, 8 * 1024 * 2),  # the stub's 2 tokens
        (GQA, 12192, False, 1024, False, 2 * 12288 * 4 * 2 * (80 + 80), 0),
        (GQA, 12192, True, 1024, False, 2 * 12288 * 4 * 2 * (80 + 80), 0),
        # gemma-3-270m's vocabulary: 2 GiB of embeddings logits at ubatch 1024
        (GQA | {"vocab_size": 262144}, 12192, True, 1024, True,
         2 * 12288 * 4 * 2 * (80 + 80), 8 * 1024 * 262144),
        ({"block_count": 30, "head_count": 9, "head_count_kv": 3, "embedding_length": 576,
          "vocab_size": 49152}, 8192, True, 512, True,
         2 * 8192 * 30 * 3 * (64 + 64), 8 * 512 * 49152),
    ],
)  # fmt: skip
def test_estimate_mb_adds_files_kv_logits_and_the_allowance(
    tmp_path: Path,
    options: dict[str, Any],
    ctx_size: int,
    mmproj: bool,
    ubatch: int,
    embeddings: bool,
    kv: int,
    logits: int,
) -> None:
    model = write(tmp_path, gguf_bytes(**options))
    projector = write(tmp_path, gguf_bytes(arch="clip", tensors=40), "mmproj.gguf")
    files = model.stat().st_size + (projector.stat().st_size if mmproj else 0)
    expected = math.ceil((files + kv + logits) / 2**20) + COMPUTE_ALLOWANCE_MB
    estimate = estimate_mb(
        model, projector if mmproj else None, ctx_size, ubatch_size=ubatch, embeddings=embeddings
    )
    assert estimate == expected


def test_estimate_mb_defaults_to_the_configs_ubatch_with_embeddings(tmp_path: Path) -> None:
    model = write(tmp_path, gguf_bytes(**GQA, vocab_size=49152))
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
