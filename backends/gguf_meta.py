"""What a GGUF file says about its model, read with the format's official `gguf` package, and
how much memory a llama-server running it will take.

`read_meta` memory-maps the file and reads only the metadata key/values (never tensor data);
a result is cached per file and version, so asking again is a stat. `estimate` sizes, part
by part, what llama.cpp allocates for a llama-server started as the pool starts it (its
context, its ubatch, whether it serves embeddings), at its peak: the pool charges it before a
load, and bench/memory.py sets it against the measured peaks.
`supervisor.process.resident_mb` is what a running process really holds.
"""

from __future__ import annotations

import functools
import math
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

if TYPE_CHECKING:
    import numpy.typing as npt
    from gguf import GGUFReader, GGUFValueType, ReaderField

MIB = 2**20

# What follows is what this llama.cpp (LLAMA_NOTES.md) allocates for a llama-server as
# supervisor/command.py starts it, checked against its own buffer sizes (-lv 4) and VmHWM
# after filling its context and after the largest embeddings batch (bench/memory.py).

# llama.cpp allocates the KV cache in cells padded to 256 (`-c 12192` serves n_ctx 12288).
# The whole pool, whatever the model's training context: a smaller n_ctx_train only caps each
# slot's share (SmolLM2 at -c 12192: 12288 cells, 270 MiB, resident from the start; slots of
# 8192), so the estimate counts the configured context, not the trained one.
CTX_PAD = 256

# K and V are f16 by default (--cache-type-k/-v f16).
KV_BYTES_PER_VALUE = 2

# Logits, embeddings and activations are f32.
FLOAT_BYTES = 4

# llama-server's --parallel default ("auto"): 4 slots sharing one (unified) KV cache.
SERVER_SLOTS = 4

# Sliding-window attention: the layers in each group of N but the last keep only
# `sliding_window` cells per slot (+ a ubatch), the last the whole context. N comes from the
# file's `{arch}.attention.sliding_window_pattern`, else from llama.cpp's code for these
# architectures (src/models/*.cpp); any other architecture is sized as if every layer were
# full, an upper bound.
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "gemma-embedding": 6, "cohere2": 4}

# What a llama-server holds besides its files, KV cache, output and compute buffers: the
# binary's libraries and heap, the HTTP server, and the vocabulary (tables per token).
# Measured idle at -c 2048 (RssAnon less KV and output buffer, RssFile less the model):
# 35 MiB for SmolLM2 (49152 tokens), 70 for gemma-3-270m (262144 tokens).
RUNTIME_BASE_BYTES = 32 * MIB
RUNTIME_BYTES_PER_TOKEN = 192

# A margin over the sum of the parts: each is sized to what llama.cpp reports, and the sum
# lies 0-5% above the peaks bench/memory.py measures on the built-in models (1.05-1.10 with
# the margin), which leaves a little for a model of another shape.
MARGIN = 0.05

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
    feed_forward_length: int | None = None  # the largest, for per-layer values
    sliding_window: int | None = None  # cells a sliding-window layer attends to
    sliding_window_pattern: int | None = None  # N: each group of N layers ends with a full one
    fim: Fim | None = None  # where its vocabulary can fill in the middle


class Fim(msgspec.Struct, frozen=True, kw_only=True):
    """A vocabulary's fill-in-the-middle tokens, as text: prefix, suffix and middle, and the
    repository and file separator tokens where it has them."""

    pre: str
    suf: str
    mid: str
    rep: str | None = None
    sep: str | None = None


# How llama.cpp finds each FIM token (src/llama-vocab.cpp, load): by the GGUF key of its id
# (the deprecated key, read last, wins), else by its text in the vocabulary.
FIM_TOKENS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pre": (
        ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
        ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim▁begin\uff5c>", "<PRE>",
         "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    ),
    "suf": (
        ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
        ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim▁hole\uff5c>", "<SUF>",
         "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    ),
    "mid": (
        ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
        ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim▁end\uff5c>", "<MID>",
         "▁<MID>", "<|code_middle|>", "<|middle|>"),
    ),
    "rep": (
        ("tokenizer.ggml.fim_rep_token_id",),
        ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    ),
    "sep": (("tokenizer.ggml.fim_sep_token_id",), ("<|file_sep|>",)),
}  # fmt: skip


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
    return _cached(_CACHE, path, _read_meta)


T = TypeVar("T")


