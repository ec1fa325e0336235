"""`[auth] open_networks` on a real gateway, both ports: requests from 127.0.0.2 (a second
loopback address, standing in for a LAN host) need no key and are a client of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from core.config import Auth
from tests.e2e.conftest import Client, fake_settings, serving


async def _from(address: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(url, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_open_network_needs_no_key_on_either_port(tmp_path: Path) -> None:
    auth = Auth(api_keys=["secret"], open_networks=["127.0.0.2/32"])
    async with serving(fake_settings(tmp_path, auth=auth)) as client:
        assert isinstance(client.ollama, Client)
        main, ollama = client.url, client.ollama.url
        assert await _from("127.0.0.2", main + "/api/whoami") == (
            200,
            {"name": "127.0.0.2", "admin": False, "keys_required": False},
        )
        status, body = await _from("127.0.0.2", ollama + "/api/tags")
        assert status == 200 and body["models"]
        status, body = await _from("127.0.0.2", ollama + "/v1/models")
        assert status == 200 and body["data"]
        # From another address the key is still needed: in each port's own error shape.
        status, body = await _from("127.0.0.3", main + "/api/whoami")
        assert status == 401 and body["error"]["type"] == "unauthorized"
        status, body = await _from("127.0.0.3", ollama + "/api/tags")
        assert status == 401 and isinstance(body["error"], str)
        # A key works from anywhere, the Ollama port too, and names its client.
        bearer = {"Authorization": "Bearer secret"}
        status, body = await _from("127.0.0.3", ollama + "/v1/models", bearer)
        assert status == 200
        assert (await _from("127.0.0.2", main + "/api/whoami", bearer))[1]["name"] == "key-1"


async def _chat_from(address: str, url: str, body: dict[str, Any]) -> int:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(url, json=body) as resp:
            await resp.read()
            return resp.status


async def test_open_network_addresses_have_a_rate_budget_each_across_ports(
    tmp_path: Path,
) -> None:
    auth = Auth(open_networks=["127.0.0.2/32", "127.0.0.3/32"], open_requests_per_minute=1)
    ask = {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with serving(fake_settings(tmp_path, auth=auth)) as client:
        assert isinstance(client.ollama, Client)
        main, ollama = client.url, client.ollama.url
        assert await _chat_from("127.0.0.2", ollama + "/api/chat", ask) == 200
        # The same address on the other port is the same client, its minute's request spent.
        assert await _chat_from("127.0.0.2", main + "/v1/chat/completions", ask) == 429
        assert await _chat_from("127.0.0.3", main + "/v1/chat/completions", ask) == 200
