"""The supervisor's settings, and the one mapping from the `[llama_server]` config section to
them (the gateway and `ai-server worker` used to build their own, and the worker's dropped
`probe_timeout`)."""

from __future__ import annotations

import msgspec

from core.config import LlamaServer


class SupervisorConfig(msgspec.Struct, frozen=True, kw_only=True):
    binary: str
    state_dir: str
    host: str = "127.0.0.1"
    base_port: int = 8080
    # A load is given up only after this long without any output from the child, so a big
    # model on a slow disk that keeps logging progress is never killed mid-load.
    load_timeout: float = 60.0
    start_wait: float = 120.0  # how long a caller waits for a process to become READY
    health_interval: float = 5.0
    health_timeout: float = 3.0
    health_failures: int = 3
    probe_timeout: float = 20.0
    restart_limit: int = 5
    restart_window: float = 300.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    stop_grace: float = 5.0
    drain_timeout: float = 30.0
    memory_budget_mb: int = 1 << 40  # the pool's budget; the default is no limit
    # A request waits this long for memory to load its model, or for its model to come back
    # from a crash ([limits] queue_timeout_s in the gateway).
    memory_wait: float = 60.0


def supervisor_config(
    section: LlamaServer,
    *,
    binary: str,
    state_dir: str,
    host: str | None = None,
    base_port: int | None = None,
    memory_budget_mb: int | None = None,
    memory_wait: float | None = None,
) -> SupervisorConfig:
    """`[llama_server]` as the supervisor reads it; `host` and `base_port` default to the
    section's, the pool's budget and wait to no limit and 60 s."""
    pool: dict[str, float | int] = {}
    if memory_budget_mb is not None:
        pool["memory_budget_mb"] = memory_budget_mb
    if memory_wait is not None:
        pool["memory_wait"] = memory_wait
    return SupervisorConfig(
        binary=binary,
        state_dir=state_dir,
        host=section.host if host is None else host,
        base_port=section.port if base_port is None else base_port,
        restart_limit=section.restart_limit,
        restart_window=section.restart_window_s,
        backoff_initial=section.backoff_initial_s,
        backoff_max=section.backoff_max_s,
        probe_timeout=section.probe_timeout_s,
        **pool,  # type: ignore[arg-type]
    )