def _cached(
    cache: dict[tuple[int, int, int, int], T], path: str | Path, read: Callable[[Path], T]
) -> T:
    """`read(path)`, kept in `cache` by file version (see `_CACHE`)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise NotGguf(f"{path}: {exc.strerror or exc}") from exc
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    if (found := cache.get(key)) is None:
        found = read(Path(path))
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)), None)  # the oldest (None: another thread's race)
        cache[key] = found
    return found


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
            # Each tensor's info is name length, name, n_dims, dims, type, offset: the
            # parameter count is the sum of the dims' products (Ollama's parameter_size).
            self.parameter_count = sum(int(np.prod(f.parts[3], dtype=np.uint64)) for f in fields)

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
        feed_forward_length=_int(get(f"{arch}.feed_forward_length")),
        sliding_window=_int(get(f"{arch}.attention.sliding_window")),
        sliding_window_pattern=_int(get(f"{arch}.attention.sliding_window_pattern")),
        fim=_fim(reader),
    )


def _fim(reader: GGUFReader) -> Fim | None:
    """The file's FIM tokens, as llama.cpp finds them; None without all of pre, suf, mid."""
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or tokens.data:
        return None
    start, _ = _array(tokens)
    end = min((f.offset for f in reader.fields.values() if f.offset > start), default=None)
    vocabulary = bytes(reader.data[start:end])
    entry = struct.Struct(_order(reader) + "Q").pack
    found: dict[str, str] = {}
    for name, (keys, texts) in FIM_TOKENS.items():
        by_key = [token for key in keys if (token := _token(reader, key))]
        by_text = (t for t in texts if entry(len(t.encode())) + t.encode() in vocabulary)
        if token := (by_key[-1] if by_key else next(by_text, None)):
            found[name] = token
    if not all(name in found for name in ("pre", "suf", "mid")):
        return None
    return msgspec.convert(found, Fim)


# Model info by file version, as `_CACHE` (for Ollama's /api/show and /api/tags).
_INFO: dict[tuple[int, int, int, int], dict[str, object]] = {}

# Numeric arrays up to this many items are shown whole; longer ones (and string arrays,
# the vocabulary) as [], as Ollama's non-verbose /api/show does.
_SHOWN_ITEMS = 1024


def read_info(path: str | Path) -> dict[str, object]:
    """Every metadata key of the GGUF file at `path` with its value, as Ollama's
    `model_info`, plus `general.parameter_count` (counted from the tensors when the file
    does not say). Cached per file version; NotGguf as `read_meta`."""
    return _cached(_INFO, path, _read_info)


def _read_info(path: Path) -> dict[str, object]:
    try:
        return _info(_reader_type()(path))
    except (OSError, ValueError, IndexError, KeyError, struct.error) as exc:
        raise NotGguf(f"{path} is not a readable GGUF file: {exc}") from exc


def _info(reader: GGUFReader) -> dict[str, object]:
    info = {
        name: _shown(reader, field)
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }
    info.setdefault("general.parameter_count", getattr(reader, "parameter_count", 0))
    return info


def _shown(reader: GGUFReader, field: ReaderField) -> object:
    import numpy as np
    from gguf import GGUFValueType

    if field.types[0] != GGUFValueType.ARRAY:
        return _value(reader, field)
    if field.data or field.types[-1] == GGUFValueType.STRING:
        return []
    start, count = _array(field)
    if count > _SHOWN_ITEMS:
        return []
    scalar = np.dtype(reader.gguf_scalar_to_np[field.types[-1]]).newbyteorder(reader.byte_order)
    items: list[object] = np.frombuffer(reader.data, scalar, count, offset=start).tolist()
    return items


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


class Estimate(msgspec.Struct, frozen=True, kw_only=True):
    """What a llama-server is expected to hold at most, by part, in bytes."""

    files: int  # the model and projector files, memory-mapped and all read
    kv_cache: int
    outputs: int  # llama.cpp's output buffer: logits (and embeddings) of a batch's outputs
    compute: int  # the compute buffer: a ubatch's activations, attention masks, logits
    runtime: int  # RUNTIME_BASE_BYTES and the vocabulary
    prompt_cache: int = 0  # --cache-ram: slots' states saved in RAM

    @property
    def mb(self) -> int:
        """The sum with MARGIN, in MiB rounded up: what the pool charges."""
        total = self.files + self.kv_cache + self.outputs + self.compute + self.runtime
        return math.ceil((total + self.prompt_cache) * (1 + MARGIN) / MIB)


