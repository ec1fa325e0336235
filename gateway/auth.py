"""API keys as bearer tokens, checked by a pure ASGI middleware in constant time, and who
each request's client is.

/api and /v1 need a key (on both ports: the Ollama listener's too, but for `/` and
/api/version, which Ollama's clients probe first); changes (POST /api/config, POST
/api/models/...: load, unload, rescan) and the admin reads (/api/clients, /api/logs/...)
need an admin key (403 for another). The probes are open unless `protect_probes`. With no
keys at all everything is open, which `check_exposure` allows only on a loopback host (or
when explicitly allowed).

Every key has a name: `[auth.keys.NAME]`, or key-1, key-2... for bare keys in the order
api_keys, api_keys_file, $AI_SERVER_API_KEYS, admin_keys, $AI_SERVER_ADMIN_KEYS. A request's
client (for fair sharing, metrics and logs) is its key's name, never the key; with no keys,
its address (X-Forwarded-For believed only from `[limits] trusted_proxies`).

`[auth] open_networks` lets addresses in, keyless, where clients cannot send a key (most
Ollama clients, Home Assistant's): each address is a client of its own, never an admin. A
key sent from there still counts as that key. With open networks and no keys, requests from
elsewhere (but loopback) are refused."""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import ConfigError, NamedKey, Settings, secret_of
from core.errors import Forbidden, Unauthorized
from gateway.budgets import Bucket, Budget
from gateway.dialects import ollama_common
from gateway.error_handlers import render
from gateway.ollama_port import on_port, speaks_ollama

PROBES = ("/health", "/ready", "/metrics")
OLLAMA_OPEN = ("/", "/api/version")  # the Ollama listener's probes: always open
MAX_OPEN_CLIENTS = 4096  # open-network addresses whose rate budgets are remembered
ADMIN_READS = ("/api/clients", "/api/logs/")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Key(msgspec.Struct, frozen=True):
    name: str
    secret: bytes
    admin: bool
    budget: Budget | None = None


class Client(msgspec.Struct, frozen=True):
    """Who sent a request: a key's name (`keyed`), or an address; its key's rate budget."""

    name: str
    admin: bool
    keyed: bool
    budget: Budget | None = None


class Keys(msgspec.Struct, frozen=True):
    entries: tuple[Key, ...]

    @property
    def any(self) -> bool:
        return bool(self.entries)

    def match(self, token: bytes) -> Key | None:
        # Compare with every key, whatever matched, so timing says nothing about which.
        found = None
        for key in self.entries:
            if hmac.compare_digest(token, key.secret):
                found = key
        return found


def _split(value: str | None) -> list[str]:
    return [k.strip() for k in (value or "").split(",") if k.strip()]


def load_keys(settings: Settings, env: Mapping[str, str] = os.environ) -> Keys:
    auth = settings.auth
    api = [*auth.api_keys]
    if auth.api_keys_file:
        try:
            lines = Path(auth.api_keys_file).expanduser().read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read [auth] api_keys_file: {exc}") from exc
        api += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    api += _split(env.get("AI_SERVER_API_KEYS"))
    admin = [*auth.admin_keys, *_split(env.get("AI_SERVER_ADMIN_KEYS"))]
    bare = [(key, False) for key in api] + [(key, True) for key in admin]
    entries = [Key(f"key-{n}", key.encode(), admin) for n, (key, admin) in enumerate(bare, 1)]
    for name, named in auth.keys.items():
        where = f"[auth.keys.{name}]"
        if name in {e.name for e in entries}:
            raise ConfigError(f"{where}: the name {name} is taken (bare keys are key-1, key-2...)")
        if (secret := secret_of(named.key, named.key_file, where)) is None:
            raise ConfigError(f"{where}: set key or key_file")
        entries.append(Key(name, secret.encode(), named.admin, _budget(named)))
    _check_unique(entries)
    return Keys(tuple(entries))


def _budget(named: NamedKey) -> Budget | None:
    return budget_of(named.requests_per_minute, named.tokens_per_minute)


def budget_of(rpm: int | None, tpm: int | None) -> Budget | None:
    """A fresh rate budget of `rpm` requests and `tpm` tokens a minute; None for neither."""
    if rpm is None and tpm is None:
        return None
    return Budget(
        Bucket(rpm) if rpm is not None else None, Bucket(tpm) if tpm is not None else None
    )


def _check_unique(entries: Sequence[Key]) -> None:
    """One key, one name: a key given twice would make its client ambiguous."""
    seen: dict[bytes, str] = {}
    for key in entries:
        if (other := seen.setdefault(key.secret, key.name)) != key.name:
            raise ConfigError(f"keys {other} and {key.name} are the same key")


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, keys: Keys) -> None:
    """Refuse to serve a LAN with no keys unless that was asked for in so many words: keys,
    `allow_unauthenticated`, or the `open_networks` that may come in without one. Both
    listeners: the main one and the Ollama one."""
    auth = settings.auth
    if keys.any or auth.allow_unauthenticated or auth.open_networks:
        return
    listeners = [(settings.host, "host")]
    if settings.ollama.enabled:
        listeners.append((settings.ollama.address()[0], "[ollama] listen"))
    for host, setting in listeners:
        if not _loopback(host):
            raise ConfigError(
                f"{setting} {host} is reachable from the network and no API keys are "
                "configured: set [auth] api_keys (or $AI_SERVER_API_KEYS), [auth] "
                "open_networks (the addresses that may come in without a key), or [auth] "
                "allow_unauthenticated = true"
            )


