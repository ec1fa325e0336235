"""The Ollama listener's discovery and model routes, in Ollama's shapes (its api/types.go):
`GET`/`HEAD /`, `/api/version`, `/api/tags`, `POST /api/show`, `GET /api/ps`, and
`/api/pull` (a model we have is already pulled; we never download). Model management
(`/api/push`, `/api/create`, `/api/copy`, `/api/delete`) is refused in Ollama's error shape:
the models are the config's GGUF files."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from backends import gguf_meta
from backends.catalog import ModelDef
from backends.specs import server_spec
from core.errors import BadRequest, ModelNotFound
from gateway.bodies import decode_json, json_response
from gateway.dialects.ollama_common import capabilities, resolve, tagged
from gateway.lifespan import Services, services

NDJSON = "application/x-ndjson"


class ModelBody(msgspec.Struct, kw_only=True):
    """The bodies of show, pull, push, delete: `model`, or its deprecated name `name`."""

    model: str = ""
    name: str = ""
    verbose: bool = False
    stream: bool = True


class CopyBody(msgspec.Struct, kw_only=True):
    source: str = ""
    destination: str = ""


def _info(model: ModelDef) -> dict[str, object]:
    """The GGUF header's metadata (cached per file version); {} without a readable file."""
    try:
        return gguf_meta.read_info(model.path) if model.path else {}
    except gguf_meta.NotGguf:
        return {}


def _quantization(info: Mapping[str, object]) -> str:
    file_type = info.get("general.file_type")
    if not isinstance(file_type, int):
        return ""
    import gguf  # as backends.gguf_meta: loaded once a header is read anyway

    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return str(file_type)
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _human(count: int) -> str:
    """A parameter count as Ollama writes it (its format.HumanNumber): 134.52M, 8B, 7.6B."""
    for scale, unit, places in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 0)):
        if count >= scale:
            number = count / scale
            return f"{number:.0f}{unit}" if number == int(number) else f"{number:.{places}f}{unit}"
    return str(count)


def details(info: Mapping[str, object]) -> dict[str, object]:
    """Ollama's `details` of a model, from its GGUF header."""
    family = str(info.get("general.architecture", ""))
    count = info.get("general.parameter_count")
    label = info.get("general.size_label")
    size = _human(count) if isinstance(count, int) and count else str(label or "")
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": size,
        "quantization_level": _quantization(info),
    }


def _files(model: ModelDef) -> list[os.stat_result]:
    found = []
    for path in (model.path, model.mmproj):
        if path:
            try:
                found.append(os.stat(path))
            except OSError:
                pass
    return found


def _modified(stats: list[os.stat_result]) -> str:
    mtime = max((st.st_mtime for st in stats), default=0.0)
    return datetime.fromtimestamp(mtime, UTC).astimezone().isoformat()


def _digest(model: ModelDef, stats: list[os.stat_result]) -> str:
    """A stable id of the model's files (path, size, version): not a hash of their bytes,
    which would read gigabytes per listing."""
    key = repr((model.path, model.mmproj, [(st.st_size, st.st_mtime_ns) for st in stats]))
    return hashlib.sha256(key.encode()).hexdigest()


def _listed(model: ModelDef) -> dict[str, object]:
    """One model as /api/tags lists it (reads its header: run in a worker thread)."""
    stats = _files(model)
    info = _info(model)
    return {
        "name": tagged(model.name),
        "model": tagged(model.name),
        "modified_at": _modified(stats),
        "size": sum(st.st_size for st in stats),
        "digest": _digest(model, stats),
        "details": details(info),
        "capabilities": capabilities(model, info),
    }


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    """The Ollama release this listener says it is (`[ollama] version`)."""
    return json_response({"version": services(request).settings.ollama.version})


def _servable(model: ModelDef) -> bool:
    """Listed: a model with its file, or with only remote instances (not a built-in whose
    download has not happened, which every request would fail)."""
    return not model.replicas or (bool(model.path) and os.path.isfile(model.path))


async def tags(request: Request) -> Response:
    models = [m for m in services(request).dispatcher.catalog.models.values() if _servable(m)]
    listed = await anyio.to_thread.run_sync(lambda: [_listed(m) for m in models])
    return json_response({"models": listed})


async def _named(request: Request, svc: Services) -> ModelDef:
    """The model a body of show, push or delete names (`verbose` changes nothing: long
    arrays are always [])."""
    body = await decode_json(request, ModelBody, svc.settings.limits.max_body_bytes)
    return resolve(svc.dispatcher.catalog, body.model or body.name)


