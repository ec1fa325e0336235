"""Other hosts for tests: Linux network namespaces joined to this one by a veth pair.

`with host(0) as h:` gives a namespace `aisrv-t0-<pid>` whose only link is a veth to the root
namespace: `h.address` (10.231.0.2) inside, `h.gateway_address` (10.231.0.1) on this side.
10.231.0.0/16 is ours; host `index` gets 10.231.{index}.0/24, so `index` must be unique among
the hosts alive at once on this machine (another test process using it makes creation fail).

Nothing a test sends may leave the machine. A host is only handed out once `ip route get`
shows its address routed through its own veth, and an `unreachable` route for its /24 (at a
higher metric, hidden while the veth is up) stays until the context exits: after `vanish()`
its address answers "No route to host" at once instead of falling through to the default route.

`gateway.catch(h)` models what a vanished host's address falls through to on a real LAN (its
default route, a proxy, another machine that took the address): a route to `h`'s /24 through
`gateway`, below `h`'s own veth and above the tombstone, and `gateway` taking any address of
that /24 as its own. While `h` is up nothing changes; once it vanishes, whatever `gateway`
runs answers at `h.address`, at once.

Needs root and iproute2's `ip`; `host()` skips the test (with the reason) otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

NETNS_DIR = Path("/run/netns")  # where `ip netns add` mounts a namespace under its name
TOMBSTONE_METRIC = 4242  # above the kernel's metric 0 for the veth's connected route
CATCH_METRIC = 4000  # between the two: hidden by the veth, hiding the tombstone
TEXT_KWARGS = frozenset({"text", "universal_newlines", "encoding", "errors"})


class HostError(RuntimeError):
    """An `ip` command failed, or a host could not be created or removed cleanly."""


def require_root() -> None:
    """Skip the calling test, with the reason, unless namespaces can be made here."""
    if os.geteuid() != 0:
        pytest.skip(f"network namespaces need root (euid is {os.geteuid()})")
    if shutil.which("ip") is None:
        pytest.skip("network namespaces need iproute2's `ip` on PATH")


def ip(*args: str) -> str:
    """Run `ip *args` and return its stdout; a failure raises HostError with its stderr."""
    try:
        done = subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        message = f"`ip {' '.join(args)}` exited {exc.returncode}: {exc.stderr.strip()}"
        raise HostError(message) from exc
    return done.stdout


def netns_names() -> set[str]:
    """The names `ip netns list` shows (each line is `NAME` or `NAME (id: N)`)."""
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def link_names() -> set[str]:
    """The links of the root namespace (`ip -br link` shows a veth as `NAME@ifN`)."""
    return {line.split()[0].split("@")[0] for line in ip("-br", "link").splitlines() if line}


def route_device(address: str) -> str | None:
    """The device `ip route get` sends `address` through; None for unreachable."""
    try:
        words = ip("route", "get", address).split()
    except HostError:  # "RTNETLINK answers: No route to host" from the tombstone
        return None
    return words[words.index("dev") + 1] if "dev" in words else None


def _signal(send: Callable[[int, int], None], pid: int) -> None:
    try:
        send(pid, signal.SIGKILL)
    except ProcessLookupError:  # exited since it was listed
        pass


class Host:
    """One "other host": a namespace with a veth to the root namespace.

    Created by `host()`, which removes it on exit. `vanish()` removes it early; the context
    exit then only drops the tombstone route.
    """

    def __init__(self, index: int) -> None:
        if not 0 <= index <= 255:
            raise ValueError(f"host index {index} is not an octet")
        pid = os.getpid()  # the full pid: at most 7 digits, so `ais255g4194304` is 14 chars
        self.name = f"aisrv-t{index}-{pid}"
        self.address = f"10.231.{index}.2"
        self.gateway_address = f"10.231.{index}.1"
        self.veth = f"ais{index}g{pid}"  # the root (gateway) side; its peer is inside
        self.peer = f"ais{index}h{pid}"
        self.subnet = f"10.231.{index}.0/24"
        self._started: list[subprocess.Popen[bytes]] = []
        self._network = ExitStack()  # namespace and veth: undone by vanish()
        self._tombstone = ExitStack()  # the unreachable route: undone at context exit

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside the namespace in a session of its own (bytes mode)."""
        if TEXT_KWARGS & popen_kwargs.keys():
            raise ValueError(f"Host.run is bytes mode; got {sorted(popen_kwargs)}")
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv], start_new_session=True, **popen_kwargs
        )
        self._started.append(proc)
        return proc

    def pids(self) -> set[int]:
        """Every process in the namespace now (`ip netns pids`); empty once it is gone."""
        if not (NETNS_DIR / self.name).exists():
            return set()
        # Guard the SIGKILLs: were the name ever bound to our own namespace, its "pids" would
        # be every process on the machine.
        if (NETNS_DIR / self.name).stat().st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise HostError(f"{self.name} is the test's own namespace")
        return {int(pid) for pid in ip("netns", "pids", self.name).split()}

    def kill_all(self, within: float = 5.0) -> None:
        """SIGKILL every process in the namespace and every one `run` started, until none is
        left (reaping ours); HostError if some survive `within` seconds."""
        deadline = time.monotonic() + within
        while pids := self.pids() | self._running():
            if time.monotonic() > deadline:
                raise HostError(f"{sorted(pids)} in {self.name} survived SIGKILL")
            for pid in self._running():
                _signal(os.killpg, pid)  # its group: start_new_session made pgid == pid
            for pid in pids:
                _signal(os.kill, pid)
            time.sleep(0.01)

    def vanish(self) -> None:
        """The host drops off the LAN at once: its veth goes first, then every process in it
        is killed and the namespace deleted. A no-op once done."""
        self._network.close()

    def catch(self, other: Host) -> None:
        """Answer for `other`'s /24 once `other`'s veth is gone (see the module's docstring):
        a server here bound to 0.0.0.0 then gets what is sent to `other.address`. The route
        goes when `other`'s context exits (its tombstone's lifetime), or with this host."""
        ip("-n", self.name, "route", "replace", "local", other.subnet, "dev", "lo")
        route = (other.subnet, "via", self.address, "metric", str(CATCH_METRIC))
        ip("route", "add", *route)
        other._tombstone.callback(self._delete_route, *route)

    def close(self) -> None:
        """Remove everything still here; idempotent, and quiet about what is already gone."""
        try:
            self._network.close()
        finally:
            self._tombstone.close()

    def create(self) -> None:
        """Build the host, registering each step's undo as soon as the step succeeds, so a
        failure halfway is cleaned up by `close()` without touching what is not ours."""
        ip("route", "add", "unreachable", self.subnet, "metric", str(TOMBSTONE_METRIC))
        self._tombstone.callback(self._delete_tombstone)
        ip("netns", "add", self.name)
        self._network.callback(self._delete_netns)
        ip("link", "add", self.veth, "type", "veth", "peer", "name", self.peer, "netns", self.name)
        self._network.callback(self._delete_veth)
        ip("addr", "add", f"{self.gateway_address}/24", "dev", self.veth)
        ip("-n", self.name, "addr", "add", f"{self.address}/24", "dev", self.peer)
        ip("link", "set", self.veth, "up")
        ip("-n", self.name, "link", "set", self.peer, "up")
        ip("-n", self.name, "link", "set", "lo", "up")
        self._check_route()

    def _check_route(self) -> None:
        device = route_device(self.address)
        if device != self.veth:
            raise HostError(
                f"{self.address} routes via {device}, not {self.veth}: is {self.subnet} in use"
                " (a leftover? `ip -br link | grep ^ais`)?"
            )

    def _running(self) -> set[int]:
        return {proc.pid for proc in self._started if proc.poll() is None}

    def _delete_veth(self) -> None:
        if self.veth in link_names():  # deleting one end deletes both
            ip("link", "del", self.veth)

    def _delete_netns(self) -> None:
        try:
            self.kill_all()  # a process inside would keep the namespace alive, nameless
        finally:
            if self.name in netns_names():
                ip("netns", "del", self.name)

    def _delete_route(self, subnet: str, *spec: str) -> None:
        if f"via {self.address} " in ip("route", "show", "exact", subnet):  # or gone with the veth
            ip("route", "del", subnet, *spec)

    def _delete_tombstone(self) -> None:
        routes = ip("route", "show", "exact", self.subnet, "type", "unreachable").split()
        if "metric" in routes and str(TOMBSTONE_METRIC) in routes:
            ip("route", "del", "unreachable", self.subnet, "metric", str(TOMBSTONE_METRIC))


@contextmanager
def host(index: int) -> Iterator[Host]:
    """A fresh Host on 10.231.{index}.0/24, removed on exit (also on an exception); skips
    the test unless run as root with `ip`."""
    require_root()
    made = Host(index)
    try:
        made.create()
        yield made
    finally:
        made.close()
