"""API keys as bearer tokens, checked by a pure ASGI middleware in constant time.

/api and /v1 need an API or admin key; POST /api/config and POST /api/models/... (load,
unload, rescan) need an admin key (403 for an API key); the probes are open unless
`protect_probes`. With no keys at all everything is open, which `check_exposure` allows only
on a loopback host (or when explicitly allowed)."""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import ConfigError, Settings
from gateway.error_handlers import error_response

PROBES = ("/health", "/ready", "/metrics")


class Keys(msgspec.Struct, frozen=True):
    api: tuple[bytes, ...]
    admin: tuple[bytes, ...]

    @property
    def any(self) -> bool:
        return bool(self.api or self.admin)


def _split(value: str | None) -> list[str]:
    return [k.strip() for k in (value or "").split(",") if k.strip()]


def load_keys(settings: Settings, env: Mapping[str, str] = os.environ) -> Keys:
    auth = settings.auth
    api = [*auth.api_keys, *_split(env.get("AI_SERVER_API_KEYS"))]
    if auth.api_keys_file:
        try:
            lines = Path(auth.api_keys_file).expanduser().read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read [auth] api_keys_file: {exc}") from exc
        api += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    admin = [*auth.admin_keys, *_split(env.get("AI_SERVER_ADMIN_KEYS"))]
    return Keys(api=tuple(k.encode() for k in api), admin=tuple(k.encode() for k in admin))


def check_exposure(settings: Settings, keys: Keys) -> None:
    """Refuse to serve a LAN with no keys unless that was asked for in so many words."""
    host = settings.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not keys.any and not settings.auth.allow_unauthenticated:
        raise ConfigError(
            f"host {host} is reachable from the network and no API keys are configured: set "
            "[auth] api_keys (or $AI_SERVER_API_KEYS), or [auth] allow_unauthenticated = true"
        )


def _matches(token: bytes, keys: tuple[bytes, ...]) -> bool:
    # Compare with every key, whatever matched, so timing says nothing about which.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token, key)
    return found


def _for_admins(path: str) -> bool:
    """Changes to the config and to the model pool (load, unload, rescan)."""
    return path == "/api/config" or path.startswith("/api/models/")


class RequireKeys:
    def __init__(self, app: ASGIApp, keys: Keys, protect_probes: bool) -> None:
        self.app = app
        self.keys = keys
        self.protect_probes = protect_probes

    def _guarded(self, path: str) -> bool:
        if path.startswith(("/api/", "/v1/")):
            return True
        return self.protect_probes and path in PROBES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.any or not self._guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        token = token.strip() if scheme.lower() == b"bearer" else b""
        admin = _matches(token, self.keys.admin)
        known = admin or _matches(token, self.keys.api)
        if not known:
            message = "an API key is required: Authorization: Bearer <key>"
            response = error_response(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
        elif not admin and scope["method"] != "GET" and _for_admins(scope["path"]):
            response = error_response(403, "forbidden", "this change needs an admin key")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
