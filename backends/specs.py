"""From models (configuration) to what the supervisor runs: one llama-server spec per model,
with its pool policy (memory estimate, pinned, TTL, load at startup)."""

from __future__ import annotations

import logging
import os
from functools import lru_cache

from backends import gguf_meta
from backends.catalog import Catalog, ModelDef
from core.config import LlmParams
from supervisor.command import ServerSpec
from supervisor.pool import Policy

log = logging.getLogger("ai_server.specs")


@lru_cache(maxsize=1024)
def server_spec(model: ModelDef, params: LlmParams, replica: int = 0) -> ServerSpec:
    """`model`'s llama-server (its local instance `replica`) under the current parameters,
    unless it overrides one; built once per (model, parameters), so the hot path is a cache
    hit."""
    return ServerSpec(
        name=model.name,
        model=model.path,
        mmproj=model.mmproj if model.mmproj and os.path.isfile(model.mmproj) else None,
        ctx_size=model.ctx_size or params.ctx_size,
        batch_size=model.batch_size or params.batch_size,
        ubatch_size=model.ubatch_size or params.ubatch_size,
        embeddings=model.embeddings,
        chat_template=model.chat_template,
        replica=replica,
        rpc=model.rpc_workers,
        gpu_layers=model.gpu_layers,
        threads=model.threads,
    )


@lru_cache(maxsize=1024)
def local_specs(model: ModelDef, params: LlmParams) -> tuple[ServerSpec, ...]:
    """`model`'s local instances: its replicas, none for a remote-only model. Cached like
    `server_spec`: a routed request reads them twice (bench/decision.py)."""
    return tuple(server_spec(model, params, i) for i in range(model.replicas))


def estimate_mb(spec: ServerSpec) -> int:
    """The pool's estimate before loading (backends.gguf_meta); 0 for an unreadable file,
    which then fails its load with llama-server's own message."""
    try:
        return gguf_meta.estimate_mb(
            spec.model,
            spec.mmproj,
            spec.ctx_size,
            ubatch_size=spec.ubatch_size,
            embeddings=spec.embeddings,
            cache_ram_mb=spec.cache_ram_mb,
        )
    except (OSError, gguf_meta.NotGguf) as exc:
        log.warning("specs.no_estimate model=%s %s", spec.name, exc)
        return 0


def server_plan(catalog: Catalog, params: LlmParams) -> dict[ServerSpec, Policy]:
    """Every local instance of every model whose file exists, with its policy: pinned
    models and the roles' models load at startup (when they fit). The roles' models come
    first, so the chat model gets the first port ([llama_server] port), as before there
    were several.

    An instance whose layers go to RPC workers counts its whole estimate against the
    budget until it is loaded: how much stays local is not known before. Once loaded, its
    measured resident memory (the local share) replaces the estimate."""
    defaults = list(dict.fromkeys(catalog.roles.values()))
    ordered = [*defaults, *(name for name in catalog.models if name not in defaults)]
    plan = {}
    for model in (catalog.models[name] for name in ordered):
        if not model.replicas or not os.path.isfile(model.path):
            continue  # a missing built-in (`make model` not run): its requests say so
        for spec in local_specs(model, params):
            plan[spec] = Policy(
                estimate_mb=estimate_mb(spec),
                pinned=model.pinned,
                ttl_s=model.ttl_s,
                autostart=model.pinned or model.name in defaults,
            )
    return plan
