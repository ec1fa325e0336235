"""schemathesis against the gateway's own /openapi.json: every documented operation gets
generated bodies, valid and invalid, and must answer without a 5xx, with a status, content
type and body its document allows. The gateway runs for real (uvicorn, in a thread) over the
fake llama binaries, in server mode; the fuzzer may switch it to cli mode through
/api/config, which is part of what it tests.

All of schemathesis's checks run but one: `positive_data_acceptance` (every schema-valid
body must be accepted). Some of our 400s are for rules a JSON schema cannot state: that
the base64 is an image, that ubatch_size <= batch_size, that `backend` and its alias agree.
Invalid bodies must still be refused (`negative_data_rejection`)."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from gateway.app import create_app
from gateway.routes.openapi import build_document
from tests.e2e.conftest import fake_settings

CONFIG = schemathesis.Config.from_dict(
    {"generation": {"mode": "all"}, "phases": {"stateful": {"enabled": False}}}
)
schema = schemathesis.openapi.from_dict(build_document(), config=CONFIG)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app_settings = fake_settings(tmp_path_factory.mktemp("fuzz"))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(app_settings), host="127.0.0.1", port=app_settings.port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run)
    thread.start()
    url = f"http://127.0.0.1:{app_settings.port}"
    try:
        for _ in range(300):
            if server.started:
                break
            threading.Event().wait(0.05)
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(
    case: schemathesis.Case[Any], gateway_url: str
) -> None:
    case.call_and_validate(
        base_url=gateway_url, timeout=30, excluded_checks=[positive_data_acceptance]
    )
