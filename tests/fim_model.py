"""A fill-in-the-middle model for tests: a copy of SmolLM2-135M-Instruct whose vocabulary
has the three FIM tokens llama.cpp looks for (none of the built-in models has them, so
llama-server's /infill answers them 501 "Infill is not supported by this model").

The copy keeps every tensor and every other key; only the tokenizer changes, in one of
the three ways llama.cpp finds FIM tokens (src/llama-vocab.cpp, load):
- "names": three unused control tokens renamed `<fim_prefix>`, `<fim_suffix>`,
  `<fim_middle>` (StarCoder's names; llama.cpp detects them by their text, as it does
  for most real FIM models, whose GGUFs carry no FIM keys);
- "keys": `tokenizer.ggml.fim_pre_token_id` / `fim_suf_token_id` / `fim_mid_token_id`
  pointing at those control tokens under their own names;
- "legacy_keys": the deprecated `tokenizer.ggml.prefix_token_id` / `suffix_token_id` /
  `middle_token_id` (old CodeLlama GGUFs), same tokens.

SmolLM2 also has `<reponame>`, which llama.cpp takes for the FIM repo token: its /infill
prompt starts with `<reponame>myproject\\n` (see `infill_text`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Way = Literal["names", "keys", "legacy_keys"]

# SmolLM2's control tokens that a FIM prompt never meets otherwise (ids 8, 9, 10).
SPARE = ("<issue_start>", "<issue_comment>", "<issue_closed>")
FIM_NAMES = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
KEYS = {
    "keys": (
        "tokenizer.ggml.fim_pre_token_id",
        "tokenizer.ggml.fim_suf_token_id",
        "tokenizer.ggml.fim_mid_token_id",
    ),
    "legacy_keys": (
        "tokenizer.ggml.prefix_token_id",
        "tokenizer.ggml.suffix_token_id",
        "tokenizer.ggml.middle_token_id",
    ),
}
# The FIM repo token llama.cpp finds by text in SmolLM2's vocabulary, and the project
# name llama-server's /infill puts after it (tools/server/server-common.cpp).
REPO_TOKEN = "<reponame>"  # noqa: S105 (a vocabulary token)
REPO_NAME = "myproject\n"


@dataclass(frozen=True, kw_only=True)
class FimModel:
    path: Path
    prefix: str  # the FIM tokens' text, as a prompt file for llama-completion spells them
    suffix: str
    middle: str
    repo: str = REPO_TOKEN

    def infill_text(self, input_prefix: str, input_suffix: str) -> str:
        """The prompt llama-server's /infill builds for this model, as text with its special
        tokens spelled out: PSM order, no BOS (SmolLM2 adds none). So when there is no
        input_extra nor `prompt`, nothing is truncated (prefix <= 3*(n_batch/4) tokens,
        suffix <= n_batch/4 - 2) and the repo line's 4 tokens all fit its extra budget,
        n_ctx_slot - n_batch - 2*n_predict (the server's -n, default -1): with less it
        keeps only the line's last tokens (`project\n` at -c 8192 -b 8192), with 0 none."""
        return (
            f"{self.repo}{REPO_NAME}"
            f"{self.prefix}{input_prefix}{self.suffix}{input_suffix}{self.middle}"
        )


def write_fim_model(source: Path, directory: Path, way: Way = "names") -> FimModel:
    """Write a FIM-capable copy of the SmolLM2 GGUF `source` into `directory` (~100 MB)."""
    import gguf  # numpy and gguf: only the tests that write a model import them

    reader = gguf.GGUFReader(source)
    tokens: list[str] = list(reader.fields[gguf.Keys.Tokenizer.LIST].contents())
    ids = [tokens.index(name) for name in SPARE]
    if way == "names":
        for i, name in zip(ids, FIM_NAMES, strict=True):
            tokens[i] = name
    target = directory / f"SmolLM2-135M-fim-{way}.gguf"
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(target, arch=arch)
    for field in reader.fields.values():
        # GGUF.* are the header's virtual fields; the writer adds the architecture itself.
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = tokens if field.name == gguf.Keys.Tokenizer.LIST else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    if way != "names":
        for key, i in zip(KEYS[way], ids, strict=True):
            writer.add_uint32(key, i)
    for tensor in reader.tensors:
        writer.add_tensor_info(
            tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
            tensor.tensor_type,
        )  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    names = FIM_NAMES if way == "names" else SPARE
    return FimModel(path=target, prefix=names[0], suffix=names[1], middle=names[2])
