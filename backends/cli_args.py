"""Pure argv builders for the per-request llama.cpp binaries. Prompts never go in argv
(anyone on the host can read /proc/*/cmdline): they are passed as private files."""

from __future__ import annotations

from core.config import LlmParams
from supervisor.command import template_argv


def _sampling(p: LlmParams) -> list[str]:
    return [
        "--temp", str(p.temp),
        "--top-p", str(p.top_p),
        "--top-k", str(p.top_k),
        "--presence-penalty", str(p.presence_penalty),
        "--mirostat", str(p.mirostat),
    ]  # fmt: skip


def _sizes(p: LlmParams, ctx_size: int | None = None) -> list[str]:
    return [
        "--ctx-size", str(ctx_size or p.ctx_size),
        "--batch-size", str(p.batch_size),
        "--ubatch-size", str(p.ubatch_size),
    ]  # fmt: skip


def completion_argv(
    binary: str,
    model: str,
    prompt_file: str,
    params: LlmParams,
    max_tokens: int,
    *,
    seed: int | None = None,
    frequency_penalty: float | None = None,
    schema_file: str | None = None,
    grammar_file: str | None = None,
) -> list[str]:
    """`llama-completion` on an already rendered prompt, printing only the generated text.
    (`llama-cli -p` turned interactive upstream and waits for input.) A JSON schema comes
    in a file too: llama.cpp turns it into a grammar; or a GBNF grammar."""
    argv = [
        binary,
        "--model", model,
        "--file", prompt_file,
        "--n-predict", str(max_tokens),
        *_sizes(params),
        *_sampling(params),
        "--no-conversation",
        "--no-display-prompt",
        # The prompt as it is: by default llama.cpp turns a "\\n" in it into a newline.
        "--no-escape",
    ]  # fmt: skip
    if seed is not None:
        argv += ["--seed", str(seed)]
    if frequency_penalty is not None:
        argv += ["--frequency-penalty", str(frequency_penalty)]
    if schema_file is not None:
        argv += ["--json-schema-file", schema_file]
    if grammar_file is not None:
        argv += ["--grammar-file", grammar_file]
    return argv


def mtmd_argv(
    binary: str,
    model: str,
    mmproj: str,
    image_file: str,
    prompt_file: str,
    params: LlmParams,
    max_tokens: int,
    chat_template: str | None,
    grammar: str | None,
) -> list[str]:
    """`llama-mtmd-cli` on one image; it wraps the prompt in the chat template itself (it
    refuses to run without one) and prints only the answer."""
    argv = [
        binary,
        "--model", model,
        "--mmproj", mmproj,
        "--image", image_file,
        "--file", prompt_file,
        "--n-predict", str(max_tokens),
        *_sizes(params),
        *_sampling(params),
        "--no-escape",
        # As llama-server runs it; llama-mtmd-cli's Jinja is off by default.
        *(template_argv(chat_template) or ["--jinja"]),
    ]  # fmt: skip
    return [*argv, "--grammar", grammar] if grammar else argv


def padded_ctx(ctx_size: int) -> int:
    """`ctx_size` rounded up to a multiple of 256, as llama-server and llama-completion do
    themselves (12192 -> 12288). llama-embedding does not, sets its batch to the unpadded
    value and aborts (GGML_ASSERT ggml_can_mul_mat) for 12192."""
    return -(-ctx_size // 256) * 256


def embedding_argv(
    binary: str, model: str, input_file: str, separator: str, params: LlmParams
) -> list[str]:
    """`llama-embedding` over every input in one run: the file holds them joined by
    `separator`; mean pooling and L2 normalisation, as llama-server's /v1/embeddings."""
    return [
        binary,
        "--model", model,
        "--file", input_file,
        "--embd-separator", separator,
        *_sizes(params, padded_ctx(params.ctx_size)),
        "--pooling", "mean",
        "--embd-normalize", "2",
        "--embd-output-format", "json",
        "--no-escape",
        # Its token counts ("number of tokens in prompt = N", on stderr) for `usage`; it
        # also lists the tokens on stdout, before the JSON.
        "--verbose-prompt",
    ]  # fmt: skip
