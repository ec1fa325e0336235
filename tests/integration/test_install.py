"""`sudo make install` / `uninstall` (deploy/install.py), for real: into a DESTDIR for
packaging, and as root into a throwaway prefix, user and port, then started exactly as the
installed unit's ExecStart says, as that user."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import toolchain
from tests.conftest import free_port

ROOT = Path(__file__).parents[2]
INSTALL = [sys.executable, str(ROOT / "deploy" / "install.py")]


def install(*args: str) -> str:
    done = subprocess.run([*INSTALL, *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def make(target: str, dest: Path) -> str:
    """`make install DESTDIR=...` as a packager runs it."""
    argv = ["make", "--no-print-directory", target, f"DESTDIR={dest}", "INSTALL_ARGS=--port=8123"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def snapshot(top: Path) -> dict[str, tuple[int, int, int, float]]:
    """Every path under `top`: mode, owner, group, mtime (what a second install must keep)."""
    found = {}
    for path in [top, *top.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(top))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime)
    return found


def unit_field(unit: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(key)]


def test_install_into_a_destdir_writes_every_file_once(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    first = make("install", dest)
    assert "nothing changed" not in first
    me = os.geteuid()
    prefix, etc = dest / "opt/ai-server", dest / "etc/ai-server"
    # The virtualenv runs from PREFIX, not from where it was built.
    ai_server = prefix / "bin/ai-server"
    assert ai_server.read_text().splitlines()[0] == "#!/opt/ai-server/bin/python"
    assert str(dest) not in (prefix / "pyvenv.cfg").read_text()
    assert (prefix / ".install-state").is_file()
    # The dashboard's pages and files are package data: a non-editable install has them.
    site = next(prefix.glob("lib/python3*/site-packages/gateway"))
    assert (site / "templates/base.html").is_file() and (site / "static/common.js").is_file()
    cache = dest / "var/lib/ai-server/cache"
    assert (toolchain.llama_bin_dir(cache) / "rpc-server").is_file()
    for model in (toolchain.default_model_path, toolchain.smollm2_model_path):
        assert model(cache).is_file()
    config = etc / "config.toml"
    assert "\nport = 8123\n" in config.read_text()
    keys = etc / "keys.env"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and keys.stat().st_uid == me
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    for unit in ("ai-server.service", "ai-server-worker.service"):
        path = dest / "etc/systemd/system" / unit
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert unit_field(path, "ExecStart")[0].startswith("/opt/ai-server/bin/ai-server ")
    # Prometheus' files, for this install's port (the rules and the modules as they are).
    monitoring = prefix / "share/monitoring"
    prometheus = (monitoring / "prometheus.yml").read_text()
    assert "localhost:8123" in prometheus and "localhost:8000" not in prometheus
    for name in ("ai-server.rules.yml", "blackbox.yml"):
        assert (monitoring / name).read_text() == (ROOT / "deploy/monitoring" / name).read_text()
    state = dest / "var/lib/ai-server"
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    # An operator's edit survives; a second install changes nothing at all.
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    before = snapshot(dest)
    second = make("install", dest)
    assert "nothing changed" in second, second
    assert snapshot(dest) == before
    # Every file is root's (the packager's), none writable by others.
    for path in dest.rglob("*"):
        st = path.lstat()
        writable = bool(st.st_mode & stat.S_IWOTH) and not path.is_symlink()  # links: 0777
        assert st.st_uid == me and not writable, path
    # Uninstall leaves the configuration and the state.
    make("uninstall", dest)
    assert not prefix.exists() and not (dest / "etc/systemd/system/ai-server.service").exists()
    assert config.read_text().endswith("# edited by the operator\n") and keys.exists()
    assert (cache / "llama.cpp").is_dir()


@pytest.fixture
def throwaway() -> Iterator[Path]:
    """A root for the real install outside pytest's 0700 tmp (the service user must read
    it), removed afterwards."""
    top = Path(f"/var/tmp/ai-server-install-{os.getpid()}")
    top.mkdir(mode=0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_install_for_real_starts_as_the_unit_says_and_uninstalls(
    throwaway: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("a real install creates a system user: it needs root")
    user = f"aisrvt{os.getpid() % 100000}"
    port = free_port()
    paths = {
        "--prefix": throwaway / "opt",
        "--sysconfdir": throwaway / "etc",
        "--statedir": throwaway / "lib",
        "--unitdir": throwaway / "units",
    }
    args = [a for k, v in paths.items() for a in (k, str(v))]
    args += ["--user", user, "--port", str(port), "--llama-port", str(free_port())]
    server: subprocess.Popen[bytes] | None = None
    try:
        out = install("install", *args)
        assert "systemd is not running" in out  # here; it prints how to start by hand
        account = pwd.getpwnam(user)
        state = throwaway / "lib"
        assert (state.stat().st_uid, state.stat().st_gid) == (account.pw_uid, account.pw_gid)
        keys = throwaway / "etc/keys.env"
        assert keys.stat().st_uid == 0 and stat.S_IMODE(keys.stat().st_mode) == 0o600
        unit = throwaway / "units/ai-server.service"
        units = [str(unit), str(throwaway / "units/ai-server-worker.service")]
        verify = subprocess.run(
            ["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0, verify.stderr
        # Start it exactly as the unit does: its ExecStart, its Environment, its user.
        exec_start = unit_field(unit, "ExecStart")[0].split()
        env = [e for e in unit_field(unit, "Environment") if "=" in e]
        assert unit_field(unit, "User") == [user]
        log = tmp_path / "server.log"
        with log.open("wb") as log_file:
            server = subprocess.Popen(
                ["runuser", "-u", user, "--", "env", *env, *exec_start],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert server.poll() is None, "the installed server exited"
                assert time.monotonic() < deadline, "not ready within 120 s"
                time.sleep(0.5)
        body = b'{"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}'
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", body,
            {"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as r:  # noqa: S310 - http, ours
            answer = r.read().decode()
        assert '"content"' in answer and '"completion_tokens"' in answer
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)  # runuser's own status says it was signalled: not the server's
        server = None
        deadline = time.monotonic() + 60  # runuser may return before the gateway has exited
        while subprocess.run(["pgrep", "-u", user], capture_output=True, check=False).stdout:
            assert time.monotonic() < deadline, "the service user's processes outlived it"
            time.sleep(0.2)
        assert "Application shutdown complete" in log.read_text()  # it stopped cleanly
        out = install("uninstall", *args)
        assert "kept" in out
        assert not (throwaway / "opt").exists() and not unit.exists()
        with pytest.raises(KeyError):
            pwd.getpwnam(user)
        assert (throwaway / "etc/config.toml").is_file() and (throwaway / "lib/cache").is_dir()
        assert sorted(p.name for p in throwaway.iterdir()) == ["etc", "lib", "units"]
    finally:
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        subprocess.run(["userdel", user], capture_output=True, check=False)
        subprocess.run(["groupdel", user], capture_output=True, check=False)
