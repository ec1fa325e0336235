"""The runtime config (`backend` + `llm_params`): what /api/config reads and changes.

Starts from the config file, overlaid by what was last saved in the state directory, so
changes survive a restart. Updates are serialized by a lock, validated as a whole before
anything changes, saved atomically (temp file, fsync, rename), and only then applied."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import msgspec
from msgspec import UNSET

from core.config import ConfigError, LlmParams, RuntimeConfig, Settings
from core.errors import BadRequest, StateError
from gateway.schemas import ConfigUpdate

FILE_NAME = "config.json"


def merged(current: RuntimeConfig, update: ConfigUpdate) -> RuntimeConfig:
    """`current` with `update` applied; BadRequest naming the field (`param`, e.g.
    "llm_params.top_p") if the result is invalid."""
    if update.backend is not UNSET and update.llm_mode is not UNSET:
        if update.backend != update.llm_mode:
            raise BadRequest("`backend` and its alias `llm_mode` disagree", param="llm_mode")
    backend = update.backend if update.backend is not UNSET else update.llm_mode
    params = current.llm_params
    if update.llm_params is not UNSET:
        params = merged_params(params, update.llm_params)
    return RuntimeConfig(
        backend=current.backend if backend is UNSET else backend, llm_params=params
    )


PARAM_TYPES = {f.name: f.type for f in msgspec.structs.fields(LlmParams)}


def merged_params(params: LlmParams, changes: dict[str, object]) -> LlmParams:
    """Each changed field checked on its own first, so the error names the one at fault;
    then the whole, for the checks between fields (ubatch_size <= batch_size)."""
    for name, value in changes.items():
        if name not in PARAM_TYPES:
            known = ", ".join(PARAM_TYPES)
            raise BadRequest(
                f"unknown field `llm_params.{name}` (the parameters are: {known})",
                param=f"llm_params.{name}",
            )
        try:
            msgspec.convert(value, PARAM_TYPES[name], strict=True)
        except msgspec.ValidationError as exc:
            raise BadRequest(
                f"invalid `llm_params.{name}`: {exc}", param=f"llm_params.{name}"
            ) from None
    try:
        return msgspec.convert(msgspec.to_builtins(params) | changes, LlmParams, strict=True)
    except msgspec.ValidationError as exc:
        # The only check between fields; name the one this update changed.
        culprit = "ubatch_size" if "ubatch_size" in changes else "batch_size"
        raise BadRequest(f"invalid llm_params: {exc}", param=f"llm_params.{culprit}") from None


def save(path: Path, config: RuntimeConfig) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(config)) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StateError(
            f"cannot save the config in {path.parent}: {exc.strerror or exc}; nothing changed"
        ) from None


class ConfigStore:
    def __init__(self, path: Path, current: RuntimeConfig) -> None:
        self.path = path
        self.current = current
        self._lock = anyio.Lock()

    @classmethod
    def open(cls, settings: Settings) -> ConfigStore:
        path = settings.state_path() / FILE_NAME
        current = RuntimeConfig(backend=settings.backend, llm_params=settings.llm_params)
        try:
            current = msgspec.json.decode(path.read_bytes(), type=RuntimeConfig)
        except FileNotFoundError:
            pass
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"saved config {path} is unusable ({exc}); fix or remove it") from exc
        return cls(path, current)

    async def update(
        self, update: ConfigUpdate, apply: Callable[[RuntimeConfig], Awaitable[None]]
    ) -> RuntimeConfig:
        async with self._lock:
            new = merged(self.current, update)
            if new != self.current:
                await anyio.to_thread.run_sync(save, self.path, new)
                self.current = new
                await apply(new)
            return new
