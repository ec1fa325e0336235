"""`[auth] open_networks` from real other hosts (network namespaces, tests/netns.py): the
Ollama listener bound for the LAN with no keys at all, which only open networks make
possible; a host in them comes in keyless, a host outside them is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio

from core.config import Auth, Ollama
from tests.conftest import free_port
from tests.e2e.conftest import fake_settings, serving
from tests.netns import Host, host

# What a LAN client runs there: one GET, its status and body on stdout.
GET = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    r = urllib.request.urlopen(sys.argv[1], timeout=20)\n"
    "    print(r.status, r.read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code, e.read().decode())\n"
)


async def get_from(h: Host, url: str) -> tuple[int, object]:
    proc = h.run([sys.executable, "-c", GET, url], stdout=subprocess.PIPE)
    out, _ = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    status, _, body = out.decode().partition(" ")
    return int(status), json.loads(body)


async def test_open_network_host_comes_in_keyless_and_another_is_refused(
    tmp_path: Path,
) -> None:
    with host(126) as inside, host(127) as outside:
        port = free_port()
        settings = fake_settings(
            tmp_path,
            ollama=Ollama(listen=f"0.0.0.0:{port}"),  # the LAN, with no keys at all
            auth=Auth(open_networks=[f"{inside.address}/32"]),
        )
        async with serving(settings):
            status, body = await get_from(
                inside, f"http://{inside.gateway_address}:{port}/api/tags"
            )
            assert status == 200 and isinstance(body, dict) and body["models"]
            status, body = await get_from(
                outside, f"http://{outside.gateway_address}:{port}/api/tags"
            )
            assert status == 403
            assert body == {
                "error": f"{outside.address} is not in [auth] open_networks, and there are no keys"
            }
