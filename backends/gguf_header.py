"""A quick, llama-free look at a GGUF file: header and the first scalar metadata.

Enough for `ai-server doctor` to say whether a file is a model llama.cpp can open, and
what it is, without loading it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import msgspec

MAGIC = b"GGUF"

# GGUF value types -> struct format of fixed-size scalars (8 = string, 9 = array).
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9

Scalar = int | float | bool | str


class GgufInfo(msgspec.Struct, frozen=True):
    version: int
    tensor_count: int
    metadata: dict[str, Scalar]


class NotGguf(ValueError):
    pass


def _read(f: BinaryIO, fmt: str) -> tuple[object, ...]:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise NotGguf("file ends inside its header")
    return struct.unpack(fmt, data)


def _read_str(f: BinaryIO) -> str:
    (length,) = _read(f, "<Q")
    assert isinstance(length, int)
    if length > 1 << 20:
        raise NotGguf("implausible string length in header")
    data = f.read(length)
    if len(data) != length:
        raise NotGguf("file ends inside its header")
    return data.decode("utf-8", "replace")


def _read_value(f: BinaryIO, kind: int) -> Scalar | None:
    if kind in _SCALARS:
        (value,) = _read(f, "<" + _SCALARS[kind])
        assert isinstance(value, int | float | bool)
        return value
    if kind == _STRING:
        return _read_str(f)
    if kind == _ARRAY:
        item_kind, count = _read(f, "<IQ")
        assert isinstance(item_kind, int) and isinstance(count, int)
        if item_kind in _SCALARS:
            f.seek(count * struct.calcsize("<" + _SCALARS[item_kind]), 1)
        else:
            for _ in range(count):
                _read_value(f, item_kind)
        return None
    raise NotGguf(f"unknown metadata type {kind}")


def read_gguf(path: Path, *, max_keys: int = 64) -> GgufInfo:
    """Read the header and the scalar values among the first `max_keys` metadata keys."""
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            raise NotGguf(f"{path} is not a GGUF file (bad magic)")
        version, tensors, n_kv = _read(f, "<IQQ")
        assert isinstance(version, int) and isinstance(tensors, int) and isinstance(n_kv, int)
        if version not in (2, 3):
            raise NotGguf(f"{path}: unsupported GGUF version {version}")
        metadata: dict[str, Scalar] = {}
        for _ in range(min(n_kv, max_keys)):
            key = _read_str(f)
            (kind,) = _read(f, "<I")
            assert isinstance(kind, int)
            value = _read_value(f, kind)
            if value is not None:
                metadata[key] = value
    return GgufInfo(version=version, tensor_count=tensors, metadata=metadata)
