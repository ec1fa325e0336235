from __future__ import annotations

import struct
from pathlib import Path

import pytest

from backends.gguf_header import NotGguf, read_gguf


def gguf_bytes(version: int = 3) -> bytes:
    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    kvs = [
        string("general.architecture") + struct.pack("<I", 8) + string("gemma3"),
        string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + string("a") + string("b"),
        string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 2) + struct.pack("<ff", 1, 2),
        string("gemma3.embedding_length") + struct.pack("<II", 4, 640),
    ]
    return b"GGUF" + struct.pack("<IQQ", version, 7, len(kvs)) + b"".join(kvs)


def test_read_gguf_reads_scalars_and_skips_arrays(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes())
    info = read_gguf(path)
    assert (info.version, info.tensor_count) == (3, 7)
    assert info.metadata == {"general.architecture": "gemma3", "gemma3.embedding_length": 640}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "bad magic"),
        (b"PK\x03\x04" + bytes(40), "bad magic"),
        (gguf_bytes(version=9), "unsupported GGUF version 9"),
        (gguf_bytes()[:30], "file ends inside its header"),
    ],
)
def test_read_gguf_rejects_non_models(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(NotGguf, match=why):
        read_gguf(path)
