"""`ai-server doctor`: what this machine has for the configured server, and what is missing.

Prints each llama.cpp binary with its resolved path and version, every model with its roles,
size, GGUF header and memory estimate, and whether the configured ports are free. Exits
non-zero when a binary or a role's model is missing or unreadable; a busy port is reported,
not fatal (it may be us).
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable
from pathlib import Path

from backends import toolchain
from backends.catalog import build_catalog
from backends.gguf_meta import NotGguf, read_meta
from backends.specs import estimate_mb, server_spec
from gateway.config import ConfigError, Settings
from gateway.errors import MissingComponent
from supervisor.process import bind_error

Print = Callable[[str], None]


def binary_version(path: Path) -> tuple[bool, str]:
    """Whether `path --version` runs, and its `version:` line (llama.cpp prints it on stderr)."""
    try:
        done = subprocess.run(  # noqa: S603 - argv list, resolved binary
            [str(path), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot run: {exc}"
    lines = (done.stdout + done.stderr).strip().splitlines() or ["no output"]
    if done.returncode != 0:
        return False, f"`--version` exits {done.returncode}: {lines[-1]}"
    return True, next((ln for ln in lines if ln.startswith("version:")), lines[0])


def port_state(host: str, port: int) -> str:
    if (exc := bind_error(host, port)) is None:
        return "free"
    return "in use" if exc.errno == errno.EADDRINUSE else f"unusable ({exc.strerror})"


def check_binaries(settings: Settings, say: Print) -> bool:
    ok = True
    cache = settings.cache_path()
    for name in toolchain.BINARIES:
        try:
            path = toolchain.resolve_binary(name, settings.binaries.get(name), cache)
        except MissingComponent as exc:
            say(f"  MISSING  {exc.message}")
            ok = False
            continue
        runs, version = binary_version(path)
        say(f"  {'ok' if runs else 'BROKEN':<8} {name:<17} {path}  {version}")
        ok = ok and runs
    return ok


def check_models(settings: Settings, say: Print) -> bool:
    """Every model of the catalog: its file and projector, GGUF header, estimate, roles.
    A missing file fails the check only for a model a role points at."""
    try:
        catalog = build_catalog(settings)
    except ConfigError as exc:
        say(f"  INVALID  {exc}")
        return False
    ok = True
    params = settings.llm_params
    for name, model in catalog.models.items():
        roles = ",".join(catalog.roles_of(name)) or "-"
        try:
            meta = read_meta(model.file())
        except (MissingComponent, NotGguf) as exc:
            needed = roles != "-"
            say(f"  {'MISSING' if needed else 'absent':<8} {name} ({roles}): {exc}")
            ok = ok and not needed
            continue
        size = Path(model.path).stat().st_size / 2**20
        estimate = estimate_mb(server_spec(model, params))
        projector = ", projector" if model.mmproj and Path(model.mmproj).is_file() else ""
        say(
            f"  ok       {name} ({roles}) {model.path}  {size:.0f} MiB, GGUF v{meta.version}, "
            f"{meta.architecture}, {meta.tensor_count} tensors{projector}; "
            f"estimate {estimate} MiB at ctx {model.ctx_size or params.ctx_size}"
        )
    return ok


def run_doctor(settings: Settings, say: Print = print) -> int:
    say("llama.cpp binaries:")
    binaries_ok = check_binaries(settings, say)
    say("models:")
    models_ok = check_models(settings, say)
    say("ports:")
    for what, host, port in (
        ("gateway", settings.host, settings.port),
        ("llama-server", settings.llama_server.host, settings.llama_server.port),
    ):
        say(f"  {port_state(host, port):<8} {what:<17} {host}:{port}")
    return 0 if binaries_ok and models_ok else 1
