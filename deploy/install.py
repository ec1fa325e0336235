"""Install AI Server as a systemd service, and remove it: `sudo make install`, `sudo make
uninstall` (which run this as root).

    python deploy/install.py install   [--prefix P] [--destdir D] [--user U] [--port N] ...
    python deploy/install.py uninstall [--prefix P] [--user U] ...

What `install` puts where (each under DESTDIR when it is set, for packaging):

- the `ai-server` system user and group, if missing (not under DESTDIR: a package's
  scripts do that), and a note in PREFIX that this install created them;
- PREFIX (default /opt/ai-server): a virtualenv with the project installed in it (not
  editable: the checkout can go), and `.install-state` recording what was installed;
- STATEDIR/cache (default /var/lib/ai-server/cache): llama.cpp and the built-in models,
  copied from a cache that already has them (the invoking user's, under sudo), else built;
- SYSCONFDIR/config.toml (default /etc/ai-server) from deploy/config.example.toml, only if
  it does not exist: an operator's edits are never overwritten; SYSCONFDIR/keys.env, mode
  0600, owned by root, only if missing;
- UNITDIR (default /etc/systemd/system): the gateway's unit and the worker's, with these
  paths and this user written into them.

Then, when systemd runs (and no DESTDIR): daemon-reload, enable, start (restart only if
something changed), wait for /ready and print the URL. Without systemd it says so and
prints the command that starts the service by hand.

Every step compares before it writes: a second install changes nothing, and says so.
`uninstall` removes all of it except SYSCONFDIR and STATEDIR (configuration and state).
"""

from __future__ import annotations

import argparse
import filecmp
import grp
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from backends import toolchain  # noqa: E402 - the checkout's own, before it is installed

UNITS = ("ai-server.service", "ai-server-worker.service")
# Prometheus' config and rules and the blackbox exporter's modules (docs/operations.md).
MONITORING = ("prometheus.yml", "ai-server.rules.yml", "blackbox.yml")
STATE_FILE = ".install-state"
CREATED_USER = ".created-user"


def log(message: str) -> None:
    print(f"install: {message}", flush=True)


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, env=env)  # noqa: S603 - argv lists of our own


def succeeds(argv: list[str]) -> bool:
    return subprocess.run(argv, check=False).returncode == 0  # noqa: S603 - as above


class Layout:
    def __init__(self, args: argparse.Namespace) -> None:
        self.destdir = Path(args.destdir) if args.destdir else None
        self.prefix = Path(args.prefix)
        self.sysconfdir = Path(args.sysconfdir)
        self.statedir = Path(args.statedir)
        self.unitdir = Path(args.unitdir)
        self.user = args.user
        self.port = args.port
        self.llama_port = args.llama_port
        self.python = args.python

    def at(self, path: Path) -> Path:
        """Where `path` of the installed system is written (under DESTDIR when set)."""
        return self.destdir / path.relative_to("/") if self.destdir else path

    @property
    def cache(self) -> Path:
        return self.statedir / "cache"

    def substitute(self, text: str) -> str:
        """A unit from deploy/ with this install's paths and user."""
        state_dir_line = f"StateDirectory={self.statedir.name}"
        if self.statedir.parent != Path("/var/lib"):
            state_dir_line = "# StateDirectory: not under /var/lib"
        text = (
            text.replace("/opt/ai-server/", f"{self.prefix}/")
            .replace("/etc/ai-server", str(self.sysconfdir))
            .replace("/var/lib/ai-server-worker", str(self.statedir / "worker"))
            .replace("/var/lib/ai-server", str(self.statedir))
            .replace("User=ai-server", f"User={self.user}")
            .replace("Group=ai-server", f"Group={self.user}")
        )
        lines = [
            state_dir_line if line.startswith("StateDirectory=") else line
            for line in text.splitlines()
        ]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- steps


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def ensure_user(lay: Layout) -> bool:
    """The system user and group; True if this created them."""
    if lay.destdir is not None:
        return False
    created = False
    if not group_exists(lay.user):
        run(["groupadd", "--system", lay.user])
        created = True
    try:
        pwd.getpwnam(lay.user)
    except KeyError:
        run([
            "useradd", "--system", "--gid", lay.user, "--home-dir", str(lay.statedir),
            "--no-create-home", "--shell", "/usr/sbin/nologin", lay.user,
        ])  # fmt: skip
        created = True
    if created:
        log(f"created the system user and group {lay.user}")
    return created


