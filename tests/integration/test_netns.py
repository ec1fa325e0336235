"""tests/netns.py: namespaces as other hosts, reachable from here, isolated from each other,
and gone without a trace when a test ends or a host vanishes."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.netns import Host, HostError, host, link_names, netns_names, route_device

PORT = 8431
# A connect from inside a host: exit 0 if `address:port` accepts within a second.
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"


def serve_http(on: Host, bind: str, directory: Path, port: int = PORT) -> subprocess.Popen[bytes]:
    """`python -m http.server` inside `on`, bound to `bind`:`port`, serving `directory`."""
    argv = [sys.executable, "-m", "http.server", "--bind", bind, "-d", str(directory), str(port)]
    return on.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def http_get(url: str, within: float = 5.0) -> bytes:
    """GET `url`, retrying refused connects until a server listens, for `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (an http URL)
                body: bytes = resp.read()
                return body
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def connects_from(on: Host, address: str, port: int) -> bool:
    """Whether a client inside `on` can open a TCP connection to `address`:`port`."""
    client = on.run([sys.executable, "-c", CONNECT, address, str(port)], stderr=subprocess.DEVNULL)
    return client.wait(timeout=10) == 0


def wait_listening(on: Host, address: str, port: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not connects_from(on, address, port):
        assert time.monotonic() < deadline, f"nothing listens on {address}:{port} in {on.name}"
        time.sleep(0.05)


def assert_gone(*hosts: Host) -> None:
    """Neither a namespace nor a veth of `hosts` is left, nor a route to their subnets."""
    assert not {h.name for h in hosts} & netns_names()
    assert not {h.veth for h in hosts} & link_names()
    routes = subprocess.run(["ip", "route"], check=True, capture_output=True, text=True).stdout
    assert not any(h.subnet in routes for h in hosts), routes


def test_netns_hosts_serve_stay_isolated_and_vanish(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello from a namespace")
    with host(0) as a, host(1) as b:
        assert {a.name, b.name} <= netns_names()
        assert route_device(a.address) == a.veth
        servers = [serve_http(a, a.address, tmp_path)]
        assert http_get(f"http://{a.address}:{PORT}/hello.txt") == b"hello from a namespace"

        # Each namespace has a loopback of its own, and hosts have no route to each other.
        port = free_port()  # free on the root namespace's loopback
        servers.append(serve_http(a, "127.0.0.1", tmp_path, port))
        wait_listening(a, "127.0.0.1", port)
        assert not connects_from(b, "127.0.0.1", port)
        assert not connects_from(b, a.address, PORT)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()

        a.vanish()
        assert all(server.returncode is not None for server in servers)
        assert a.name not in netns_names()
        assert a.veth not in link_names()
        assert route_device(a.address) is None  # the tombstone: not out of eth0 instead
        with pytest.raises(OSError) as refused:
            socket.create_connection((a.address, PORT), timeout=30).close()
        assert refused.value.errno == errno.EHOSTUNREACH, refused.value  # at once, no timeout
        a.vanish()  # a no-op the second time
        assert b.name in netns_names()  # the other host is untouched
    assert_gone(a, b)


def test_netns_host_is_torn_down_when_the_test_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), host(2) as h:
        server = serve_http(h, h.address, tmp_path)
        http_get(f"http://{h.address}:{PORT}/")
        raise RuntimeError("boom")
    assert server.returncode is not None
    assert_gone(h)


def test_netns_kill_all_kills_what_run_started_and_what_it_spawned() -> None:
    with host(3) as h:
        # A shell-free parent that starts a grandchild in the namespace, then sleeps.
        spawn = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(60)"
        parent = h.run([sys.executable, "-c", spawn, "sleep", "60"])
        deadline = time.monotonic() + 5
        while len(pids := h.pids()) < 2:
            assert time.monotonic() < deadline, pids
            time.sleep(0.05)
        h.kill_all()
        assert parent.returncode is not None
        assert h.pids() == set()
        assert h.name in netns_names()  # killing processes leaves the host itself
    assert_gone(h)


def test_netns_host_on_a_subnet_in_use_fails_and_leaves_the_owner_alone() -> None:
    with host(4) as owner:
        with pytest.raises(HostError, match="File exists"), host(4):
            pytest.fail("a second host on 10.231.4.0/24 was created")
        assert route_device(owner.address) == owner.veth
        assert owner.name in netns_names()
    assert_gone(owner)
