"""`ai-server doctor`: what this machine has for the configured server, and what is missing.

Prints each llama.cpp binary with its resolved path and version, every model with its roles,
size, GGUF header and memory estimate, every remote instance (reached, key accepted) and
RPC worker (reached), and whether the configured ports are free. Exits non-zero when a
binary or a role's model is missing or unreadable, or a remote or worker fails its check;
a busy port is reported, not fatal (it may be us).
"""

from __future__ import annotations

import errno
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import anyio

from backends import toolchain
from backends.catalog import build_catalog
from backends.gguf_meta import NotGguf, read_meta
from backends.specs import estimate_mb, server_spec
from core.config import ConfigError, Settings
from core.errors import MissingComponent
from supervisor.health import probe_tcp
from supervisor.process import bind_error
from supervisor.remote import RemoteSpec

Print = Callable[[str], None]


def binary_version(path: Path) -> tuple[bool, str]:
    """Whether `path --version` runs, and its `version:` line (llama.cpp prints it on stderr).
    rpc-server has no --version (it prints its usage for any unknown flag): its `--help`."""
    flag = "--help" if path.name == "rpc-server" else "--version"
    try:
        done = subprocess.run(  # noqa: S603 - argv list, resolved binary
            [str(path), flag], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot run: {exc}"
    lines = (done.stdout + done.stderr).strip().splitlines() or ["no output"]
    if missing := toolchain.load_failure(done.stderr):
        return False, f"does not load: {missing}"
    if done.returncode != 0:
        return False, f"`{flag}` exits {done.returncode}: {lines[-1]}"
    if flag == "--help":
        return True, "runs (no --version; built with llama-server)"
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


def check_remote(remote: RemoteSpec, timeout: float) -> str | None:
    """None if the remote llama-server answers an authenticated `GET /slots`, else why."""
    headers = {"Authorization": f"Bearer {remote.api_key}"} if remote.api_key else {}
    request = urllib.request.Request(remote.url + "/slots", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 - configured URL
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return f"the API key was refused (HTTP {exc.code})"
        return None if exc.code == 501 else f"answers HTTP {exc.code}"  # 501: --no-slots
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable: {getattr(exc, 'reason', exc)}"


def check_rpc_worker(address: str, timeout: float) -> str | None:
    """None if the worker accepts a connection (the supervisor's own check of it)."""
    return None if anyio.run(probe_tcp, address, timeout) else "unreachable"


def check_instances(settings: Settings, say: Print) -> bool:
    """Every remote instance (reached, key accepted) and RPC worker (reached)."""
    try:
        catalog = build_catalog(settings)
    except ConfigError:
        return False  # check_models said why
    ok = True
    timeout = settings.remote.connect_timeout_s + settings.remote.probe_timeout_s
    for name, model in catalog.models.items():
        checks = [(f"remote {r.url}", check_remote(r, timeout)) for r in model.remotes]
        checks += [(f"rpc worker {w}", check_rpc_worker(w, timeout)) for w in model.rpc_workers]
        for what, problem in checks:
            say(
                f"  {'ok' if problem is None else 'FAILING':<8} {name}: {what}"
                + (f": {problem}" if problem else "")
            )
            ok = ok and problem is None
    if ok and not any(m.remotes or m.rpc_workers for m in catalog.models.values()):
        say("  none configured")
    return ok


def run_doctor(settings: Settings, say: Print = print) -> int:
    say("llama.cpp binaries:")
    binaries_ok = check_binaries(settings, say)
    say("models:")
    models_ok = check_models(settings, say)
    say("remote instances and RPC workers:")
    instances_ok = check_instances(settings, say)
    say("ports:")
    ports = [
        ("gateway", settings.host, settings.port),
        ("llama-server", settings.llama_server.host, settings.llama_server.port),
    ]
    if settings.ollama.enabled:
        ports.append(("ollama listener", *settings.ollama.address()))
    for what, host, port in ports:
        say(f"  {port_state(host, port):<8} {what:<17} {host}:{port}")
    return 0 if binaries_ok and models_ok and instances_ok else 1
