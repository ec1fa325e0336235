"""The models a gateway can serve, by name: configuration, pure data, no processes.

A model is a name, its aliases, its files and its startup overrides. Where they come from,
later sources overriding earlier ones by name:

1. the two built-in models, `smollm2-135m-instruct` (the default chat model) and
   `gemma-3-270m` (embeddings and vision, with the synthetic projector);
2. every GGUF file in `[pool] models_dir`, named after the file; `mmproj-X.gguf` beside
   `X.gguf` is X's projector (llama.cpp's convention);
3. the old per-role keys of `[models]` (`chat = "/path.gguf"` ...), each distinct file a
   model named after it, with the roles those keys gave it;
4. `[models.NAME]` tables.

A running llama-server of a model is an instance: that is the supervisor's business.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from backends import toolchain
from core.config import (
    LEGACY_MODEL_KEYS,
    ConfigError,
    ModelConfig,
    RemoteConfig,
    Settings,
    secret_of,
)
from core.errors import BadRequest, MissingComponent, ModelNotFound
from supervisor.remote import RemoteSpec

ROLES = ("chat", "embedding", "vision")

SMOLLM2 = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
DEFAULT_ROLES = {"chat": SMOLLM2, "embedding": GEMMA, "vision": GEMMA}


class ModelDef(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    path: str  # "" for a model with only remote instances
    mmproj: str | None = None
    aliases: tuple[str, ...] = ()
    chat_template: str | None = None
    ctx_size: int | None = None
    batch_size: int | None = None
    ubatch_size: int | None = None
    embeddings: bool = True
    ttl_s: float | None = None  # resolved: None means never unloaded for idleness
    pinned: bool = False
    source: str = "config"  # "built-in", "models_dir", "config"
    replicas: int = 1  # local llama-servers
    remotes: tuple[RemoteSpec, ...] = ()
    rpc_workers: tuple[str, ...] = ()  # HOST:PORT of llama.cpp rpc-servers
    gpu_layers: int | None = None  # layers put on the RPC workers (-ngl)
    threads: int | None = None

    def public(self) -> dict[str, object]:
        """As /api/config shows it: remote keys redacted."""
        view: dict[str, object] = msgspec.to_builtins(self)
        return view | {"remotes": [r.public() for r in self.remotes]}

    def file(self) -> Path:
        """The GGUF file; MissingComponent (naming the fix) if it is not there."""
        if not self.path:
            raise MissingComponent(
                f"model {self.name} has no local file, only remote instances (cli mode and "
                "local replicas need one)"
            )
        if not os.path.isfile(self.path):
            fix = f"; run `{toolchain.FIX_MODEL}`" if self.source == "built-in" else ""
            raise MissingComponent(f"model {self.name}: {self.path} does not exist{fix}")
        return Path(self.path)

    def projector(self) -> str:
        """The projector file; BadRequest for a model without one (it cannot see images)."""
        if not self.mmproj:
            raise BadRequest(f"model {self.name} has no projector (mmproj): it cannot see images")
        if not os.path.isfile(self.mmproj):
            raise MissingComponent(f"model {self.name}: projector {self.mmproj} does not exist")
        return self.mmproj


class Catalog:
    """Names and aliases to models, and roles to names. Built once per config change (or
    rescan); a request's lookup is one dict access."""

    def __init__(self, models: Mapping[str, ModelDef], roles: Mapping[str, str]) -> None:
        self.models = dict(models)
        self.roles = dict(roles)
        self._names = dict(self.models)
        for m in self.models.values():
            for alias in m.aliases:
                self._names.setdefault(alias, m)

    def resolve(self, requested: str | None, role: str) -> ModelDef:
        """The model a request asked for by name or alias, else its role's model. `x:latest`
        is `x` when no model is named so: Ollama's clients add the tag, on /v1 too."""
        if requested is None:
            return self.models[self.roles[role]]
        try:
            return self._names.get(requested) or self._names[requested.removesuffix(":latest")]
        except KeyError:
            raise ModelNotFound(
                f"model {requested!r} does not exist; the models are: "
                + ", ".join(sorted(self.models))
            ) from None

    def roles_of(self, name: str) -> list[str]:
        return [role for role, model in self.roles.items() if model == name]


