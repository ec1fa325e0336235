"""`ai-server worker`'s decisions before it starts anything: what it runs, what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, Settings
from gateway.cli import parser
from gateway.worker import worker_spec
from supervisor.command import build_server_argv
from tests.helpers import gguf_bytes


def spec_for(tmp_path: Path, *argv: str) -> list[str]:
    args = parser().parse_args(["worker", *argv])
    spec = worker_spec(args, Settings(cache_dir=str(tmp_path / "cache")))
    return build_server_argv("bin", spec, host=args.host, port=args.port or 1)


def test_worker_serves_a_gguf_path_with_its_key_and_flags(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(gguf_bytes())
    key = tmp_path / "key"
    key.write_text("k\n")
    argv = spec_for(
        tmp_path, "--model", str(model), "--host", "10.231.1.2", "--port", "9000",
        "--api-key-file", str(key), "--threads", "1", "--ctx-size", "2048",
    )  # fmt: skip
    assert argv[:3] == ["bin", "--model", str(model)]
    for pair in (["--api-key-file", str(key)], ["--threads", "1"], ["--ctx-size", "2048"]):
        assert any(argv[i : i + 2] == pair for i in range(len(argv))), argv
    assert "--alias" in argv and "m" in argv  # answers with the file's name


def test_worker_refuses_a_lan_address_without_a_key(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(gguf_bytes())
    with pytest.raises(ConfigError, match="needs --api-key-file"):
        spec_for(tmp_path, "--model", str(model), "--host", "192.168.1.5")
    assert "--api-key-file" not in spec_for(tmp_path, "--model", str(model))  # loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])  # noqa: S104 - refused
def test_worker_refuses_rpc_on_every_interface(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="no authentication"):
        spec_for(tmp_path, "--rpc", "--host", host)


def test_worker_rpc_runs_rpc_server_with_its_threads(tmp_path: Path) -> None:
    argv = spec_for(tmp_path, "--rpc", "--host", "10.231.2.2", "--port", "50052", "--threads", "1")
    assert argv == ["bin", "--host", "10.231.2.2", "--port", "50052", "--threads", "1"]


def test_worker_names_a_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        spec_for(tmp_path, "--model", "gemma-3-270m")  # not in this empty cache
    with pytest.raises(ConfigError, match="no-such-model"):
        spec_for(tmp_path, "--model", "no-such-model")
