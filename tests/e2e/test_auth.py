"""API keys: the auth matrix, and refusing a LAN bind without keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config import Auth, ConfigError, Settings
from tests.e2e.conftest import Client, fake_settings, serving

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}


async def call(client: Client, method: str, path: str, key: str | None, body: object = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with client.http.request(method, path, json=body, headers=headers) as resp:
        payload = await resp.json()
        if resp.status == 401:
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        if resp.status in (401, 403):
            assert payload["error"]["type"] in ("unauthorized", "forbidden")
        return resp.status


@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("POST", "/api/chat", None, 401),
        ("POST", "/api/chat", "wrong", 401),
        ("POST", "/api/chat", "user-key", 200),
        ("POST", "/api/chat", "admin-key", 200),
        ("POST", "/v1/chat/completions", None, 401),
        ("POST", "/v1/chat/completions", "user-key", 200),
        ("GET", "/v1/models", None, 401),
        ("GET", "/api/config", "user-key", 200),
        ("POST", "/api/config", "user-key", 403),
        ("POST", "/api/config", None, 401),
        ("POST", "/api/config", "admin-key", 200),
        ("GET", "/health", None, 200),
        ("GET", "/ready", None, 200),
    ],
)
async def test_auth_matrix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, path: str, key: str | None,
    status: int,
) -> None:  # fmt: skip
    monkeypatch.setenv("AI_SERVER_ADMIN_KEYS", "admin-key")
    auth = Auth(api_keys=["user-key"])
    body = {"llm_params": {"temp": 0.5}} if path == "/api/config" else CHAT
    async with serving(fake_settings(tmp_path, backend="cli", auth=auth)) as client:
        assert await call(client, method, path, key, body if method == "POST" else None) == status


async def test_probes_can_be_protected_and_keys_read_from_a_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\nfile-key\n")
    auth = Auth(api_keys_file=str(keys), protect_probes=True)
    async with serving(fake_settings(tmp_path, backend="cli", auth=auth)) as client:
        assert await call(client, "GET", "/ready", None) == 401
        assert await call(client, "GET", "/ready", "file-key") == 200


def test_a_lan_bind_without_keys_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AI_SERVER_API_KEYS", raising=False)
    monkeypatch.delenv("AI_SERVER_ADMIN_KEYS", raising=False)
    with pytest.raises(ConfigError, match=r"host 0\.0\.0\.0 .* no API keys"):
        create_app(Settings(host="0.0.0.0"))  # noqa: S104
    create_app(Settings(host="0.0.0.0", auth=Auth(allow_unauthenticated=True)))  # noqa: S104
    create_app(Settings(host="0.0.0.0", auth=Auth(api_keys=["k"])))  # noqa: S104
    create_app(Settings(host="127.0.0.1"))
    create_app(Settings(host="::1"))
