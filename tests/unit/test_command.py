from __future__ import annotations

from supervisor.command import ServerSpec, build_server_argv

SPEC = ServerSpec(model="/m/gemma.gguf", ctx_size=12192, batch_size=8192, ubatch_size=1024)


def test_build_server_argv_golden() -> None:
    assert build_server_argv("/bin/llama-server", SPEC, host="127.0.0.1", port=8080) == [
        "/bin/llama-server",
        "--model", "/m/gemma.gguf",
        "--host", "127.0.0.1",
        "--port", "8080",
        "--ctx-size", "12192",
        "--batch-size", "8192",
        "--ubatch-size", "1024",
        "--no-jinja", "--chat-template", "gemma",
    ]  # fmt: skip


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
