"""Pure argv builders for llama-server: a spec in, a list of strings out, never a shell string."""

from __future__ import annotations

import msgspec


class ServerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that needs a llama-server restart to change. Roles with equal specs share
    one process."""

    model: str
    mmproj: str | None = None
    ctx_size: int
    batch_size: int
    ubatch_size: int
    embeddings: bool = False
    pooling: str = "mean"
    chat_template: str = "gemma"


def build_server_argv(binary: str, spec: ServerSpec, *, host: str, port: int) -> list[str]:
    """The llama-server command line for `spec` listening on `host:port`."""
    argv = [
        binary,
        "--model", spec.model,
        "--host", host,
        # Always explicit: llama-server's default port is changing upstream.
        "--port", str(port),
        "--ctx-size", str(spec.ctx_size),
        "--batch-size", str(spec.batch_size),
        "--ubatch-size", str(spec.ubatch_size),
        # The default model's GGUF has no template. With Jinja on, `--chat-template gemma`
        # would be a literal Jinja template rendering every conversation as "gemma";
        # --no-jinja makes it llama.cpp's built-in template of that name.
        "--no-jinja", "--chat-template", spec.chat_template,
    ]  # fmt: skip
    if spec.embeddings:
        # pooling `none` is rejected by /v1/embeddings as "not OAI compatible".
        argv += ["--embeddings", "--pooling", spec.pooling]
    if spec.mmproj:
        argv += ["--mmproj", spec.mmproj]
    return argv
