"""ServerBackend's deadline on llama-server: a timeout is a 504 and a report; a cancellation
from outside (the client went away) is neither."""

from __future__ import annotations

from typing import cast

import anyio
import pytest

from backends.catalog import ModelDef
from backends.router import Router, Target
from backends.server import ServerBackend
from backends.specs import server_spec
from core.config import LlmParams
from core.errors import BackendTimeout
from supervisor.actor import Supervisor


class _Router:
    def __init__(self) -> None:
        self.reported: list[str] = []

    def report(self, target: Target, reason: str) -> None:
        self.reported.append(reason)


def _backend(router: _Router) -> ServerBackend:
    return ServerBackend(cast(Supervisor, None), cast(Router, router), timeout=0.05)


SPEC = server_spec(ModelDef(name="m", path="/nowhere.gguf"), LlmParams())


async def test_server_deadline_is_a_backend_timeout_and_a_report() -> None:
    router = _Router()
    with pytest.raises(BackendTimeout, match="did not answer within 0 s"):
        with _backend(router)._upstream_errors(SPEC, None):
            await anyio.sleep(5)
    assert router.reported == ["no answer within 0 s"]


async def test_server_deadline_leaves_a_cancellation_from_outside_alone() -> None:
    router = _Router()
    with anyio.CancelScope() as outer:
        outer.cancel()
        with _backend(router)._upstream_errors(SPEC, None):
            await anyio.sleep(5)
    assert outer.cancelled_caught and router.reported == []
