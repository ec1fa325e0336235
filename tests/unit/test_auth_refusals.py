"""The auth middleware's refusals: `Unauthorized` and `Forbidden` rendered by the one error
renderer, with the statuses, headers and bodies clients have always had."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.auth import Key, Keys, RequireKeys


async def _inner(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("a refused request reached the app")


async def _refusal(
    path: str, method: str, token: bytes | None
) -> tuple[int, dict[bytes, bytes], Any]:
    keys = Keys((Key("user", b"user-key", admin=False), Key("root", b"root-key", admin=True)))
    headers = [(b"authorization", b"Bearer " + token)] if token is not None else []
    scope = {"type": "http", "path": path, "method": method, "headers": headers}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await RequireKeys(_inner, keys, protect_probes=False)(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), msgspec.json.decode(body)


@pytest.mark.parametrize("token", [None, b"wrong"])
async def test_auth_without_a_known_key_is_401_with_its_scheme(token: bytes | None) -> None:
    status, headers, body = await _refusal("/api/chat", "POST", token)
    assert (status, headers[b"www-authenticate"]) == (401, b"Bearer")
    assert body == {"error": {
        "type": "unauthorized", "code": "unauthorized",
        "message": "an API key is required: Authorization: Bearer <key>",
    }}  # fmt: skip


async def test_auth_a_user_key_on_an_admin_route_is_403() -> None:
    status, headers, body = await _refusal("/api/config", "POST", b"user-key")
    assert status == 403 and b"www-authenticate" not in headers
    assert body == {
        "error": {"type": "forbidden", "code": "forbidden", "message": "this needs an admin key"}
    }
