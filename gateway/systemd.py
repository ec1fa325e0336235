"""The systemd notify protocol (Type=notify): a datagram per state change to $NOTIFY_SOCKET.

READY=1 once the gateway accepts requests, WATCHDOG=1 from the event loop at half the
watchdog interval (a stuck loop stops them, and systemd restarts the service), STOPPING=1
when shutdown begins. Without $NOTIFY_SOCKET every call is a no-op."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(message: str, env: Mapping[str, str] = os.environ) -> bool:
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # "@": abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never block the event loop: a unix datagram send waits while the reader's
            # queue is full; a notification that cannot go now is dropped.
            sock.setblocking(False)
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), if the watchdog is on for us."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000
