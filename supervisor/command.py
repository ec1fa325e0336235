"""Pure argv builders for llama-server (and llama.cpp's rpc-server, which `ai-server worker
--rpc` supervises): a spec in, a list of strings out, never a shell string."""

from __future__ import annotations

from typing import Literal

import msgspec

# llama.cpp's built-in templates that backends.prompt ports for cli mode: a model whose
# `chat_template` is one of these names runs with --no-jinja.
BUILTIN_TEMPLATES = frozenset({"gemma", "chatml"})


class ServerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that needs a llama-server restart to change: one model's startup."""

    name: str = ""  # the model's name, answered as `model` in every response (--alias)
    model: str
    mmproj: str | None = None
    ctx_size: int
    batch_size: int
    ubatch_size: int
    # llama-server's prompt cache (--cache-ram): the KV state of a slot a new task takes,
    # saved in RAM. Its default is 8192 MiB, which no memory estimate could bound; 0 turns
    # it off (a slot's own prompt is still reused), anything else is counted in the estimate.
    cache_ram_mb: int = 0
    embeddings: bool = False
    pooling: str = "mean"
    # None: the GGUF's own Jinja template; a BUILTIN_TEMPLATES name; else Jinja source.
    chat_template: str | None = None
    replica: int = 0  # which of the model's local instances
    rpc: tuple[str, ...] = ()  # llama.cpp RPC workers (HOST:PORT) for `gpu_layers` layers
    gpu_layers: int | None = None
    threads: int | None = None  # llama.cpp's default otherwise (the cores)
    api_key_file: str | None = None  # a LAN-facing llama-server (ai-server worker)
    kind: Literal["llama-server", "rpc-server"] = "llama-server"


def rpc_server_spec(threads: int | None = None) -> ServerSpec:
    """An rpc-server: no model of its own, the front's llama-server sends it layers."""
    return ServerSpec(
        name="rpc-server", model="", ctx_size=0, batch_size=0, ubatch_size=0, threads=threads,
        kind="rpc-server",
    )  # fmt: skip


def template_argv(template: str | None) -> list[str]:
    if template is None:
        return []  # Jinja is llama-server's default: the GGUF's own template
    if template in BUILTIN_TEMPLATES:
        # With Jinja on, `--chat-template gemma` would be a literal Jinja template rendering
        # every conversation as "gemma"; --no-jinja makes it llama.cpp's built-in one.
        return ["--no-jinja", "--chat-template", template]
    return ["--jinja", "--chat-template", template]


def build_server_argv(binary: str, spec: ServerSpec, *, host: str, port: int) -> list[str]:
    """The llama-server (or rpc-server) command line for `spec` listening on `host:port`."""
    threads = ["--threads", str(spec.threads)] if spec.threads else []
    if spec.kind == "rpc-server":
        return [binary, "--host", host, "--port", str(port), *threads]
    argv = [
        binary,
        "--model", spec.model,
        "--host", host,
        # Always explicit: llama-server's default port is changing upstream.
        "--port", str(port),
        "--ctx-size", str(spec.ctx_size),
        "--batch-size", str(spec.batch_size),
        "--ubatch-size", str(spec.ubatch_size),
        "--cache-ram", str(spec.cache_ram_mb),
        *template_argv(spec.chat_template),
        *threads,
    ]  # fmt: skip
    if spec.name:
        argv += ["--alias", spec.name]
    if spec.embeddings:
        # pooling `none` is rejected by /v1/embeddings as "not OAI compatible".
        argv += ["--embeddings", "--pooling", spec.pooling]
    if spec.mmproj:
        argv += ["--mmproj", spec.mmproj]
    if spec.rpc:
        argv += ["--rpc", ",".join(spec.rpc), "--n-gpu-layers", str(spec.gpu_layers or 0)]
    if spec.api_key_file:
        argv += ["--api-key-file", spec.api_key_file]
    return argv
