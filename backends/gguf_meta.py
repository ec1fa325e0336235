"""What a GGUF file says about its model, read with the format's official `gguf` package, and
how much memory a llama-server running it will take.

`read_meta` memory-maps the file and reads only the metadata key/values (never tensor data);
a result is cached per file and version, so asking again is a stat. `estimate_mb` adds the
file sizes, the KV cache llama.cpp allocates for a context and a measured allowance for the
compute buffers; `supervisor.process.resident_mb` is what a running process really holds.
"""

from __future__ import annotations

import functools
import math
import os
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import numpy.typing as npt
    from gguf import GGUFReader, GGUFValueType, ReaderField

MIB = 2**20

# llama.cpp allocates the KV cache in cells padded to 256 (`-c 12192` serves n_ctx 12288).
CTX_PAD = 256

# K and V are f16 by default (--cache-type-k/-v f16).
KV_BYTES_PER_VALUE = 2

# What a llama-server holds beyond its files, its KV cache and its embeddings outputs (below):
# compute buffers, the binary and its libraries, the HTTP server and its 4 slots. Measured
# (VmRSS after a short and a 1500-token completion, 4 such in parallel, 242- and 962-token
# embeddings, 4 of those in parallel; -c 12192 -b 8192 -ub 1024): 97 MiB for gemma-3-270m
# without embeddings, 152 with them (and the synthetic projector), 210 for SmolLM2-135M with
# them. 256 leaves ~20% over the largest. Compute buffers grow with n_embd and ubatch:
# a much wider model needs more than this.
COMPUTE_ALLOWANCE_MB = 256

# With --embeddings, every token of a ubatch is an output: llama.cpp computes its logits
# (ubatch x n_vocab f32) in the compute buffer and keeps a copy in its output buffer. Measured:
# one 962-token embedding grew gemma-3-270m's RSS by 1921 MiB (962 x 262144 x 8 B = 1924),
# SmolLM2-135M's by 376 (961 x 49152 x 8 B = 360). The largest buffer of them all.
EMBEDDINGS_OUTPUT_BYTES_PER_LOGIT = 2 * 4

# llama.cpp's defaults, and the config's (LlmParams.ubatch_size, ModelConfig.embeddings).
DEFAULT_UBATCH = 1024


class GgufMeta(msgspec.Struct, frozen=True, kw_only=True):
    """The metadata of a GGUF model that sizing and prompting need; None where the file does
    not say (and no default applies)."""

    architecture: str
    name: str | None
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    context_length: int | None
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    tensor_count: int
    version: int
    vocab_size: int | None = None  # {arch}.vocab_size, else the length of tokenizer.ggml.tokens
    # tokenizer.ggml.add_bos_token / add_eos_token: whether the tokenizer adds them itself
    # (None: the file does not say; llama.cpp then goes by the tokenizer type).
    add_bos_token: bool | None = None
    add_eos_token: bool | None = None


class NotGguf(ValueError):
    """The file is not a GGUF that can be read (the message names the path and why)."""


# Metadata by (st_dev, st_ino, st_mtime_ns, st_size): the file itself, not how its path is
# spelled. One stat instead of resolving the path, which costs far more (BENCHMARKS.md); a file
# rewritten in place gets a new mtime, one replaced by a rename a new inode: both are read again.
_CACHE: dict[tuple[int, int, int, int], GgufMeta] = {}
_CACHE_SIZE = 64


