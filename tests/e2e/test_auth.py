"""API keys: the auth matrix, named keys and who a client is, and refusing a LAN bind
without keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from core.config import Auth, ConfigError, Limits, NamedKey, Settings
from gateway.app import create_app
from gateway.auth import address_of, load_keys, trusted_networks
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
        ("GET", "/api/whoami", "user-key", 200),
        ("GET", "/api/whoami", "wrong", 401),
        ("GET", "/api/clients", "user-key", 403),
        ("GET", "/api/clients", "admin-key", 200),
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


def test_keys_are_named_and_bare_ones_numbered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AI_SERVER_API_KEYS", "env-key")
    monkeypatch.setenv("AI_SERVER_ADMIN_KEYS", "root-key")
    (tmp_path / "bob.key").write_text("bob-secret\n")
    auth = Auth(
        api_keys=["bare-key"],
        keys={"alice": NamedKey(key="alice-secret", admin=True),
              "bob": NamedKey(key_file=str(tmp_path / "bob.key"))},
    )  # fmt: skip
    keys = load_keys(Settings(auth=auth))
    named = {(k.name, k.secret, k.admin) for k in keys.entries}
    assert named == {
        ("key-1", b"bare-key", False), ("key-2", b"env-key", False),
        ("key-3", b"root-key", True), ("alice", b"alice-secret", True),
        ("bob", b"bob-secret", False),
    }  # fmt: skip
    match = keys.match(b"bob-secret")
    assert match is not None and match.name == "bob"
    assert keys.match(b"nobody") is None


@pytest.mark.parametrize(
    ("auth", "error"),
    [
        (Auth(keys={"a": NamedKey()}), r"\[auth.keys.a\]: set key or key_file"),
        (Auth(keys={"a": NamedKey(key="x", key_file="/k")}), "not both"),
        (Auth(keys={"a": NamedKey(key_file="/nonexistent")}), "cannot read key file"),
        (Auth(api_keys=["x"], keys={"key-1": NamedKey(key="y")}), "the name key-1 is taken"),
        (Auth(api_keys=["x"], keys={"a": NamedKey(key="x")}), "keys key-1 and a are the same"),
    ],
)
def test_bad_keys_are_startup_errors_that_never_show_the_key(auth: Auth, error: str) -> None:
    with pytest.raises(ConfigError, match=error) as caught:
        load_keys(Settings(auth=auth), env={})
    assert "x" not in str(caught.value).split(":", 1)[0]


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "client"),
    [
        ("10.0.0.5", None, [], "10.0.0.5"),
        ("10.0.0.5", "1.2.3.4", [], "10.0.0.5"),  # an untrusted peer's header counts for nothing
        ("10.0.0.1", "10.0.0.9", ["10.0.0.1"], "10.0.0.9"),
        ("10.0.0.1", "6.6.6.6, 10.0.0.9, 10.0.0.2", ["10.0.0.0/30"], "10.0.0.9"),
        ("10.0.0.1", None, ["10.0.0.1"], "10.0.0.1"),
    ],
)
def test_a_client_without_keys_is_its_address(
    peer: str, forwarded: str | None, proxies: list[str], client: str
) -> None:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope = {"client": (peer, 40000), "headers": headers}
    networks = trusted_networks(Settings(limits=Limits(trusted_proxies=proxies)))
    assert address_of(scope, networks) == client


async def test_whoami_and_the_per_client_view_name_keys_never_show_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AI_SERVER_API_KEYS", raising=False)
    monkeypatch.delenv("AI_SERVER_ADMIN_KEYS", raising=False)
    auth = Auth(keys={"ops": NamedKey(key="ops-secret", admin=True),
                      "kitchen": NamedKey(key="kitchen-secret")})  # fmt: skip
    async with serving(fake_settings(tmp_path, auth=auth)) as client:

        async def get(path: str, key: str) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {key}"}
            async with client.http.get(path, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)

        status, me = await get("/api/whoami", "kitchen-secret")
        assert (status, me) == (200, {"name": "kitchen", "admin": False, "keys_required": True})
        status, _ = await client.post(
            "/api/chat", CHAT, headers={"Authorization": "Bearer kitchen-secret"}
        )
        assert status == 200
        for key in ("kitchen-secret", "ops-secret"):
            status, _ = await client.post(
                "/v1/chat/completions", CHAT, headers={"Authorization": f"Bearer {key}"}
            )
            assert status == 200
        status, view = await get("/api/clients", "ops-secret")
        assert status == 200
        lanes = [lane for lane in view["lanes"] if lane["model"] == "stub"]
        assert lanes == [
            {"backend": "server", "model": "stub", "in_flight": 0, "queued": 0, "clients": {}}
        ]
        # Model requests by client and dialect; the views (whoami, clients) are not counted.
        assert view["requests"] == {"kitchen": {"api": 1, "openai": 1}, "ops": {"openai": 1}}
        async with client.http.get("/metrics") as resp:
            text = await resp.text()
        assert "secret" not in text


async def test_without_keys_a_client_is_its_address_and_may_do_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AI_SERVER_API_KEYS", raising=False)
    monkeypatch.delenv("AI_SERVER_ADMIN_KEYS", raising=False)
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        status, me = await client.get("/api/whoami")
        assert (status, me) == (200, {"name": "127.0.0.1", "admin": True, "keys_required": False})
        status, _ = await client.get("/api/clients")
        assert status == 200


async def test_rate_budgets_answer_with_openai_headers_and_429(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AI_SERVER_API_KEYS", raising=False)
    monkeypatch.delenv("AI_SERVER_ADMIN_KEYS", raising=False)
    metered = NamedKey(key="m-secret", requests_per_minute=2, tokens_per_minute=1000)
    auth = Auth(keys={"metered": metered, "free": NamedKey(key="f-secret")})
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100}
    async with serving(fake_settings(tmp_path, auth=auth)) as client:

        async def ask(key: str, **extra: object) -> tuple[int, Any, Any]:
            headers = {"Authorization": f"Bearer {key}"}
            async with client.http.post(
                "/v1/chat/completions", json=body | extra, headers=headers
            ) as resp:
                return resp.status, resp.headers, await resp.read()

        status, headers, _ = await ask("m-secret")
        assert status == 200
        assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-limit-tokens"]) == (
            "2", "1000",
        )  # fmt: skip
        assert headers["x-ratelimit-remaining-requests"] == "1"
        # 100 charged up front, settled to the real 3 + 2 before the answer went out (the
        # bucket refills at 1000 / 60 a second meanwhile).
        assert int(headers["x-ratelimit-remaining-tokens"]) >= 995
        status, headers, _ = await ask("m-secret", stream=True)
        assert status == 200  # a stream's headers go out with its up-front charge taken
        assert int(headers["x-ratelimit-remaining-tokens"]) <= 950
        status, headers, answer = await ask("m-secret")
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert headers["x-ratelimit-remaining-requests"] == "0"
        error = msgspec.json.decode(answer)["error"]
        assert error["code"] == "rate_limit_exceeded" and "requests per minute" in error["message"]
        status, headers, _ = await ask("f-secret")
        assert status == 200 and "x-ratelimit-limit-requests" not in headers
        status, headers, answer = await ask("m-secret", max_tokens=5000)
        assert status == 400 and msgspec.json.decode(answer)["error"]["param"] == "max_tokens"
