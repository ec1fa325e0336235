from __future__ import annotations

from pathlib import Path

import msgspec

from backends import toolchain
from core.config import Binaries, Settings
from gateway.doctor import run_doctor
from tests.conftest import free_port, write_script
from tests.helpers import gguf_bytes

VERSION = 'import sys; print("version: 42 (fake)", file=sys.stderr)\n'
BROKEN = 'import sys; print("cannot open shared object file", file=sys.stderr); sys.exit(127)\n'


def fake_settings(tmp_path: Path, broken: str | None = None) -> Settings:
    paths = {
        name.replace("-", "_"): str(
            write_script(tmp_path / name, BROKEN if name == broken else VERSION)
        )
        for name in toolchain.BINARIES
    }
    model = tmp_path / "m.gguf"
    model.write_bytes(gguf_bytes())
    return Settings(
        port=free_port(),
        cache_dir=str(tmp_path / "cache"),
        binaries=msgspec.convert(paths, Binaries),
        models={"chat": str(model), "embedding": str(model), "vision": str(model)},
    )


def run(settings: Settings) -> tuple[int, str]:
    lines: list[str] = []
    code = run_doctor(settings, lines.append)
    return code, "\n".join(lines)


def test_doctor_lists_binaries_versions_models_and_ports(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    code, out = run(settings)
    assert code == 0, out
    for name in toolchain.BINARIES:
        assert f"ok       {name}" in out
    # rpc-server has no --version: its --help is what shows it runs.
    assert out.count("version: 42 (fake)") == len(toolchain.BINARIES) - 1
    assert "GGUF v3, gemma3, 7 tensors" in out
    assert f"free     gateway           127.0.0.1:{settings.port}" in out


def test_doctor_fails_on_a_binary_that_does_not_run(tmp_path: Path) -> None:
    code, out = run(fake_settings(tmp_path, broken="llama-mtmd-cli"))
    assert code == 1
    assert "BROKEN   llama-mtmd-cli" in out and "exits 127" in out


def test_doctor_fails_on_missing_model_and_names_it(tmp_path: Path) -> None:
    settings = msgspec.structs.replace(
        fake_settings(tmp_path), models={"vision": str(tmp_path / "gone.gguf")}
    )
    code, out = run(settings)
    assert code == 1
    assert "MISSING  gone (vision): model gone:" in out and "gone.gguf does not exist" in out
