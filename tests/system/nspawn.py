"""A real systemd for the tests: a Debian bookworm root made once per machine with
debootstrap (in the cache, beside llama.cpp), booted with systemd-nspawn, and torn down
without leftovers. ../shared/SYSTEMD_NSPAWN.md has the recipe and its traps; the ones this
module works around are named where they are.

There is no host systemd or D-Bus here (PID 1 is not systemd), so nspawn runs with
`--register=no --keep-unit` and `machinectl` cannot reach the container: commands run in
it through `nsenter` into the namespaces of its init."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
# What the service needs in the root beyond a minimal Debian: systemd as PID 1, the Python
# that deploy/install.py runs on and makes the service's virtualenv with, make, the CA
# bundle pip verifies PyPI with, procps (`kill` for ExecReload, pgrep for the tests) and
# libgomp1, which every llama.cpp binary links.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "make",
    "ca-certificates", "procps", "libgomp1",
)  # fmt: skip
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# Inside, commands see this environment only: nsenter passes the caller's (PIP_* and the
# rest) into the container otherwise.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLEAN_ENV = ["env", "-i", "HOME=/root", f"PATH={PATH}"]


class Unavailable(Exception):
    """This machine cannot run the container; the message says why and how to fix it."""


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "systemd-nspawn needs root (CAP_SYS_ADMIN)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"no {tool}: `make systemd-deps` (as root) installs it"
    return None


def apt_mirror() -> str:
    """The Debian mirror apt already uses here (deb822 sources, else sources.list)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        stanza: dict[str, str] = {}
        for line in [*path.read_text().splitlines(), ""]:
            if not line.strip():
                uris, suites = stanza.get("URIs", "").split(), stanza.get("Suites", "").split()
                if uris and SUITE in suites and "security" not in uris[0]:
                    return uris[0]
                stanza = {}
            elif not line.startswith("#") and ":" in line:
                key, _, value = line.partition(":")
                stanza[key.strip()] = value.strip()
    listing = Path("/etc/apt/sources.list")
    for line in listing.read_text().splitlines() if listing.is_file() else []:
        words = line.split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            return words[1]
    return FALLBACK_MIRROR


def root_dir(cache: Path) -> Path:
    """Where the root for these packages lives: another package list, another root."""
    key = hashlib.sha256(" ".join((SUITE, *PACKAGES)).encode()).hexdigest()[:12]
    return cache / "systemd-root" / f"{SUITE}-{key}"


def build_root(cache: Path) -> Path:
    """The root, debootstrapped once per machine (about a minute); a lock keeps concurrent
    test runs from building it twice, and a half-built one is never used."""
    root = root_dir(cache)
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").is_file():
            return root
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            "debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
            SUITE, str(partial), apt_mirror(),
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise Unavailable(f"debootstrap failed: {(done.stdout + done.stderr)[-2000:]}")
        (partial / ".complete").write_text(" ".join(PACKAGES) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        return root


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = _children(todo.pop())
        found += children
        todo += children
    return found


def _own_cgroups() -> list[Path]:
    """This process's cgroup in the named systemd hierarchy and in the unified one, where
    nspawn (with --keep-unit) makes its payload/ and supervisor/ cgroups."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        mount = {"name=systemd": "systemd", "": "unified"}.get(controllers)
        if mount and (top := Path("/sys/fs/cgroup") / mount).is_dir():
            found.append(top / path.lstrip("/"))
    return found


def _join(cgroups: list[Path]) -> None:
    """Move the calling process into `cgroups` (run in the child, before nspawn starts)."""
    for cgroup in cgroups:
        (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\n")


def _remove_tree(top: Path) -> list[str]:
    """rmdir `top` and every cgroup under it, deepest first; what could not go."""
    left = []
    for path in sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts)):
        try:
            path.rmdir()
        except OSError as exc:
            left.append(f"cgroup {path}: {exc}")
    return left


@dataclass
class Container:
    """A booted container: `run` a command in it; `stop` it (and clean up after nspawn)."""

    root: Path
    name: str
    log: Path
    binds: list[str] = field(default_factory=list)  # nspawn's --bind= / --bind-ro= options
    process: subprocess.Popen[bytes] | None = None
    init_pid: int = 0
    # A cgroup of its own in each hierarchy, where nspawn (--keep-unit) makes its payload/
    # and supervisor/: two containers never share them, and all of it goes at the end.
    cgroups: list[Path] = field(default_factory=list)

    def boot(self, within: float = 60) -> None:
        self.cgroups = [top / f"nspawn-{self.name}" for top in _own_cgroups()]
        for cgroup in self.cgroups:
            cgroup.mkdir(exist_ok=True)
        argv = [
            # A bound on its life, should this process die without stopping it.
            "timeout", "1800", "systemd-nspawn", "-D", str(self.root), "-b", "--console=pipe",
            # Both needed without a host systemd: else "Failed to open system bus".
            "--register=no", "--keep-unit", "-M", self.name,
            # Every write goes to a tmpfs, thrown away at the end: each boot starts clean.
            "--volatile=overlay", *self.binds,
        ]  # fmt: skip
        env = dict(os.environ) | {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, preexec_fn=lambda: _join(self.cgroups),
            )  # fmt: skip
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                raise Unavailable(f"systemd-nspawn exited: {self.log.read_text()[-2000:]}")
            if not self.init_pid:
                self.init_pid = next(
                    (p for p in _descendants(self.process.pid) if _comm(p) == "systemd"), 0
                )
            if self.init_pid:
                state = self.run("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            if time.monotonic() > deadline:
                raise Unavailable(f"the container did not boot: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def run(
        self, command: str, *, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """`command` (a shell line) inside, as root, with a clean environment."""
        argv = [
            "nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p",
            *CLEAN_ENV, "sh", "-c", command,
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            said = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            raise AssertionError(f"`{command}` exited {done.returncode}:\n{said}")
        return done

    def stop(self) -> list[str]:
        """Halt it (SIGTERM to nspawn: a clean shutdown in about 2 s; SIGKILL after 60),
        then undo what nspawn leaves behind without a host systemd: mounts under the root,
        and its cgroups (empty payload/ and supervisor/). Returns what could not be undone."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        left = []
        for mount in reversed(mounts_under(self.root)):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        left += [f"still mounted: {m}" for m in mounts_under(self.root)]
        for cgroup in self.cgroups:
            left += _remove_tree(cgroup)
        return left


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


@contextlib.contextmanager
def booted(root: Path, name: str, log: Path, binds: list[str]) -> Iterator[Container]:
    """A container of `root`, stopped and cleaned up afterwards whatever happened."""
    container = Container(root=root, name=name, log=log, binds=binds)
    try:
        container.boot()
        yield container
    finally:
        left = container.stop()
        assert not left, left