def _parameters(svc: Services, model: ModelDef) -> str:
    """The parameters a request starts from, in Ollama's Modelfile names."""
    params = svc.store.current.llm_params
    values = {
        "num_ctx": model.ctx_size or params.ctx_size,
        "num_predict": svc.settings.limits.default_max_tokens,
        "temperature": params.temp,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "presence_penalty": params.presence_penalty,
        "mirostat": params.mirostat,
    }
    return "\n".join(f"{name:<30} {value}" for name, value in values.items())


def _shown(svc: Services, model: ModelDef) -> dict[str, object]:
    info = _info(model)
    template = info.get("tokenizer.chat_template") or model.chat_template or ""
    stats = _files(model)
    view: dict[str, object] = {
        "modelfile": f"# Modelfile of AI Server's {model.name}\nFROM {model.path}\n",
        "parameters": _parameters(svc, model),
        "template": template,
        "details": details(info),
        "model_info": info,
        "capabilities": capabilities(model, info),
        "modified_at": _modified(stats),
    }
    if model.mmproj and os.path.isfile(model.mmproj):
        try:
            view["projector_info"] = gguf_meta.read_info(model.mmproj)
        except gguf_meta.NotGguf:
            pass
    return view


async def show(request: Request) -> Response:
    svc = services(request)
    model = await _named(request, svc)
    return json_response(await anyio.to_thread.run_sync(_shown, svc, model))


def _expires(ttl_s: float | None, last_used: float | None, in_flight: int) -> str:
    """When a loaded model will be unloaded if nothing uses it: its TTL after its last use
    (or from now while it serves); for ever when it has none."""
    now = datetime.now(UTC).astimezone()
    if ttl_s is None or math.isinf(ttl_s):
        return (now + FOREVER).isoformat()
    since = now if in_flight or last_used is None else datetime.fromtimestamp(last_used, UTC)
    return (since + timedelta(seconds=ttl_s)).astimezone().isoformat()


# What Ollama says of a model kept for ever: now plus Go's longest duration (~292 years).
FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)


def _running(svc: Services) -> list[dict[str, object]]:
    if svc.store.current.backend != "server":
        return []  # cli mode keeps nothing loaded
    params = svc.store.current.llm_params
    found = []
    for model in svc.dispatcher.catalog.models.values():
        infos = [i for i in svc.supervisor.instances_of(model.name) if i.status == "loaded"]
        if not infos:
            continue
        info, stats = infos[0], _files(model)
        size = sum(i.memory_mb for i in infos) * 2**20
        found.append(
            {
                "name": tagged(model.name),
                "model": tagged(model.name),
                "size": size,
                "digest": _digest(model, stats),
                "details": details(_info(model)),
                "expires_at": _expires(info.ttl_s, info.last_used, info.in_flight),
                "size_vram": 0,
                "context_length": server_spec(model, params).ctx_size,
            }
        )
    return found


async def ps(request: Request) -> Response:
    svc = services(request)
    return json_response({"models": await anyio.to_thread.run_sync(_running, svc)})


PULLED = ("pulling manifest", "verifying sha256 digest", "writing manifest", "success")


async def pull(request: Request) -> Response:
    """A model we have: the status lines of a finished pull. One we don't: Ollama's error
    for a model the registry has not got (we download nothing)."""
    svc = services(request)
    body = await decode_json(request, ModelBody, svc.settings.limits.max_body_bytes)
    requested = body.model or body.name
    try:
        resolve(svc.dispatcher.catalog, requested)
    except ModelNotFound:
        raise ModelNotFound(
            f"pull model manifest: file does not exist: model '{requested}' is not on this "
            "server, and it downloads no models (add its GGUF file to the config)"
        ) from None
    if not body.stream:
        return json_response({"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        for status in PULLED:
            yield msgspec.json.encode({"status": status}) + b"\n"

    return StreamingResponse(lines(), media_type=NDJSON)


async def refused(request: Request) -> Response:
    """Push, create, copy, delete: the models are the config's files, changed there."""
    svc = services(request)
    verb = request.url.path.removeprefix("/api/")
    if verb in ("push", "delete"):
        await _named(request, svc)  # an unknown model is still Ollama's 404
    elif verb == "copy":
        body = await decode_json(request, CopyBody, svc.settings.limits.max_body_bytes)
        resolve(svc.dispatcher.catalog, body.source, "source")
    raise BadRequest(
        f"this server does not {verb} models: they are the GGUF files of its config "
        "([models.NAME] or [pool] models_dir), changed there"
    )


routes: list[BaseRoute] = [
    Route("/", root, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/pull", pull, methods=["POST"]),
    Route("/api/push", refused, methods=["POST"]),
    Route("/api/create", refused, methods=["POST"]),
    Route("/api/copy", refused, methods=["POST"]),
    Route("/api/delete", refused, methods=["DELETE"]),
]
