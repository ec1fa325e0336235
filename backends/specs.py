"""Which llama-server processes the config asks for: one per distinct model spec."""

from __future__ import annotations

import os
from pathlib import Path

from backends import toolchain
from gateway.config import LlmParams, Settings
from gateway.errors import MissingComponent
from supervisor.command import ServerSpec

ROLES = ("chat", "embedding", "vision")


# Resolved model paths. Resolving (the cache dir from the environment, Path objects, a stat)
# cost ~70 us, five times per request: a third of the gateway's own time per request under
# load (bench/throughput.py, profiled). A hit is re-checked with one stat, so a file that
# went away is reported, not assumed.
_RESOLVED: dict[tuple[str | None, ...], Path] = {}


def model_path(settings: Settings, role: str) -> Path:
    explicit: str | None = getattr(settings.models, role)
    env = os.environ
    key = (role, explicit, settings.cache_dir, env.get("AI_SERVER_CACHE"),
           env.get("XDG_CACHE_HOME"), env.get("HOME"))  # fmt: skip
    if (path := _RESOLVED.get(key)) is not None and os.path.isfile(path):
        return path
    path = _RESOLVED[key] = toolchain.resolve_model(role, explicit, settings.cache_path())
    return path


def model_name(path: Path) -> str:
    return path.name.removesuffix(".gguf")


def vision_model(settings: Settings) -> tuple[Path, Path]:
    """The vision model and its projector (MissingComponent names what is missing)."""
    return model_path(settings, "vision"), model_path(settings, "mmproj")


def server_specs(settings: Settings, params: LlmParams) -> dict[str, ServerSpec]:
    """Role -> spec. Roles on the same model share one spec, hence one process; it serves
    embeddings if any of its roles is `embedding`, and images (--mmproj) if the vision model
    is that model. Without a projector there is no vision role; the others still run."""
    models = {role: str(model_path(settings, role)) for role in ("chat", "embedding")}
    mmproj = None
    try:
        vision, projector = vision_model(settings)
    except MissingComponent:
        pass
    else:
        models["vision"], mmproj = str(vision), str(projector)
    return {
        role: ServerSpec(
            model=model,
            mmproj=mmproj if model == models.get("vision") else None,
            ctx_size=params.ctx_size,
            batch_size=params.batch_size,
            ubatch_size=params.ubatch_size,
            embeddings=model == models["embedding"],
            chat_template=settings.models.chat_template,
        )
        for role, model in models.items()
    }
