from __future__ import annotations

from pathlib import Path

import pytest

from backends import toolchain
from core.config import cache_dir
from core.errors import MissingComponent
from tests.conftest import write_script


def make_cache(root: Path, *names: str) -> Path:
    bin_dir = toolchain.llama_bin_dir(root)
    bin_dir.mkdir(parents=True)
    (bin_dir / ".complete").write_text(toolchain.LLAMA_CPP_VERSION)
    for name in names:
        write_script(bin_dir / name, "")
    return root


def test_cache_dir_prefers_explicit_env() -> None:
    assert cache_dir({"AI_SERVER_CACHE": "/x/y"}) == Path("/x/y")
    assert cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/ai-server")


def test_resolve_binary_explicit_path_wins(tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "cache", "llama-server")
    explicit = write_script(tmp_path / "my-server", "")
    assert toolchain.resolve_binary("llama-server", str(explicit), cache) == explicit


def test_resolve_binary_explicit_not_executable_names_it(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(MissingComponent, match=r"llama-server: .*plain .*not an executable"):
        toolchain.resolve_binary("llama-server", str(plain), tmp_path)


def test_resolve_binary_cache_before_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(tmp_path / "cache", "llama-cli")
    on_path = tmp_path / "path"
    on_path.mkdir()
    write_script(on_path / "llama-cli", "")
    monkeypatch.setenv("PATH", str(on_path))
    assert toolchain.resolve_binary("llama-cli", None, cache) == (
        toolchain.llama_bin_dir(cache) / "llama-cli"
    )


def test_resolve_binary_incomplete_cache_falls_back_to_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make_cache(tmp_path / "cache", "llama-cli")
    (toolchain.llama_bin_dir(cache) / ".complete").unlink()
    on_path = tmp_path / "path"
    on_path.mkdir()
    found = write_script(on_path / "llama-cli", "")
    monkeypatch.setenv("PATH", str(on_path))
    assert toolchain.resolve_binary("llama-cli", None, cache) == found


def test_resolve_binary_missing_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingComponent, match=r"llama-embedding: .*run `make llama`"):
        toolchain.resolve_binary("llama-embedding", None, tmp_path)


def test_resolve_model_default_and_missing(tmp_path: Path) -> None:
    with pytest.raises(MissingComponent, match=r"default model for chat: .*run `make model`"):
        toolchain.resolve_model("chat", None, tmp_path)
    target = toolchain.default_model_path(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF")
    assert toolchain.resolve_model("chat", None, tmp_path) == target


def test_resolve_model_explicit_missing_names_path(tmp_path: Path) -> None:
    with pytest.raises(MissingComponent, match=r"model for vision: .*nope.gguf"):
        toolchain.resolve_model("vision", str(tmp_path / "nope.gguf"), tmp_path)
