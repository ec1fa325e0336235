"""Placeholder: the Ollama chat routes (/api/chat, /api/generate, /api/embed, /api/embeddings)
come from the ollama-chat branch."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
