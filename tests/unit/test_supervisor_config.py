"""One mapping from `[llama_server]` to the supervisor's config, for the gateway and the worker."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from core.config import LlamaServer, Settings
from gateway.lifespan import supervisor_config as gateway_config
from gateway.worker import worker_config
from supervisor.command import ServerSpec
from supervisor.config import supervisor_config

SECTION = LlamaServer(
    host="127.0.0.9", port=9001, restart_limit=7, restart_window_s=99.0, backoff_initial_s=0.7,
    backoff_max_s=9.0, probe_timeout_s=4.5,
)  # fmt: skip
CRASH_HANDLING = {
    "restart_limit": 7,
    "restart_window": 99.0,
    "backoff_initial": 0.7,
    "backoff_max": 9.0,
    "probe_timeout": 4.5,
}


def picked(config: object) -> dict[str, object]:
    return {key: getattr(config, key) for key in CRASH_HANDLING}


def test_supervisor_config_maps_every_llama_server_key() -> None:
    config = supervisor_config(SECTION, binary="llama-server", state_dir="/tmp/s")
    assert picked(config) == CRASH_HANDLING
    assert (config.host, config.base_port) == ("127.0.0.9", 9001)


def test_gateway_and_worker_read_the_section_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker used to drop probe_timeout_s."""
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    settings = Settings(llama_server=SECTION, state_dir=str(tmp_path / "state"))
    monkeypatch.setattr("backends.toolchain.resolve_binary", lambda *args: binary)
    spec = ServerSpec(model="/m.gguf", ctx_size=512, batch_size=64, ubatch_size=32)
    args = argparse.Namespace(state_dir=str(tmp_path / "w"), host="10.0.0.2", port=9100)
    worker = worker_config(args, settings, spec)
    gateway = gateway_config(settings, 2048)
    assert picked(worker) == picked(gateway) == CRASH_HANDLING
    assert (worker.host, worker.base_port) == ("10.0.0.2", 9100)
    assert (gateway.memory_budget_mb, gateway.base_port) == (2048, 9001)
