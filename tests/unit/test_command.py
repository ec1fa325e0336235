from __future__ import annotations

import msgspec
import pytest

from supervisor.command import ServerSpec, build_server_argv

SPEC = ServerSpec(
    name="gemma-3-270m", model="/m/gemma.gguf", ctx_size=12192, batch_size=8192,
    ubatch_size=1024, chat_template="gemma",
)  # fmt: skip


def test_build_server_argv_golden() -> None:
    assert build_server_argv("/bin/llama-server", SPEC, host="127.0.0.1", port=8080) == [
        "/bin/llama-server",
        "--model", "/m/gemma.gguf",
        "--host", "127.0.0.1",
        "--port", "8080",
        "--ctx-size", "12192",
        "--batch-size", "8192",
        "--ubatch-size", "1024",
        "--cache-ram", "0",
        "--no-jinja", "--chat-template", "gemma",
        "--alias", "gemma-3-270m",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("template", "flags"),
    [
        (None, []),  # the GGUF's own Jinja template: llama-server's default
        ("chatml", ["--no-jinja", "--chat-template", "chatml"]),  # a built-in, ported for cli
        ("{{ messages }}", ["--jinja", "--chat-template", "{{ messages }}"]),  # Jinja source
    ],
)
def test_build_server_argv_chat_template_rule(template: str | None, flags: list[str]) -> None:
    spec = ServerSpec(model="/m/a.gguf", ctx_size=512, batch_size=64, ubatch_size=32,
                      chat_template=template)  # fmt: skip
    argv = build_server_argv("llama-server", spec, host="127.0.0.1", port=8081)
    assert argv[argv.index("--cache-ram") + 2 :] == flags


def test_build_server_argv_bounds_the_prompt_cache() -> None:
    """llama-server's prompt cache would otherwise grow to 8 GiB beside the estimate: a
    filled slot saved when an embeddings input took it made SmolLM2 peak at 889 MiB, not 817."""
    argv = build_server_argv("llama-server", SPEC, host="127.0.0.1", port=8081)
    assert argv[argv.index("--cache-ram") + 1] == "0"
    spec = msgspec.structs.replace(SPEC, cache_ram_mb=512)
    argv = build_server_argv("llama-server", spec, host="127.0.0.1", port=8081)
    assert argv[argv.index("--cache-ram") + 1] == "512"


def test_build_server_argv_embeddings_and_mmproj() -> None:
    spec = ServerSpec(
        model="/m/a.gguf",
        mmproj="/m/p.gguf",
        ctx_size=512,
        batch_size=64,
        ubatch_size=32,
        embeddings=True,
    )
    argv = build_server_argv("llama-server", spec, host="127.0.0.1", port=8081)
    assert argv[-5:] == ["--embeddings", "--pooling", "mean", "--mmproj", "/m/p.gguf"]
    assert argv[argv.index("--port") + 1] == "8081"
