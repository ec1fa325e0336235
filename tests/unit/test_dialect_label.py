"""Which API a request spoke, for the `dialect` label of ai_server_requests_total."""

from __future__ import annotations

import pytest

from gateway.metrics import dialect_of


@pytest.mark.parametrize(
    ("path", "listener", "dialect"),
    [
        ("/v1/chat/completions", "main", "openai"),
        ("/v1/embeddings", "ollama", "openai"),  # the Ollama port serves /v1 too
        ("/v1/messages", "main", "anthropic"),
        ("/v1/messages/count_tokens", "main", "anthropic"),
        ("/v1/responses", "ollama", "responses"),
        ("/api/chat", "main", "api"),
        ("/api/chat", "ollama", "ollama"),
        ("/", "ollama", "ollama"),  # Ollama's "is it running" probe
        ("other", "ollama", "ollama"),
        ("/", "main", "-"),
        ("/ready", "main", "-"),
        ("other", "main", "-"),
    ],
)
def test_dialect_of(path: str, listener: str, dialect: str) -> None:
    assert dialect_of(path, listener) == dialect