def _networks(values: Sequence[str], setting: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(p, strict=False) for p in values)
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


def open_networks(settings: Settings) -> tuple[Network, ...]:
    return _networks(settings.auth.open_networks, "[auth] open_networks")


def trusted_networks(settings: Settings) -> tuple[Network, ...]:
    return _networks(settings.limits.trusted_proxies, "[limits] trusted_proxies")


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def address_of(scope: Scope, proxies: Sequence[Network]) -> str:
    """The client's address: the peer's, or behind trusted proxies the last address in
    X-Forwarded-For that is not one of them (what a client sends itself counts for nothing)."""
    peer = scope["client"][0] if scope.get("client") else "unknown"
    if not proxies or not _trusted(peer, proxies):
        return peer
    forwarded = b",".join(v for k, v in scope["headers"] if k == b"x-forwarded-for")
    hops = [hop.strip() for hop in forwarded.decode("latin-1").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


def _for_admins(method: str, path: str) -> bool:
    """Changes to the config and the model pool; the per-client view and the logs."""
    if path.startswith(ADMIN_READS):
        return True
    return method != "GET" and (path == "/api/config" or path.startswith("/api/models/"))


class RequireKeys:
    """Checks the key of a guarded request and puts its `Client` in `scope["state"]`."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Keys,
        protect_probes: bool,
        proxies: Sequence[Network] = (),
        open_networks: Sequence[Network] = (),
        ollama_port: int | None = None,
        allow_unauthenticated: bool = False,
        open_budget: Callable[[], Budget | None] = lambda: None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.protect_probes = protect_probes
        self.proxies = proxies
        self.open_networks = open_networks
        self.ollama_port = ollama_port
        # With open networks and no keys, only they and loopback come in, unless this.
        self.allow_unauthenticated = allow_unauthenticated
        # Each open-network address's own rate budget, made on its first request.
        self._open_budget = open_budget
        self._budgets: dict[str, Budget | None] = {}

    def _guarded(self, scope: Scope) -> bool:
        path = scope["path"]
        if on_port(scope, self.ollama_port) and path in OLLAMA_OPEN:
            return False
        if path.startswith(("/api/", "/v1/")):
            return True
        return self.protect_probes and path in PROBES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guarded(scope):
            await self.app(scope, receive, send)
            return
        try:
            client = self._client(scope)
        except (Unauthorized, Forbidden) as exc:
            # Rendered here: this middleware runs outside Starlette's ExceptionMiddleware, so
            # an exception raised through would reach only the catch-all 500 handler.
            ollama = speaks_ollama(scope, self.ollama_port)
            rendered = ollama_common.render(exc) if ollama else render(exc, scope["path"])
            await rendered(scope, receive, send)
            return
        scope.setdefault("state", {})["client"] = client
        await self.app(scope, receive, send)

    def _client(self, scope: Scope) -> Client:
        """Who sent a guarded request: a key's client; else, from an open network, its
        address's (never admin); else, with no keys at all, its address's (refused from
        outside the open networks, if any, but for loopback). Unauthorized without a known
        key, Forbidden for a user key (or an open network) on an admin route."""
        key = self.keys.match(_bearer(scope["headers"])) if self.keys.any else None
        admin_route = _for_admins(scope["method"], scope["path"])
        if key is not None:
            if not key.admin and admin_route:
                raise Forbidden("this needs an admin key")
            return Client(key.name, key.admin, keyed=True, budget=key.budget)
        address = address_of(scope, self.proxies)
        if _trusted(address, self.open_networks):
            if admin_route:
                raise Forbidden("this needs an admin key ([auth] open_networks are never admin)")
            return Client(address, admin=False, keyed=False, budget=self._budget_of(address))
        if self.keys.any:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        if self.open_networks and not self.allow_unauthenticated and not _loopback(address):
            raise Forbidden(f"{address} is not in [auth] open_networks, and there are no keys")
        return Client(address, admin=True, keyed=False)

    def _budget_of(self, address: str) -> Budget | None:
        if (budget := self._budgets.get(address)) is None and address not in self._budgets:
            if len(self._budgets) >= MAX_OPEN_CLIENTS:  # a wide network: forget the oldest
                self._budgets.pop(next(iter(self._budgets)))
            budget = self._budgets[address] = self._open_budget()
        return budget


def _bearer(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The token of the last Authorization header, if its scheme is Bearer; else the last
    x-api-key header's (Anthropic's clients send their key there)."""
    header = api_key = b""
    for name, value in headers:
        if name == b"authorization":
            header = value
        elif name == b"x-api-key":
            api_key = value
    scheme, _, token = header.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else api_key.strip()
