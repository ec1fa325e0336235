"""LiteLLM's proxy as the peer in the overhead figure: installed from PyPI into a venv of its
own beside the build cache (it is not a dependency of AI Server), started in front of the same
llama-server the gateway supervises. If it cannot be installed or started, the benchmark says
so and reports the rest."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import free_port, wait_for
from core.config import cache_dir

VERSION = "1.108.7"  # pinned: a figure is only comparable against the same peer
MODEL = "gemma"  # the model name clients send to LiteLLM


def venv() -> Path:
    return cache_dir() / "bench" / f"litellm-{VERSION}"


def install() -> Path:
    """The litellm executable, installing it on first use (about 750 MB)."""
    path = venv()
    binary = path / "bin" / "litellm"
    if not binary.exists():
        print(f"installing litellm[proxy]=={VERSION} into {path} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)  # noqa: S603
        pip = [str(path / "bin" / "pip"), "install", "--quiet", f"litellm[proxy]=={VERSION}"]
        subprocess.run(pip, check=True)  # noqa: S603
    return binary


@contextmanager
def litellm_proxy(llama_url: str) -> Iterator[str | None]:
    """LiteLLM's proxy on a free port, routing model `gemma` to `llama_url`; yields its URL,
    or None (after saying why on stderr) when it cannot run here."""
    try:
        binary = install()
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"LiteLLM skipped: it could not be installed ({exc})", file=sys.stderr)
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: {llama_url}/v1\n"
            "      api_key: none\n"
            "litellm_settings:\n"
            "  drop_params: true\n"
            "  telemetry: false\n"
            # No key, like the gateway in this figure (it refuses to start keyless otherwise).
            "general_settings:\n"
            "  dangerously_permit_weak_or_unset_master_key: true\n"
        )
        # No network at run time: the bundled model cost map, not the one on GitHub.
        env = os.environ | {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        argv = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(  # noqa: S603
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            try:
                wait_for(url + "/health/liveliness", within=180)
            except RuntimeError as exc:
                print(f"LiteLLM skipped: {exc}", file=sys.stderr)
                yield None
                return
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)