def service_python(explicit: str | None) -> tuple[str, str]:
    """An interpreter the service user can run (and its version): --python, else the
    system's python3, else this one. A venv links to its base interpreter, so that must
    lie where every user may go: not in root's home, as a pyenv build there does."""
    candidates = [explicit] if explicit else ["/usr/bin/python3", sys.executable]
    problems = []
    for python in candidates:
        probe = "import sys, venv, ensurepip; print(sys.base_prefix); print(sys.version)"
        done = subprocess.run(  # noqa: S603 - an interpreter path, argv list
            [python, "-c", probe], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            problems.append(f"{python}: cannot make a virtualenv ({done.stderr.strip()[-200:]})")
            continue
        base, version = done.stdout.splitlines()[:2]
        if tuple(map(int, version.split()[0].split(".")[:2])) < (3, 11):
            problems.append(f"{python}: Python {version.split()[0]}, 3.11 or newer is needed")
            continue
        closed = [p for p in [Path(base), *Path(base).parents] if not p.stat().st_mode & 0o001]
        if closed:
            problems.append(f"{python}: in {closed[-1]}, which other users cannot enter")
            continue
        return python, version
    raise SystemExit("install: no Python the service user can run:\n  " + "\n  ".join(problems))


def source_fingerprint(python_version: str) -> str:
    """What the installed project is made of: every tracked file of the packages, their
    package data (the dashboard's templates and static files), and pyproject.toml; with the
    interpreter it runs on."""
    digest = hashlib.sha256(python_version.encode())
    files = [ROOT / "pyproject.toml"]
    for package in ("gateway", "supervisor", "backends"):
        files += sorted((ROOT / package).rglob("*.py"))
    for data in ("gateway/templates", "gateway/static"):
        files += sorted(p for p in (ROOT / data).rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def install_venv(lay: Layout) -> bool:
    """PREFIX as a virtualenv with the project in it; False if it is already this one."""
    target = lay.at(lay.prefix)
    state = target / STATE_FILE
    python, version = service_python(lay.python)
    fingerprint = source_fingerprint(version)
    if state.is_file() and state.read_text().strip() == fingerprint:
        return False
    log(f"installing the project into a virtualenv at {lay.prefix} (Python: {python})")
    run([python, "-m", "venv", "--clear", str(target)])
    pip = [str(target / "bin" / "python"), "-m", "pip", "--quiet", "--disable-pip-version-check"]
    run([*pip, "install", "--progress-bar=off", str(ROOT)])
    if lay.destdir is not None:
        relocate(target, lay.prefix)
    state.write_text(fingerprint + "\n")
    return True


def build_python(scratch: Path, explicit: str | None) -> str:
    """A throwaway virtualenv in `scratch` for deploy/setup.py (the project and the
    default model's chunk packages): `make install` itself needs nothing beyond the
    standard library, and builds no .venv in the checkout."""
    python, _ = service_python(explicit)
    run([python, "-m", "venv", str(scratch)])
    pip = [str(scratch / "bin" / "python"), "-m", "pip", "--quiet", "--disable-pip-version-check"]
    run([*pip, "install", "--progress-bar=off", f"{ROOT}[model]"])
    return str(scratch / "bin" / "python")


def relocate(built: Path, final: Path) -> None:
    """A virtualenv made at DESTDIR/PREFIX names that path in its scripts: make them name
    PREFIX, where it will run."""
    for path in [*(built / "bin").iterdir(), built / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if str(built) in text:
            path.write_text(text.replace(str(built), str(final)))


def source_caches() -> list[Path]:
    """Caches that may already hold llama.cpp and the models: $AI_SERVER_CACHE, the
    invoking user's (under sudo), this user's."""
    found = []
    if explicit := os.environ.get("AI_SERVER_CACHE"):
        found.append(Path(explicit))
    if sudo_user := os.environ.get("SUDO_USER"):
        try:
            found.append(Path(pwd.getpwnam(sudo_user).pw_dir) / ".cache" / "ai-server")
        except KeyError:
            pass
    found.append(Path.home() / ".cache" / "ai-server")
    return found


def cache_parts(cache: Path) -> list[Path]:
    """The files a complete cache has: the built llama.cpp and the built-in models."""
    return [
        toolchain.llama_bin_dir(cache),
        toolchain.default_model_path(cache),
        toolchain.default_mmproj_path(cache),
        toolchain.smollm2_model_path(cache),
    ]


def complete(cache: Path) -> bool:
    bin_dir, *models = cache_parts(cache)
    return (bin_dir / ".complete").is_file() and all(m.is_file() for m in models)


def same_tree(a: Path, b: Path) -> bool:
    if not b.exists():
        return False
    if a.is_file():
        return b.is_file() and filecmp.cmp(a, b, shallow=False)
    compared = filecmp.dircmp(a, b)
    return not (compared.left_only or compared.right_only or compared.diff_files)


def install_cache(lay: Layout) -> bool:
    """llama.cpp and the models in STATEDIR/cache: copied from a complete cache, else
    built there (deploy/setup.py, as `make setup` does)."""
    target = lay.at(lay.cache)
    source = next((c for c in source_caches() if complete(c) and c != target), None)
    if source is None:
        if complete(target):
            return False
        log(f"no cache to copy from: building llama.cpp and the models into {lay.cache}")
        env = dict(os.environ) | {"AI_SERVER_CACHE": str(target)}
        with tempfile.TemporaryDirectory(prefix="ai-server-build-") as scratch:
            python = build_python(Path(scratch), lay.python)
            for step in ("llama", "model"):
                run([python, str(HERE / "setup.py"), step], env=env)
        return True
    changed = False
    for part, dest in zip(cache_parts(source), cache_parts(target), strict=True):
        if same_tree(part, dest):
            continue
        log(f"copying {part} (from {source})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if part.is_dir():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(part, dest, symlinks=True)
        else:
            shutil.copy2(part, dest)
        changed = True
    return changed


def binary_problems(lay: Layout) -> list[str]:
    """Each installed llama.cpp binary starts (`--version`; rpc-server has only `--help`).
    Without a shared library it links (libgomp1 on a minimal system) every one exits 127
    before saying anything, and the service would start but never become ready."""
    bin_dir = toolchain.llama_bin_dir(lay.at(lay.cache))
    problems = []
    for name in toolchain.BINARIES:
        flag = "--help" if name == "rpc-server" else "--version"
        done = subprocess.run(  # noqa: S603 - argv list, our binaries
            [str(bin_dir / name), flag], capture_output=True, text=True, timeout=60, check=False
        )
        if why := toolchain.load_failure(done.stderr):
            problems.append(f"{name} does not load: {why}")
        elif done.returncode != 0:
            last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
            problems.append(f"{name} {flag} exits {done.returncode}: {last[0]}")
    return problems


def write(path: Path, text: str, mode: int, *, keep: bool = False) -> bool:
    """`text` into `path` unless it holds it already (or, with `keep`, exists at all: an
    operator's file); whether it wrote."""
    if path.exists() and (keep or (path.is_file() and path.read_text() == text)):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    log(f"wrote {path}")
    return True


def example_config(lay: Layout) -> str:
    """deploy/config.example.toml with this install's ports."""
    text = (HERE / "config.example.toml").read_text()
    text = text.replace("\nport = 8000\n", f"\nport = {lay.port}\n", 1)
    return text.replace("\nport = 8080 ", f"\nport = {lay.llama_port} ", 1)


KEYS_ENV = """\
# API keys for AI Server, read by its systemd unit (EnvironmentFile); root only (0600).
# AI_SERVER_API_KEYS=key1,key2
# AI_SERVER_ADMIN_KEYS=adminkey
"""


def install_files(lay: Layout) -> tuple[bool, bool]:
    """Config, keys, the monitoring files (PREFIX/share/monitoring, for the configured
    port: an operator's, else this install's) and units; (anything changed, a unit
    changed)."""
    etc = lay.at(lay.sysconfdir)
    changed = write(etc / "config.toml", example_config(lay), 0o644, keep=True)
    changed |= write(etc / "keys.env", KEYS_ENV, 0o600, keep=True)
    gateway = f"localhost:{configured_port(lay)}"
    for name in MONITORING:
        text = (HERE / "monitoring" / name).read_text().replace("localhost:8000", gateway)
        changed |= write(lay.at(lay.prefix) / "share/monitoring" / name, text, 0o644)
    units = False
    for unit in UNITS:
        text = lay.substitute((HERE / unit).read_text())
        units |= write(lay.at(lay.unitdir) / unit, text, 0o644)
    return changed or units, units


def own_state(lay: Layout) -> None:
    """STATEDIR belongs to the service user (the cache is read-only to it in practice)."""
    state = lay.at(lay.statedir)
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o750)
    try:
        uid, gid = pwd.getpwnam(lay.user).pw_uid, grp.getgrnam(lay.user).gr_gid
    except KeyError:
        return  # DESTDIR: the package's scripts create the user and own this
    for path in [state, *state.rglob("*")]:
        if path.is_symlink():
            continue
        if (path.stat().st_uid, path.stat().st_gid) != (uid, gid):
            os.chown(path, uid, gid)


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def wait_ready(port: int, within: float = 300) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5):
                return True
        except OSError:
            time.sleep(1)
    return False


def configured_port(lay: Layout) -> int:
    """The gateway's port in the installed config (an operator may have changed it since
    the install that wrote it, or a later install without --port left it), else --port."""
    try:
        port = tomllib.loads((lay.at(lay.sysconfdir) / "config.toml").read_text()).get("port")
    except (OSError, tomllib.TOMLDecodeError):
        return int(lay.port)
    return port if isinstance(port, int) else int(lay.port)


def start_command(lay: Layout) -> str:
    return (
        f"sudo -u {lay.user} env AI_SERVER_CACHE={lay.cache} {lay.prefix}/bin/ai-server serve "
        f"--config {lay.sysconfdir}/config.toml"
    )


def install(lay: Layout) -> int:
    if os.geteuid() != 0 and lay.destdir is None:
        print("install: run it as root (sudo make install)", file=sys.stderr)
        return 1
    created = ensure_user(lay)
    changed = install_venv(lay)
    if created:
        (lay.at(lay.prefix) / CREATED_USER).write_text(lay.user + "\n")
    changed |= install_cache(lay)
    if problems := binary_problems(lay):
        print("install: llama.cpp cannot run here:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    files_changed, units_changed = install_files(lay)
    changed |= files_changed or created
    own_state(lay)
    if not changed:
        log("nothing changed: everything was already installed")
    if lay.destdir is not None:
        return 0
    if not systemd_running():
        log("systemd is not running here, so the service was not started. Start it with:")
        print(f"  {start_command(lay)}")
        return 0
    if units_changed:
        run(["systemctl", "daemon-reload"])
    run(["systemctl", "enable", "ai-server.service"])
    action = "start"
    if succeeds(["systemctl", "is-active", "--quiet", "ai-server"]):
        action = "restart" if changed else ""
        if changed:
            log("restarting the service: something changed")
    # Type=notify: start returns once the gateway is ready, or fails (a config error exits
    # 2 and is not retried): then the journal's last lines say why.
    if action and not succeeds(["systemctl", action, "ai-server"]):
        print("install: the service did not start. The journal's last lines:", file=sys.stderr)
        journal = ["journalctl", "-u", "ai-server", "-n", "10", "-o", "cat", "--no-pager"]
        subprocess.run(journal, stdout=sys.stderr, check=False)  # noqa: S603 - as above
        return 1
    port = configured_port(lay)
    if not wait_ready(port):
        log("the service did not become ready: journalctl -u ai-server")
        return 1
    log(f"ready: http://127.0.0.1:{port}/ (config: {lay.sysconfdir}/config.toml)")
    return 0


def uninstall(lay: Layout) -> int:
    if os.geteuid() != 0 and lay.destdir is None:
        print("uninstall: run it as root (sudo make uninstall)", file=sys.stderr)
        return 1
    prefix = lay.at(lay.prefix)
    created_user = (prefix / CREATED_USER).is_file()
    if lay.destdir is None and systemd_running():
        for unit in UNITS:
            succeeds(["systemctl", "disable", "--now", unit])
    for unit in UNITS:
        path = lay.at(lay.unitdir) / unit
        if path.exists():
            path.unlink()
            log(f"removed {path}")
    if lay.destdir is None and systemd_running():
        run(["systemctl", "daemon-reload"])
    if prefix.exists():
        shutil.rmtree(prefix)
        log(f"removed {prefix}")
    if created_user and lay.destdir is None:
        succeeds(["userdel", lay.user])
        if group_exists(lay.user):  # userdel removes the user's own group (USERGROUPS_ENAB)
            succeeds(["groupdel", lay.user])
        log(f"removed the system user and group {lay.user}")
    log(f"kept {lay.sysconfdir} (configuration) and {lay.statedir} (state and cache)")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    top.add_argument("action", choices=["install", "uninstall"])
    top.add_argument("--prefix", default="/opt/ai-server")
    top.add_argument("--destdir", default="")
    top.add_argument("--sysconfdir", default="/etc/ai-server")
    top.add_argument("--statedir", default="/var/lib/ai-server")
    top.add_argument("--unitdir", default="/etc/systemd/system")
    top.add_argument("--user", default="ai-server")
    top.add_argument("--port", type=int, default=8000, help="the gateway's, in a new config")
    top.add_argument("--llama-port", type=int, default=8080, help="llama-server's first")
    top.add_argument("--python", help="the interpreter of the service's virtualenv")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    lay = Layout(args)
    return install(lay) if args.action == "install" else uninstall(lay)


if __name__ == "__main__":
    sys.exit(main())
