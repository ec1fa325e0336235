"""Fill in the middle in cli mode: the prompt llama-server's /infill builds for a prefix and
a suffix (tools/server/server-common.cpp, format_prompt_infill), as text for
llama-completion, which parses the FIM tokens' text back into the tokens.

llama-server's order is PSM, after a preamble (its "extra" block): the repository token
and `myproject`, then the file separator and `filename`, for a vocabulary that has them
(even when a request sends no other files). It keeps the prefix's last 3/4 of a batch of
tokens, the suffix's first 1/4 (less 2), and the preamble's last `n_ctx_slot - n_batch + 2`
tokens (its n_predict is -1). Two differences remain, neither for a model here:
llama-server tokenizes the prefix and the suffix without parsing special tokens' text in
them (llama-completion parses the whole file), and puts a BOS after the preamble
(llama-completion before it).
"""

from __future__ import annotations

from typing import NamedTuple

from backends.cli_args import padded_ctx
from backends.gguf_meta import Fim
from core.config import LlmParams

REPO, FILE = "myproject\n", "filename\n"


class Budget(NamedTuple):
    """How many tokens of each part llama-server keeps."""

    prefix: int  # the last ones
    suffix: int  # the first ones
    preamble: int  # the last ones


def budget(params: LlmParams, embeddings: bool, n_ctx_train: int | None) -> Budget:
    """What llama-server keeps with these startup parameters: its batch is the ubatch when
    it serves embeddings too (tools/server/server.cpp), and a slot's context is capped at
    the model's training context."""
    n_batch = min(params.batch_size, params.ubatch_size) if embeddings else params.batch_size
    n_ctx = padded_ctx(params.ctx_size)
    n_ctx_slot = min(n_ctx, n_ctx_train or n_ctx)
    return Budget(
        prefix=3 * (n_batch // 4),
        suffix=max(0, n_batch // 4 - 2),
        preamble=max(0, n_ctx_slot - n_batch + 2),
    )


def preamble(fim: Fim) -> str:
    """What comes before the prefix, whole."""
    return (f"{fim.rep}{REPO}" if fim.rep else "") + (f"{fim.sep}{FILE}" if fim.sep else "")


def prompt(fim: Fim, prefix: str, suffix: str, preamble: str) -> str:
    """The prompt, each part already cut to its budget."""
    return f"{preamble}{fim.pre}{prefix}{fim.suf}{suffix}{fim.mid}"
