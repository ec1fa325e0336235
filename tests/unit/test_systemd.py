from __future__ import annotations

import os
import socket
from pathlib import Path

from gateway.systemd import notify, watchdog_interval


def test_notify_sends_a_datagram_and_never_blocks_on_a_full_queue(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as reader:
        reader.bind(str(path))
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert reader.recv(64) == b"READY=1"
        # Nobody reads: sends fail fast instead of stalling the event loop.
        results = [notify("WATCHDOG=1", {"NOTIFY_SOCKET": str(path)}) for _ in range(5000)]
    assert results[0] and not results[-1]


def test_notify_abstract_socket_and_no_socket() -> None:
    name = f"ai-server-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as reader:
        reader.bind("\0" + name)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert reader.recv(64) == b"STOPPING=1"
    assert not notify("READY=1", {})


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