def read_meta(path: str | Path) -> GgufMeta:
    """The metadata of the GGUF file at `path` (through symlinks). Cached per file and
    version: a second call is a stat and a dict lookup. Raises NotGguf for a missing,
    unreadable or non-GGUF file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise NotGguf(f"{path}: {exc.strerror or exc}") from exc
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    if (meta := _CACHE.get(key)) is None:
        meta = _read_meta(Path(path))
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)), None)  # the oldest (None: another thread's race)
        _CACHE[key] = meta
    return meta


def _read_meta(path: Path) -> GgufMeta:
    try:
        reader = _reader_type()(path)
        return _meta(reader)
    except NotGguf as exc:
        raise NotGguf(f"{path}: {exc}") from None
    except (OSError, ValueError, IndexError, KeyError, struct.error) as exc:
        raise NotGguf(f"{path} is not a readable GGUF file: {exc}") from exc


@functools.cache
def _reader_type() -> type[GGUFReader]:
    """`gguf.GGUFReader`, made cheap for metadata. Built on first use: importing gguf (and
    numpy) costs ~19 MiB, which a gateway that never sizes a model should not pay."""
    import gguf
    import numpy as np

    class MetaReader(gguf.GGUFReader):
        """Skips over an array value instead of making a numpy view per item: gemma-3-270m's
        262144 tokens, scores and token types took 31 s to read on this project's 2 cores.
        An array field keeps its item type and count (parts end [item type, count], data is
        empty); `_array` reads items on demand. Tensor descriptors are not built: nothing
        here uses them, and gguf's table of tensor types trails llama.cpp's, so a file with a
        newer quant type would be unreadable for no reason; the count comes from the header."""

        def _get_field_parts(
            self, orig_offs: int, raw_type: int
        ) -> tuple[int, list[npt.NDArray[Any]], list[int], list[GGUFValueType]]:
            if raw_type != gguf.GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype, count = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
            itype, n, start = gguf.GGUFValueType(raw_itype[0]), int(count[0]), orig_offs + 12
            if itype == gguf.GGUFValueType.STRING:
                end = _skip_strings(self.data.data, start, n, _order(self))
            elif (scalar := self.gguf_scalar_to_np.get(itype)) is not None:
                end = start + n * np.dtype(scalar).itemsize
            else:  # an array of arrays: rare, and small where it occurs
                return super()._get_field_parts(orig_offs, raw_type)
            if end > len(self.data):
                raise ValueError(f"an array of {n} items runs past the end of the file")
            return end - orig_offs, [raw_itype, count], [], [gguf.GGUFValueType.ARRAY, itype]

        def _build_tensors(self, start_offs: int, fields: list[ReaderField]) -> None:
            pass

    return MetaReader


def _order(reader: GGUFReader) -> str:
    """The struct byte order of `reader`'s file ("I": the host's, "S": swapped)."""
    if reader.byte_order == "I":
        return "="
    return ">" if sys.byteorder == "little" else "<"


def _skip_strings(data: memoryview, offs: int, count: int, order: str) -> int:
    """The offset after `count` GGUF strings (u64 length + bytes) starting at `offs`."""
    length = struct.Struct(order + "Q").unpack_from
    for _ in range(count):
        offs += 8 + length(data, offs)[0]
    return offs


def _meta(reader: GGUFReader) -> GgufMeta:
    def get(key: str) -> object:
        field = reader.fields.get(key)
        return None if field is None else _value(reader, field)

    arch = get("general.architecture")
    if not isinstance(arch, str):
        raise NotGguf("no general.architecture")
    embd, heads = _int(get(f"{arch}.embedding_length")), _int(get(f"{arch}.attention.head_count"))
    head_dim = embd // heads if embd and heads else None
    return GgufMeta(
        architecture=arch,
        name=_str(get("general.name")),
        block_count=_int(get(f"{arch}.block_count")),
        embedding_length=embd,
        head_count=heads,
        head_count_kv=_int(get(f"{arch}.attention.head_count_kv")) or heads,
        key_length=_int(get(f"{arch}.attention.key_length")) or head_dim,
        value_length=_int(get(f"{arch}.attention.value_length")) or head_dim,
        context_length=_int(get(f"{arch}.context_length")),
        chat_template=_str(get("tokenizer.chat_template")),
        bos_token=_token(reader, "tokenizer.ggml.bos_token_id"),
        eos_token=_token(reader, "tokenizer.ggml.eos_token_id"),
        tensor_count=_int(get("GGUF.tensor_count")) or 0,
        version=_int(get("GGUF.version")) or 0,
        vocab_size=_int(get(f"{arch}.vocab_size")) or _vocab_size(reader),
        add_bos_token=_bool(get("tokenizer.ggml.add_bos_token")),
        add_eos_token=_bool(get("tokenizer.ggml.add_eos_token")),
    )


def _vocab_size(reader: GGUFReader) -> int | None:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return None if tokens is None or tokens.data else _array(tokens)[1]


def _value(reader: GGUFReader, field: ReaderField) -> object:
    """A field as a Python value: a scalar or a string as is; a numeric array as its largest
    item (per-layer values such as head_count_kv of some architectures: the largest sizes
    the cache safely; None if empty); a string array as None (see `_string_item`).

    A scalar is `parts[data[0]]`, the reader's raw layout in every gguf release this project
    allows (`ReaderField.contents()` only arrived after 0.10)."""
    import numpy as np
    from gguf import GGUFValueType

    if field.types[0] == GGUFValueType.ARRAY:
        if field.data or field.types[-1] == GGUFValueType.STRING:
            return None  # an array of arrays, or strings
        start, count = _array(field)
        scalar = np.dtype(reader.gguf_scalar_to_np[field.types[-1]]).newbyteorder(reader.byte_order)
        items = np.frombuffer(reader.data, scalar, count, offset=start)
        largest: int | float | None = items.max().item() if count else None
        return largest
    part = field.parts[field.data[0]]
    if field.types[0] == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", "replace")
    scalar_value: int | float = part.tolist()[0]
    return scalar_value


def _array(field: ReaderField) -> tuple[int, int]:
    """Where a skipped array's items start in the file, and how many there are. Its parts
    are key length, key, value type, item type, count; the items follow them."""
    return field.offset + sum(int(p.nbytes) for p in field.parts), int(field.parts[-1][0])


def _string_item(reader: GGUFReader, field: ReaderField, index: int) -> str | None:
    start, count = _array(field)
    if not 0 <= index < count:
        return None
    offs = _skip_strings(reader.data.data, start, index, _order(reader))
    (length,) = struct.unpack_from(_order(reader) + "Q", reader.data.data, offs)
    return bytes(reader.data[offs + 8 : offs + 8 + length]).decode("utf-8", "replace")


def _token(reader: GGUFReader, id_key: str) -> str | None:
    token_id, tokens = reader.fields.get(id_key), reader.fields.get("tokenizer.ggml.tokens")
    if token_id is None or tokens is None or tokens.data:
        return None
    index = _int(_value(reader, token_id))
    return None if index is None else _string_item(reader, tokens, index)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def padded_ctx(ctx_size: int) -> int:
    """The context llama.cpp really allocates: `ctx_size` rounded up to a multiple of 256."""
    return -(-ctx_size // CTX_PAD) * CTX_PAD


def kv_cache_bytes(meta: GgufMeta, ctx_size: int) -> int:
    """Bytes of an f16 K and V cache of `ctx_size` (padded) cells; 0 if a dimension is unknown.

    An upper bound for models with sliding-window layers (Gemma 3), whose SWA layers llama.cpp
    gives a smaller cache."""
    dims = (meta.block_count, meta.head_count_kv, meta.key_length, meta.value_length)
    if any(d is None for d in dims):
        return 0
    layers, kv_heads, k, v = (d or 0 for d in dims)
    return KV_BYTES_PER_VALUE * padded_ctx(ctx_size) * layers * kv_heads * (k + v)


def embeddings_output_bytes(meta: GgufMeta, ubatch_size: int) -> int:
    """Bytes of the logits a llama-server with --embeddings keeps for a full ubatch (every
    token is an output); 0 if the vocabulary size is unknown."""
    return EMBEDDINGS_OUTPUT_BYTES_PER_LOGIT * ubatch_size * (meta.vocab_size or 0)


def estimate_mb(
    model: str | Path,
    mmproj: str | Path | None,
    ctx_size: int,
    *,
    ubatch_size: int = DEFAULT_UBATCH,
    embeddings: bool = True,
) -> int:
    """MiB a llama-server on `model` (and `mmproj`) with `ctx_size` is expected to hold at
    most: model file + KV cache + projector file + (with `embeddings`) the logits of a full
    ubatch + COMPUTE_ALLOWANCE_MB, rounded up. Raises NotGguf for a file that is not a GGUF.

    Embeddings cost the most: gemma-3-270m's 262144-token vocabulary makes them 2 GiB at
    ubatch 1024 — an upper bound reached by one long /v1/embeddings request, not by chat."""
    meta = read_meta(model)
    total = _file_size(model) + kv_cache_bytes(meta, ctx_size)
    if embeddings:
        total += embeddings_output_bytes(meta, ubatch_size)
    if mmproj is not None:
        read_meta(mmproj)  # a projector that is no GGUF is an error here, not at load time
        total += _file_size(mmproj)
    return math.ceil(total / MIB) + COMPUTE_ALLOWANCE_MB


def _file_size(path: str | Path) -> int:
    return os.stat(path).st_size
