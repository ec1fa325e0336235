"""Shared bench helpers: a real gateway process on the default model, timing statistics, and
the BENCHMARKS.md table writer. Benchmarks report ratios and differences measured side by
side in one run, alternating the targets: on a shared, noisy machine an absolute time means
little."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from backends.catalog import GEMMA, builtin_models
from core.config import cache_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "BENCHMARKS.md"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The model every figure runs (the gateway's llama-server is compared with): gemma-3-270m.
BENCH_MODEL = builtin_models(cache_dir())[GEMMA]


class Gateway(NamedTuple):
    url: str
    llama: str  # its (first) llama-server
    pid: int


@contextmanager
def gateway(
    backend: str = "server", extra: str = "", tree: Path | None = None
) -> Iterator[Gateway]:
    """`ai-server serve` with gemma-3-270m in every role (one llama-server, which the
    figures compare against), with `extra` TOML appended to its config; its access log is
    formatted and written (to /dev/null), as in production. `tree`: the checkout whose code
    it runs (PYTHONPATH and working directory there; a git worktree of another commit), this
    one's by default."""
    port, llama_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as state:
        config = Path(state) / "config.toml"
        config.write_text(
            f'port = {port}\nbackend = "{backend}"\nstate_dir = "{state}"\n{extra}\n'
            f'[roles]\nchat = "{GEMMA}"\n[llama_server]\nport = {llama_port}\n'
        )
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
        url = f"http://127.0.0.1:{port}"
        env = None if tree is None else os.environ | {"PYTHONPATH": str(tree)}
        with process(argv, url + "/ready", env=env, cwd=tree) as child:
            if backend == "server":  # /ready is 200 while loadable: wait for the load
                wait_loaded(url, GEMMA)
            yield Gateway(url, f"http://127.0.0.1:{llama_port}", child.pid)


@contextmanager
def process(
    argv: list[str], ready_url: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` running (stderr discarded) once `ready_url` answers 200; terminated on exit."""
    child = subprocess.Popen(argv, stderr=subprocess.DEVNULL, env=env, cwd=cwd)  # noqa: S603
    try:
        wait_for(ready_url)
        yield child
    finally:
        child.terminate()
        child.wait(timeout=30)


def wait_loaded(url: str, model: str, within: float = 60) -> None:
    """Poll /ready (a probe: no API key needed) until `model`'s llama-server is READY."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/ready", timeout=within) as resp:  # noqa: S310
            processes = json.load(resp)["processes"]
        if any(p["name"] == model and p["state"] == "ready" for p in processes):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{model} was not loaded within {within:.0f} s")


def wait_for(url: str, within: float = 60) -> None:
    """Poll `url` until it answers 200 (urllib raises on anything else)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {within:.0f} s")


def rss_mib(pid: int, descendants: bool = False) -> float:
    """Resident memory of `pid` (and of its descendants, if asked), MiB."""
    pids = [pid]
    if descendants:
        pids += [p for p in _pids() if _descends(p, pid)]
    total = 0
    for each in pids:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue  # exited meanwhile
        total += sum(int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmRSS:")
    return total / 1024


def parent_pid(pid: int) -> int:
    """0 for a process that is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = parent_pid(pid)
        if pid == ancestor:
            return True
    return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.2f} / {percentile(values, 0.99) * 1000:.2f}"


class Machine:
    """How busy this shared machine was over a benchmark: the footer of its section."""

    def __init__(self) -> None:
        self.started, self.load = time.monotonic(), os.getloadavg()[0]

    def line(self) -> str:
        return (
            f"Load average (1 min) at the start {self.load:.1f}, at the end "
            f"{os.getloadavg()[0]:.1f}, on {os.cpu_count()} cores; "
            f"{time.monotonic() - self.started:.0f} s in all."
        )


def write_section(name: str, lines: list[str]) -> None:
    """Replace section `name` of BENCHMARKS.md (between its markers) with `lines`."""
    git = ["git", "rev-parse", "--short", "HEAD"]
    done = subprocess.run(git, capture_output=True, text=True, cwd=ROOT, check=False)  # noqa: S603
    commit = done.stdout.strip()
    stamp = f"_{datetime.now(UTC):%Y-%m-%d}, commit {commit}, {os.cpu_count()} cores_"
    block = "\n".join([f"<!-- {name} -->", stamp, "", *lines, f"<!-- /{name} -->"])
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    pattern = re.compile(f"<!-- {name} -->.*?<!-- /{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    RESULTS.write_text(text)
    print("\n".join(lines))