def builtin_models(cache: Path) -> dict[str, ModelDef]:
    mmproj = toolchain.default_mmproj_path(cache)
    return {
        SMOLLM2: ModelDef(
            name=SMOLLM2, path=str(toolchain.smollm2_model_path(cache)), source="built-in"
        ),
        GEMMA: ModelDef(
            name=GEMMA,
            path=str(toolchain.default_model_path(cache)),
            mmproj=str(mmproj),
            aliases=(toolchain.DEFAULT_MODEL_FILE.removesuffix(".gguf"),),
            # Its GGUF has no template; llama.cpp's built-in one of that name, with --no-jinja.
            chat_template="gemma",
            source="built-in",
        ),
    }


def scan_models_dir(folder: Path) -> dict[str, ModelDef]:
    """Every `*.gguf` in `folder` as a model named after the file, with its projector."""
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix == ".gguf" and p.is_file())
    except OSError as exc:
        raise ConfigError(f"[pool] models_dir {folder}: {exc.strerror}") from exc
    projectors = {p.stem.removeprefix("mmproj-"): p for p in files if p.stem.startswith("mmproj-")}
    return {
        p.stem: ModelDef(
            name=p.stem,
            path=str(p),
            mmproj=str(projectors[p.stem]) if p.stem in projectors else None,
            source="models_dir",
        )
        for p in files
        if not p.stem.startswith("mmproj-")
    }


def _legacy(
    settings: Settings, known: dict[str, ModelDef]
) -> tuple[dict[str, ModelDef], dict[str, str]]:
    """The old `[models] chat = "/path"` keys as named models and roles (same meaning)."""
    old = {k: v for k, v in settings.models.items() if isinstance(v, str)}
    template = old.get("chat_template")
    by_path = {m.path: m for m in known.values()}
    models: dict[str, ModelDef] = {}
    roles: dict[str, str] = {}
    for role in ROLES:
        if (path := old.get(role)) is None:
            continue
        path = str(Path(path).expanduser())
        model = by_path.get(path) or models.get(Path(path).stem)
        if model is None:
            model = ModelDef(name=Path(path).stem, path=path, chat_template="gemma")
        if template is not None:
            model = msgspec.structs.replace(model, chat_template=template)
        models[model.name] = model
        roles[role] = model.name
    if (mmproj := old.get("mmproj")) is not None:
        vision = roles.get("vision", GEMMA)
        base = models.get(vision) or known[vision]
        models[vision] = msgspec.structs.replace(base, mmproj=str(Path(mmproj).expanduser()))
    if template is not None and not models:  # it applied to the default model
        models[GEMMA] = msgspec.structs.replace(known[GEMMA], chat_template=template)
    return models, roles


def _remote(name: str, entry: RemoteConfig) -> RemoteSpec:
    where = f"[[models.{name}.remote]] {entry.url}"
    if not entry.url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: url must be http://HOST:PORT (or https://)")
    key = secret_of(entry.api_key, entry.api_key_file, where)
    return RemoteSpec(url=entry.url.rstrip("/"), api_key=key, weight=entry.weight)


def _rpc_worker(name: str, address: str) -> str:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"[models.{name}] rpc_workers: {address!r} is not HOST:PORT")
    return address


