"""Our code overrides private methods of uvicorn (gateway.protocol) and gguf
(backends.gguf_meta), so pyproject.toml pins both to the minor version tested. These tests
fail by name when a new version changes one of those methods, or one our override relies on:
re-read the upstream change against our override named in the message, then record the new
hash here (and widen the pin)."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import gguf
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from backends.gguf_meta import _reader_type
from gateway.protocol import GuardedProtocol

# upstream method -> (the sha256 of its source, first 16 hex digits; what of ours depends on it)
UVICORN = {
    "__init__": ("4f08999410347141", "GuardedProtocol.__init__"),
    "connection_made": ("6efb565ff3d36b91", "GuardedProtocol.connection_made"),
    "connection_lost": ("c91a4c9bf2e29c55", "GuardedProtocol.connection_lost"),
    "data_received": ("010a7ae59a5d3b1a", "GuardedProtocol.data_received"),
    "_unsupported_upgrade_warning": (
        "55bbd2762b189d9a", "GuardedProtocol._unsupported_upgrade_warning",
    ),
    "on_message_begin": ("96d377fdc7c2baef", "GuardedProtocol.on_message_begin"),
    "on_headers_complete": ("1ea8589acfad92d8", "GuardedProtocol.on_headers_complete"),
    "on_message_complete": ("1fbad42dc31fc01f", "GuardedProtocol.on_message_complete"),
    "on_response_complete": ("64e254f28e389e76", "GuardedProtocol.on_response_complete"),
}  # fmt: skip
GGUF = {
    "_get_field_parts": ("e1ad1891eeb370f5", "MetaReader._get_field_parts"),
    "_build_tensors": ("7b053ddf8e9166d4", "MetaReader._build_tensors"),
    # Calls both overrides, in this order, and sets `data` and `byte_order` that they read.
    "__init__": ("6f232bcd3c86d695", "MetaReader (what its overrides assume of the reader)"),
    "_get": ("18a86119c1e2b952", "MetaReader._get_field_parts (reads items with it)"),
}


def _digest(method: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]


def _check(owner: type, name: str, recorded: str, ours: str, where: str) -> None:
    package = owner.__module__.split(".")[0]
    method = getattr(owner, name, None)
    assert method is not None, (
        f"{package} {version(package)} has no {owner.__name__}.{name}: {where}.{ours} "
        "overrides or uses it; re-check it"
    )
    assert _digest(method) == recorded, (
        f"{package} {version(package)} changed {owner.__name__}.{name}: re-check {where}.{ours} "
        f"against it, then record {_digest(method)} in tests/unit/test_pins.py"
    )


@pytest.mark.parametrize("name", UVICORN)
def test_pins_uvicorn_methods_gateway_protocol_overrides_are_unchanged(name: str) -> None:
    recorded, ours = UVICORN[name]
    _check(HttpToolsProtocol, name, recorded, ours, "gateway.protocol")


def test_pins_uvicorn_cycle_send_writes_through_the_corked_transport() -> None:
    # gateway.protocol._Corked replaces `cycle.transport`: send() must still write through it.
    ours = "_Corked (which replaces cycle.transport)"
    _check(RequestResponseCycle, "send", "abdd8601b326a8da", ours, "gateway.protocol")


@pytest.mark.parametrize("name", GGUF)
def test_pins_gguf_reader_methods_gguf_meta_overrides_are_unchanged(name: str) -> None:
    recorded, ours = GGUF[name]
    _check(gguf.GGUFReader, name, recorded, ours, "backends.gguf_meta")


@pytest.mark.parametrize(
    ("ours", "theirs", "recorded"),
    [(GuardedProtocol, HttpToolsProtocol, UVICORN), (_reader_type(), gguf.GGUFReader, GGUF)],
)
def test_pins_every_override_has_a_recorded_hash(
    ours: type, theirs: type, recorded: dict[str, tuple[str, str]]
) -> None:
    overrides = {n for n, v in vars(ours).items() if callable(v) and hasattr(theirs, n)}
    assert overrides <= recorded.keys(), f"record the upstream hash of {overrides - set(recorded)}"
