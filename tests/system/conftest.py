"""The service under a real systemd: a Debian container (tests/system/nspawn.py) booted once
per module, with the project installed in it by `make install`, as an operator does.

Marked `system`: `pytest -m system` runs these alone, `-m "not system"` leaves them out.
They skip, saying how to fix it, without root, debootstrap or systemd-nspawn (`make
systemd-deps`), or without the built llama.cpp and models (`make setup`)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends import toolchain
from tests.conftest import free_port
from tests.system import nspawn

ROOT = Path(__file__).parents[2]
SRC = Path("/src")  # the copy of the checkout, inside
# What a copy of the checkout leaves out: the dev virtualenv and every tool's cache.
NOT_COPIED = (".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
              "build", "*.egg-info", ".hypothesis")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.system)


@dataclass
class Installed:
    """The container after `make install`: where the gateway listens (on the host's
    network: the container shares it), and what the install printed and took."""

    ct: nspawn.Container
    port: int
    llama_port: int
    cache: Path
    install_output: str
    install_seconds: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def show(self, prop: str, unit: str = "ai-server") -> str:
        return self.ct.run(f"systemctl show -p {prop} --value {unit}").stdout.strip()


def test_config(port: int, llama_port: int) -> str:
    """deploy/config.example.toml with these ports and a models_dir to rescan."""
    text = (ROOT / "deploy" / "config.example.toml").read_text()
    text = text.replace("\nport = 8000\n", f"\nport = {port}\n", 1)
    text = text.replace("\nport = 8080 ", f"\nport = {llama_port} ", 1)
    return text.replace('\nmodels_dir = ""', '\nmodels_dir = "/var/lib/ai-server/models"', 1)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Iterator[nspawn.Container]:
    if why := nspawn.missing_tools():
        pytest.skip(why)
    bin_dir = toolchain.llama_bin_dir(cache)
    if not (bin_dir / ".complete").is_file() or not toolchain.smollm2_model_path(cache).is_file():
        pytest.skip("no built llama.cpp and models in the cache: `make setup`")
    try:
        root = nspawn.build_root(cache)
    except nspawn.Unavailable as exc:
        pytest.skip(str(exc))
    top = tmp_path_factory.mktemp("system")
    src = top / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_COPIED))
    binds = [
        f"--bind={src}:{SRC}",  # a copy: pip builds the project in it
        # llama.cpp and the models, read-only, at the same path: the cache install copies.
        f"--bind-ro={cache / 'llama.cpp'}",
        f"--bind-ro={cache / 'models'}",
    ]
    extra_ca = Path("/usr/local/share/ca-certificates")  # this network's, for pip
    if extra_ca.is_dir():
        binds.append(f"--bind-ro={extra_ca}")
    try:
        with nspawn.booted(root, f"ai-server-test-{top.name}", top / "nspawn.log", binds) as ct:
            yield ct
    except nspawn.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def installed(container: nspawn.Container, cache: Path) -> Installed:
    """`make install` in the container, with a config already in /etc/ai-server (an
    operator's: install keeps it) naming free ports and a models_dir."""
    ct = container
    port, llama_port = free_port(), free_port()
    ct.run("update-ca-certificates >/dev/null 2>&1 || true")
    config = test_config(port, llama_port)
    ct.run(
        "mkdir -p /etc/ai-server /var/lib/ai-server/models && "
        f"cat > /etc/ai-server/config.toml <<'EOF'\n{config}EOF"
    )
    started = time.monotonic()
    done = ct.run(
        f"cd {SRC} && AI_SERVER_CACHE={cache} make --no-print-directory install "
        f"INSTALL_ARGS='--port {port} --llama-port {llama_port}' 2>&1",
        timeout=900,
    )
    return Installed(ct, port, llama_port, cache, done.stdout, time.monotonic() - started)