def padded_ctx(ctx_size: int) -> int:
    """The context llama.cpp really allocates: `ctx_size` rounded up to a multiple of 256."""
    return -(-ctx_size // CTX_PAD) * CTX_PAD


def kv_cells(meta: GgufMeta, ctx_size: int, ubatch_size: int) -> tuple[int, int]:
    """(full layers' cells, sliding-window layers' cells) of the KV cache: the padded
    context; a sliding-window layer keeps a window per slot and a ubatch, if that is less."""
    full = padded_ctx(ctx_size)
    if not meta.sliding_window:
        return full, full
    return full, min(full, padded_ctx(meta.sliding_window * SERVER_SLOTS + ubatch_size))


def full_layers(meta: GgufMeta) -> int:
    """Layers that keep the whole context: all of them, but for a known sliding-window
    pattern N, one in N (rounded up)."""
    layers = meta.block_count or 0
    pattern = meta.sliding_window_pattern or SWA_PATTERNS.get(meta.architecture)
    if not meta.sliding_window or not pattern:
        return layers
    return -(-layers // pattern)


def kv_cache_bytes(meta: GgufMeta, ctx_size: int, ubatch_size: int = DEFAULT_UBATCH) -> int:
    """Bytes of the f16 K and V cache for `ctx_size` (padded); 0 if a dimension is unknown."""
    dims = (meta.block_count, meta.head_count_kv, meta.key_length, meta.value_length)
    if any(d is None for d in dims):
        return 0
    layers, kv_heads, k, v = (d or 0 for d in dims)
    full, window = kv_cells(meta, ctx_size, ubatch_size)
    cells = full * full_layers(meta) + window * (layers - full_layers(meta))
    return KV_BYTES_PER_VALUE * cells * kv_heads * (k + v)


def output_bytes(meta: GgufMeta, ubatch_size: int, embeddings: bool) -> int:
    """llama.cpp's output buffer. Chat asks for one output per slot (its next token's
    logits). With --embeddings llama-server decodes an embeddings input in one ubatch
    (it sets n_batch to ubatch_size) and every token of it is an output: logits and
    embedding per token, 1026 MiB for gemma-3-270m's 262144-token vocabulary at 1024."""
    vocab, embd = meta.vocab_size or 0, meta.embedding_length or 0
    if embeddings:
        return FLOAT_BYTES * ubatch_size * (vocab + embd)
    return FLOAT_BYTES * SERVER_SLOTS * vocab


def compute_bytes(meta: GgufMeta, ctx_size: int, ubatch_size: int, embeddings: bool) -> int:
    """llama.cpp's compute buffer, as its graph reserves it for a full ubatch: per token the
    feed-forward (3 x n_ff) and attention (4 x the wider of n_embd and the query heads)
    activations, f32; an f16 attention mask over the cells each kind of layer sees; and, with
    --embeddings, the logits of every token (without, only the slots' last tokens have any).
    Reported by llama.cpp (-lv 4), MiB: SmolLM2 31/35/51 at 2048/4096/12288 cells (the
    formula 31/35/51), 200/202/218 with embeddings (223/227/243)."""
    embd = meta.embedding_length or 0
    query = (meta.head_count or 0) * (meta.key_length or 0)
    ff = meta.feed_forward_length or 4 * embd
    activations = FLOAT_BYTES * (3 * ff + 4 * max(embd, query))
    full, window = kv_cells(meta, ctx_size, ubatch_size)
    mask = KV_BYTES_PER_VALUE * (full + (window if meta.sliding_window else 0))
    logits = FLOAT_BYTES * (meta.vocab_size or 0) if embeddings else 0
    return ubatch_size * (activations + mask + logits)


def runtime_bytes(meta: GgufMeta) -> int:
    return RUNTIME_BASE_BYTES + RUNTIME_BYTES_PER_TOKEN * (meta.vocab_size or 0)


def estimate(
    model: str | Path,
    mmproj: str | Path | None,
    ctx_size: int,
    *,
    ubatch_size: int = DEFAULT_UBATCH,
    embeddings: bool = True,
    cache_ram_mb: int = 0,
) -> Estimate:
    """What a llama-server on `model` (and `mmproj`) started with `ctx_size`, `ubatch_size`,
    (if `embeddings`) --embeddings and --cache-ram `cache_ram_mb` holds at most, by part: at
    its peak after a full context and, with embeddings, after an input of ubatch_size tokens.
    Raises NotGguf for a file that is not a GGUF.

    A projector counts twice its file: its weights, and as much again for the compute buffer
    of its image encoder (measured only with the synthetic projector, a few MiB)."""
    meta = read_meta(model)
    files = _file_size(model)
    if mmproj is not None:
        read_meta(mmproj)  # a projector that is no GGUF is an error here, not at load time
        files += 2 * _file_size(mmproj)
    return Estimate(
        files=files,
        kv_cache=kv_cache_bytes(meta, ctx_size, ubatch_size),
        outputs=output_bytes(meta, ubatch_size, embeddings),
        compute=compute_bytes(meta, ctx_size, ubatch_size, embeddings),
        runtime=runtime_bytes(meta),
        prompt_cache=cache_ram_mb * MIB,
    )


def estimate_mb(
    model: str | Path,
    mmproj: str | Path | None,
    ctx_size: int,
    *,
    ubatch_size: int = DEFAULT_UBATCH,
    embeddings: bool = True,
    cache_ram_mb: int = 0,
) -> int:
    """`estimate(...).mb`: the MiB the pool charges before loading the model."""
    parts = estimate(
        model, mmproj, ctx_size,
        ubatch_size=ubatch_size, embeddings=embeddings, cache_ram_mb=cache_ram_mb,
    )  # fmt: skip
    return parts.mb


def _file_size(path: str | Path) -> int:
    return os.stat(path).st_size
