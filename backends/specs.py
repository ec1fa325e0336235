"""Which llama-server processes the config asks for: one per distinct model spec."""

from __future__ import annotations

from pathlib import Path

from backends import toolchain
from gateway.config import LlmParams, Settings
from supervisor.command import ServerSpec

ROLES = ("chat", "embedding")


def model_path(settings: Settings, role: str) -> Path:
    explicit: str | None = getattr(settings.models, role)
    return toolchain.resolve_model(role, explicit, settings.cache_path())


def model_name(path: Path) -> str:
    return path.name.removesuffix(".gguf")


def server_specs(settings: Settings, params: LlmParams) -> dict[str, ServerSpec]:
    """Role -> spec. Roles on the same model share one spec, hence one process; that process
    serves embeddings if any of its roles is `embedding` (chat keeps working beside it)."""
    models = {role: str(model_path(settings, role)) for role in ROLES}
    specs: dict[str, ServerSpec] = {}
    for role, model in models.items():
        specs[role] = ServerSpec(
            model=model,
            ctx_size=params.ctx_size,
            batch_size=params.batch_size,
            ubatch_size=params.ubatch_size,
            embeddings=any(r == "embedding" and m == model for r, m in models.items()),
            chat_template=settings.models.chat_template,
        )
    return specs
