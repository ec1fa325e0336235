"""Settings: the TOML config file's schema, defaults and loading.

Every section forbids unknown fields, so a typo is an error naming the key rather than a
silently ignored setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Backend = Literal["server", "cli"]


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


# Constraints shared by the config file, /api/config and per-request overrides.
CtxSize = Annotated[int, Meta(gt=0, le=1 << 20)]
Temp = Annotated[float, Meta(ge=0, le=100)]
TopP = Annotated[float, Meta(gt=0, le=1)]
TopK = Annotated[int, Meta(ge=0, le=1 << 20)]
PresencePenalty = Annotated[float, Meta(ge=-2, le=2)]
Mirostat = Literal[0, 1, 2]
BatchSize = Annotated[int, Meta(gt=0, le=1 << 20)]


class LlmParams(_Section, frozen=True):
    """The eight parameters applied to every task in both modes."""

    ctx_size: CtxSize = 12192
    temp: Temp = 0.35
    top_p: TopP = 0.9
    top_k: TopK = 40
    presence_penalty: PresencePenalty = 0.2
    mirostat: Mirostat = 0
    batch_size: BatchSize = 8192
    ubatch_size: BatchSize = 1024

    def __post_init__(self) -> None:
        if self.ubatch_size > self.batch_size:
            raise ValueError("`ubatch_size` must not exceed `batch_size`")


class RemoteConfig(_Section, frozen=True):
    """`[[models.NAME.remote]]`: a llama-server of this model on another host (`ai-server
    worker` there). Its key: `api_key`, or `api_key_file` (the key on its first line)."""

    url: str
    api_key: str | None = None
    api_key_file: str | None = None
    weight: Annotated[int, Meta(ge=1, le=1000)] = 1  # breaks ties between equally idle ones


class ModelConfig(_Section, frozen=True):
    """One named model, `[models.NAME]`: NAME is its id in requests."""

    path: str | None = None  # the GGUF file; optional only to redefine a built-in model
    mmproj: str | None = None  # a projector: makes it a vision model
    aliases: list[str] = []
    # None: the GGUF's own (Jinja) template; a llama.cpp built-in name ("gemma", "chatml")
    # with --no-jinja; anything else is Jinja source.
    chat_template: str | None = None
    chat_template_file: str | None = None  # Jinja source in a file (instead of chat_template)
    ctx_size: CtxSize | None = None  # overrides of the startup parameters, for this model
    batch_size: BatchSize | None = None
    ubatch_size: BatchSize | None = None
    embeddings: bool = True  # serves /v1/embeddings too
    # Unload after this long idle; unset: [llama_server] idle_unload_s; 0: never.
    ttl_s: Annotated[float, Meta(ge=0)] | None = None
    pinned: bool = False  # never evicted to make room; loaded at startup
    # Instances: local llama-servers (0: remote only, and `path` is optional), remote ones,
    # and llama.cpp RPC workers ("HOST:PORT") that take `gpu_layers` of a local one's layers.
    replicas: Annotated[int, Meta(ge=0, le=64)] = 1
    remote: list[RemoteConfig] = []
    rpc_workers: list[str] = []
    gpu_layers: Annotated[int, Meta(ge=0)] | None = None
    threads: Annotated[int, Meta(ge=1, le=1024)] | None = None  # CPU threads; llama.cpp's default


# The keys of the old one-model-per-role `[models]` section: string values, reserved names.
LEGACY_MODEL_KEYS = ("chat", "embedding", "vision", "mmproj", "chat_template")


class Roles(_Section, frozen=True):
    """Which model a request that names none gets; unset: the built-in defaults."""

    chat: str | None = None
    embedding: str | None = None
    vision: str | None = None


class Pool(_Section, frozen=True):
    memory_budget_mb: Annotated[int, Meta(ge=0)] = 0  # 0: 75% of physical memory
    models_dir: str = ""  # every GGUF file in it is a model named after the file


class LlamaServer(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8080  # the first process; more take the next
    # Stop a process idle this long; the next request starts it again. Off when unset.
    idle_unload_s: Annotated[float, Meta(gt=0)] | None = None
    # Crash handling: restarts back off from backoff_initial_s doubling to backoff_max_s;
    # more than restart_limit restarts within restart_window_s is FAILED (until a config
    # change re-arms it). A request that fails upstream triggers a one-token
    # probe; no answer within probe_timeout_s restarts the process.
    restart_limit: Annotated[int, Meta(ge=0)] = 5
    restart_window_s: Annotated[float, Meta(gt=0)] = 300.0
    backoff_initial_s: Annotated[float, Meta(gt=0)] = 0.5
    backoff_max_s: Annotated[float, Meta(gt=0)] = 30.0
    probe_timeout_s: Annotated[float, Meta(gt=0)] = 20.0


class RemoteLimits(_Section, frozen=True):
    """`[remote]`: how the gateway watches remote instances and RPC workers. A probe is an
    authenticated `GET /slots`; a remote that does not answer one within probe_timeout_s
    (a frozen host) cools down and gets no requests until a probe passes."""

    connect_timeout_s: Annotated[float, Meta(gt=0)] = 2.0
    probe_interval_s: Annotated[float, Meta(gt=0)] = 1.0
    probe_timeout_s: Annotated[float, Meta(gt=0)] = 2.0


class Binaries(_Section, frozen=True):
    """Explicit binary paths; unset means the build cache, then PATH."""

    llama_server: str | None = None
    llama_completion: str | None = None
    llama_cli: str | None = None
    llama_mtmd_cli: str | None = None
    llama_embedding: str | None = None
    rpc_server: str | None = None
    llama_tokenize: str | None = None

    def get(self, name: str) -> str | None:
        value: str | None = getattr(self, name.replace("-", "_"))
        return value


class Limits(_Section, frozen=True):
    # In flight at once per running llama-server (it runs 4 slots), and cli processes in all.
    max_concurrency: Annotated[int, Meta(ge=1)] = 4
    cli_concurrency: Annotated[int, Meta(ge=1)] = 1
    max_queue: Annotated[int, Meta(ge=0)] = 16  # waiting per model beyond that: 429
    # Waited longer (for a slot, or for memory to load a model in): 503.
    queue_timeout_s: Annotated[float, Meta(gt=0)] = 60.0
    request_timeout_s: Annotated[float, Meta(gt=0)] = 300.0  # total (streams: per event): 504
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 16 * 2**20
    default_max_tokens: Annotated[int, Meta(ge=1)] = 512
    shutdown_grace_s: Annotated[int, Meta(ge=0)] = 30  # in-flight requests get this long
    # Slow clients. Total deadlines (not idle timers) for a request's headers, from the
    # connection's first byte, and for its body, from the end of its headers: past one, 408
    # and the connection closed. Idle keep-alive connections close after keepalive_timeout_s.
    # Over max_connections open at once, a new one gets an immediate JSON 503.
    header_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    body_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    keepalive_timeout_s: Annotated[float, Meta(gt=0)] = 5.0
    max_connections: Annotated[int, Meta(ge=1)] = 1024
    # Fair shares. A client is its key's name, or without keys its address (X-Forwarded-For
    # is believed only from trusted_proxies: addresses or networks). per_client_concurrency
    # caps one client's requests in flight per model (0: off); waiting requests get freed
    # slots round-robin across clients, each client's own line holding per_client_queue
    # (beyond it: 429).
    per_client_concurrency: Annotated[int, Meta(ge=0)] = 0
    per_client_queue: Annotated[int, Meta(ge=0)] = 8
    trusted_proxies: list[str] = []


class NamedKey(_Section, frozen=True):
    """`[auth.keys.NAME]`: a key with a name, which metrics, logs and fair sharing use (never
    the key). `key`, or `key_file` (the key on its first line)."""

    key: str | None = None
    key_file: str | None = None
    admin: bool = False
    # Rate budgets (unset: none): requests, and prompt plus completion tokens, per minute.
    requests_per_minute: Annotated[int, Meta(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Meta(ge=1)] | None = None


class Auth(_Section, frozen=True):
    """Bearer API keys for /api and /v1; admin keys also for POST /api/config. Named keys are
    `[auth.keys.NAME]` tables; bare keys (below, from a file with one per line, and from
    $AI_SERVER_API_KEYS / $AI_SERVER_ADMIN_KEYS, comma separated) are named key-1, key-2..."""

    keys: dict[str, NamedKey] = {}
    api_keys: list[str] = []
    admin_keys: list[str] = []
    api_keys_file: str | None = None
    protect_probes: bool = False  # /health, /ready, /metrics need a key too
    # A non-loopback host with no keys is refused at startup unless this is set.
    allow_unauthenticated: bool = False
    # Addresses or networks ("192.168.1.0/24") whose requests need no key, on either port:
    # each address is one client (fair shares, limits), never an admin. Keys still work.
    open_networks: list[str] = []
    # Each such address's rate budgets, as a named key's (unset: none).
    open_requests_per_minute: Annotated[int, Meta(ge=1)] | None = None
    open_tokens_per_minute: Annotated[int, Meta(ge=1)] | None = None


class Ollama(_Section, frozen=True):
    """`[ollama]`: a second listener that speaks Ollama's API (and serves /v1 too), in the
    same process, with the same models, keys and limits."""

    enabled: bool = True
    listen: str = "127.0.0.1:11434"  # HOST:PORT ([::1]:PORT for IPv6): Ollama's own default
    # What GET /api/version says: clients compare it with the release that brought a
    # feature (VS Code's Ollama provider wants 0.6.4 or later).
    version: Annotated[str, Meta(pattern=r"^\d+\.\d+\.\d+$")] = "0.12.6"

    def __post_init__(self) -> None:
        self.address()

    def address(self) -> tuple[str, int]:
        """`listen` as (host, port); ValueError naming the setting if it is not HOST:PORT."""
        host, sep, port = self.listen.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"`listen` must be HOST:PORT, not {self.listen!r}")
        return host, int(port)


class Vision(_Section, frozen=True):
    max_image_bytes: Annotated[int, Meta(ge=1024)] = 20 * 2**20  # 413 above
    max_pixels: Annotated[int, Meta(ge=1)] = 50_000_000  # declared size; checked before decoding
    max_side: Annotated[int, Meta(ge=14)] = 1024  # longer images are scaled down


class Logging(_Section, frozen=True):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8000
    backend: Backend = "server"
    state_dir: str = "~/.local/state/ai-server"
    cache_dir: str | None = None
    llm_params: LlmParams = LlmParams()
    # `[models.NAME]` tables are named models; string values are the old per-role keys.
    models: dict[str, str | ModelConfig] = {}
    roles: Roles = Roles()
    pool: Pool = Pool()
    remote: RemoteLimits = RemoteLimits()
    llama_server: LlamaServer = LlamaServer()
    binaries: Binaries = Binaries()
    limits: Limits = Limits()
    auth: Auth = Auth()
    ollama: Ollama = Ollama()
    vision: Vision = Vision()
    logging: Logging = Logging()

    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()

    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else cache_dir()


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """The per-machine cache, outside any checkout: ``$AI_SERVER_CACHE`` or XDG's cache."""
    if explicit := env.get("AI_SERVER_CACHE"):
        return Path(explicit).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "ai-server"


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What /api/config changes at runtime, and what the state directory persists."""

    backend: Backend
    llm_params: LlmParams


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message says which and where."""


def secret_of(key: str | None, key_file: str | None, where: str) -> str | None:
    """A key given inline or as a file holding it on its first line (one of the two)."""
    if key is not None and key_file is not None:
        raise ConfigError(f"{where}: set the key or the key file, not both")
    if key_file is None:
        return key or None
    try:
        return Path(key_file).expanduser().read_text().strip().splitlines()[0]
    except (OSError, IndexError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is empty"
        raise ConfigError(f"{where}: cannot read key file {key_file}: {why}") from None


def load_settings(path: str | Path | None, env: Mapping[str, str] = os.environ) -> Settings:
    """Load `path`, else ``$AI_SERVER_CONFIG``, else the defaults."""
    chosen = path or env.get("AI_SERVER_CONFIG")
    if not chosen:
        return Settings()
    try:
        data = Path(chosen).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {chosen}: {exc.strerror}") from exc
    try:
        return msgspec.toml.decode(data, type=Settings)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"invalid config {chosen}: {exc}") from exc
