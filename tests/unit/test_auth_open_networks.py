"""`[auth] open_networks`: who a request is, by its address and its key, on either port,
and the exposure check that lets a LAN bind through with them."""

from __future__ import annotations

import ipaddress
from typing import Any

import msgspec
import pytest
from starlette.types import Message, Receive, Scope, Send

from core.config import Auth, ConfigError, Ollama, Settings
from gateway.auth import Client, Key, Keys, RequireKeys, check_exposure, load_keys

LAN = (ipaddress.ip_network("192.168.1.0/24"),)
OLLAMA_PORT = 11434
KEYS = Keys((Key("user", b"user-key", admin=False), Key("root", b"root-key", admin=True)))


async def _ask(
    keys: Keys, address: str, path: str = "/api/chat", method: str = "POST", **options: Any
) -> tuple[int, Any]:
    """The status and the client a request reaches the app as (or the refusal's body)."""
    token: bytes | None = options.pop("token", None)
    port: int = options.pop("port", 8000)
    headers = [(b"authorization", b"Bearer " + token)] if token is not None else []
    scope = {
        "type": "http", "path": path, "method": method, "headers": headers,
        "client": (address, 50000), "server": ("127.0.0.1", port),
    }  # fmt: skip
    reached: list[Client | None] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope.get("state", {}).get("client"))

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = RequireKeys(
        inner, keys, protect_probes=False, open_networks=LAN, ollama_port=OLLAMA_PORT, **options
    )
    await middleware(scope, receive, send)
    if reached:
        return 200, reached[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], msgspec.json.decode(body)


@pytest.mark.parametrize("keys", [KEYS, Keys(())])
async def test_open_network_address_is_a_keyless_client_of_its_own(keys: Keys) -> None:
    status, client = await _ask(keys, "192.168.1.7")
    assert status == 200
    assert client == Client("192.168.1.7", admin=False, keyed=False)


async def test_open_network_with_a_key_is_that_keys_client() -> None:
    status, client = await _ask(KEYS, "192.168.1.7", token=b"root-key")
    assert status == 200 and client.name == "root" and client.admin
    # A key that matches nothing adds nothing: still the address, never refused for it.
    status, client = await _ask(KEYS, "192.168.1.7", token=b"nonsense")
    assert status == 200 and client.name == "192.168.1.7"


@pytest.mark.parametrize("keys", [KEYS, Keys(())])
async def test_open_network_is_never_admin(keys: Keys) -> None:
    status, body = await _ask(keys, "192.168.1.7", "/api/models/rescan")
    assert status == 403 and "open_networks" in body["error"]["message"]


async def test_outside_the_open_networks_a_key_is_still_required() -> None:
    status, body = await _ask(KEYS, "10.0.0.9")
    assert status == 401 and body["error"]["type"] == "unauthorized"
    status, body = await _ask(KEYS, "10.0.0.9", port=OLLAMA_PORT)  # Ollama's shape there
    assert status == 401 and isinstance(body["error"], str)


async def test_without_keys_only_open_networks_and_loopback_come_in() -> None:
    status, body = await _ask(Keys(()), "10.0.0.9")
    assert status == 403 and "10.0.0.9 is not in [auth] open_networks" in body["error"]["message"]
    status, client = await _ask(Keys(()), "127.0.0.1")
    assert status == 200 and client.admin  # the machine's own operator, as without them
    status, client = await _ask(Keys(()), "10.0.0.9", allow_unauthenticated=True)
    assert status == 200 and client.name == "10.0.0.9"


async def test_ollama_probes_are_open_on_the_ollama_port_only() -> None:
    status, body = await _ask(KEYS, "10.0.0.9", "/api/version", "GET", port=OLLAMA_PORT)
    assert (status, body) == (200, None)  # reached the app, as nobody in particular
    status, body = await _ask(KEYS, "10.0.0.9", "/api/version", "GET")
    assert status == 401


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        (Settings(host="0.0.0.0"), "host 0.0.0.0"),  # noqa: S104
        (Settings(host="0.0.0.0", auth=Auth(open_networks=["192.168.1.0/24"])), None),  # noqa: S104
        (Settings(ollama=Ollama(listen="0.0.0.0:11434")), "[ollama] listen 0.0.0.0"),
        (Settings(ollama=Ollama(listen="[::]:11434")), "[ollama] listen ::"),
        (Settings(ollama=Ollama(enabled=False, listen="0.0.0.0:11434")), None),
        (
            Settings(ollama=Ollama(listen="0.0.0.0:1"), auth=Auth(open_networks=["10.0.0.0/8"])),
            None,
        ),
    ],
)
def test_exposure_check_covers_both_listeners_and_open_networks(
    settings: Settings, refused: str | None
) -> None:
    keys = load_keys(settings, env={})
    if refused is None:
        check_exposure(settings, keys)
        return
    with pytest.raises(ConfigError, match="open_networks") as caught:
        check_exposure(settings, keys)
    assert refused in str(caught.value)