def _named(name: str, entry: ModelConfig, base: ModelDef | None, ttl: float | None) -> ModelDef:
    if entry.replicas == 0 and not entry.remote:
        raise ConfigError(f"[models.{name}] replicas = 0 needs [[models.{name}.remote]] instances")
    if entry.gpu_layers is not None and not entry.rpc_workers:
        raise ConfigError(f"[models.{name}] gpu_layers puts layers on rpc_workers: name them")
    if entry.path is None and base is None and entry.replicas:
        raise ConfigError(f"[models.{name}] needs `path`, the GGUF file")
    path = str(Path(entry.path).expanduser()) if entry.path else base.path if base else ""
    if entry.path and not os.path.isfile(path):
        raise ConfigError(f"[models.{name}] path {path} does not exist")
    mmproj = entry.mmproj or (base.mmproj if base else None)
    if entry.mmproj and not os.path.isfile(Path(entry.mmproj).expanduser()):
        raise ConfigError(f"[models.{name}] mmproj {entry.mmproj} does not exist")
    template = entry.chat_template
    if entry.chat_template_file is not None:
        template = _template_file(name, entry)
    if template is None and base is not None and entry.path is None:
        template = base.chat_template  # a redefined built-in keeps its template rule
    return ModelDef(
        name=name,
        path=path,
        mmproj=str(Path(mmproj).expanduser()) if mmproj else None,
        aliases=tuple(dict.fromkeys([*(base.aliases if base else ()), *entry.aliases])),
        chat_template=template,
        ctx_size=entry.ctx_size,
        batch_size=entry.batch_size,
        ubatch_size=entry.ubatch_size,
        embeddings=entry.embeddings,
        ttl_s=ttl if entry.ttl_s is None else (entry.ttl_s or None),
        pinned=entry.pinned,
        source=base.source if base and entry.path is None else "config",
        replicas=entry.replicas,
        remotes=tuple(_remote(name, r) for r in entry.remote),
        rpc_workers=tuple(_rpc_worker(name, a) for a in entry.rpc_workers),
        threads=entry.threads,
        # Every layer on the workers unless told otherwise: that is what they are for.
        gpu_layers=entry.gpu_layers
        if entry.gpu_layers is not None or not entry.rpc_workers
        else 999,
    )


def _template_file(name: str, entry: ModelConfig) -> str:
    """`chat_template_file`'s Jinja source (a file Hermes/Qwen-style tool calls can come in:
    deploy/templates/hermes-tools.jinja)."""
    if entry.chat_template is not None:
        raise ConfigError(f"[models.{name}] chat_template and chat_template_file: set one")
    path = Path(entry.chat_template_file or "").expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"[models.{name}] chat_template_file {path}: {exc}") from None


def _check_names(models: Iterable[ModelDef]) -> None:
    owners: dict[str, str] = {}
    for m in models:
        for name in (m.name, *m.aliases):
            if (other := owners.setdefault(name, m.name)) != m.name:
                raise ConfigError(f"the name {name!r} is used by both {other} and {m.name}")


def build_catalog(settings: Settings) -> Catalog:
    """Every model the config defines; ConfigError naming the key for a bad one."""
    ttl = settings.llama_server.idle_unload_s
    for key, value in settings.models.items():
        if isinstance(value, str) and key not in LEGACY_MODEL_KEYS:
            raise ConfigError(
                f"[models] {key} = {value!r}: a named model is a table, [models.{key}] "
                f'path = "..."; the string keys are only {", ".join(LEGACY_MODEL_KEYS)}'
            )
        if not isinstance(value, str) and key in LEGACY_MODEL_KEYS:
            raise ConfigError(f"[models.{key}]: {key!r} is a reserved name (an old key)")
    models = builtin_models(settings.cache_path())
    if settings.pool.models_dir:
        models |= scan_models_dir(Path(settings.pool.models_dir).expanduser())
    models = {n: msgspec.structs.replace(m, ttl_s=ttl) for n, m in models.items()}
    legacy, roles = _legacy(settings, models)
    if roles and settings.roles != type(settings.roles)():
        rewrite = "\n".join(
            f'[models.{Path(legacy[name].path).stem}]\npath = "{legacy[name].path}"'
            for name in dict.fromkeys(roles.values())
        )
        raise ConfigError(
            "the old [models] chat/embedding/vision keys and [roles] cannot be mixed; "
            f"write them as named models:\n{rewrite}\n[roles]\n"
            + "\n".join(f'{role} = "{name}"' for role, name in roles.items())
        )
    models |= legacy
    for name, value in settings.models.items():
        if isinstance(value, ModelConfig):
            models[name] = _named(name, value, models.get(name), ttl)
    _check_names(models.values())
    catalog = Catalog(models, DEFAULT_ROLES | roles)
    for role, name in msgspec.structs.asdict(settings.roles).items():
        if name is None:
            continue
        try:
            catalog.roles[role] = catalog.resolve(name, role).name  # an alias is fine too
        except ModelNotFound as exc:
            raise ConfigError(f"[roles] {role} = {name!r} names no model: {exc.message}") from None
    return catalog
