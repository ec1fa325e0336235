"""Metrics, request ids, access logs and readiness, against the fake llama-server."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import JsonLines, request_id
from tests.e2e.conftest import Client, fake_settings, serving
from tests.supervisor.conftest import behave

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}


async def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with client.http.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_parse_and_count_requests_and_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch)
    async with serving(fake_settings(tmp_path)) as client:
        assert (await client.post("/api/chat", CHAT))[0] == 200
        samples = await scrape(client)
        [process] = (await client.get("/ready"))[1]["processes"]
        assert process["roles"] == ["chat", "embedding", "vision"] and process["state"] == "ready"
        port = str(process["port"])
    chat = (("backend", "server"), ("dialect", "api"), ("method", "POST"), ("route", "/api/chat"),
            ("status", "200"))  # fmt: skip
    assert samples[("ai_server_requests_total", chat)] == 1
    assert samples[("ai_server_tokens_generated_total", (("backend", "server"),))] == 2
    latency = (("backend", "server"), ("route", "/api/chat"))
    assert samples[("ai_server_request_duration_seconds_count", latency)] == 1
    ready = (("model", "stub"), ("port", port), ("state", "ready"))
    assert samples[("ai_server_llama_server_state", ready)] == 1
    assert samples[("ai_server_model_loads_total", (("model", "stub"), ("port", port)))] == 1
    assert samples[("ai_server_model_memory_mb", (("model", "stub"), ("port", port)))] > 0
    assert samples[("ai_server_model_swaps_total", ())] == 0
    assert samples[("ai_server_in_flight", (("backend", "server"), ("model", "stub")))] == 0
    assert samples[("ai_server_queued", (("backend", "cli"), ("model", "")))] == 0


async def test_a_request_whose_client_hung_up_counts_as_499_not_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, answer_delay=30)
    async with serving(fake_settings(tmp_path)) as client:
        with anyio.move_on_after(1):  # the client gives up; the gateway cancels the request
            await client.post("/v1/chat/completions", CHAT)

        def count(status: str) -> float:
            labels = (("backend", "server"), ("dialect", "openai"), ("method", "POST"),
                      ("route", "/v1/chat/completions"), ("status", status))  # fmt: skip
            return samples.get(("ai_server_requests_total", labels), 0)

        samples = await scrape(client)
        with anyio.fail_after(10):
            while not count("499"):
                samples = await scrape(client)
        assert count("500") == 0


async def test_request_id_is_echoed_or_made_and_in_the_access_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ai_server.access")
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        async with client.http.get("/health", headers={"X-Request-ID": "abc-123"}) as resp:
            assert resp.headers["X-Request-ID"] == "abc-123"
        async with client.http.get("/health", headers={"X-Request-ID": "bad id; drop"}) as resp:
            made = resp.headers["X-Request-ID"]
            assert len(made) == 16 and made != "bad id; drop"
        await client.post("/api/chat", CHAT)
    [access] = [r for r in caplog.records if getattr(r, "route", None) == "/api/chat"]
    # No keys: the client is its address.
    assert (access.status, access.backend, access.client) == (200, "cli", "127.0.0.1")  # type: ignore[attr-defined]
    assert "Hi" not in access.getMessage()  # prompts are never logged


def test_json_lines_carry_the_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "ai_server.access", "msg": "GET /health 200", "levelname": "INFO",
         "route": "/health", "status": 200, "request_id": "r1"}
    )  # fmt: skip
    entry = json.loads(JsonLines().format(record))
    assert entry["message"] == "GET /health 200" and entry["logger"] == "ai_server.access"
    assert (entry["route"], entry["status"], entry["request_id"]) == ("/health", 200, "r1")
    assert request_id.get() == "-"


async def test_ready_flips_when_the_llama_server_dies_and_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, load_delay=0.5)
    async with serving(fake_settings(tmp_path)) as client:
        statuses: list[int] = []

        async def ready_status() -> int:
            status = (await client.get("/ready"))[0]
            if not statuses or statuses[-1] != status:
                statuses.append(status)
            return status

        with anyio.fail_after(30):
            # 200 while the chat model is loaded or loadable: loading counts.
            while (process := (await client.get("/ready"))[1]["processes"][0])["state"] != "ready":
                assert await ready_status() == 200
            os.kill(process["pid"], signal.SIGKILL)
            while await ready_status() != 503:  # crashed: backing off
                pass
            while await ready_status() != 200:
                pass
        assert statuses == [200, 503, 200]


async def test_openapi_documents_every_route(tmp_path: Path) -> None:
    from gateway.app import create_app

    settings = fake_settings(tmp_path, backend="cli")
    served = {
        (path, method.lower())
        for route in create_app(settings).routes
        for method in getattr(route, "methods", set()) - {"HEAD"}
        if (path := getattr(route, "path", "")) != "/openapi.json"
        and path != "/metrics"
        and path != "/"  # a redirect to the dashboard
        and not path.startswith("/ui")  # the dashboard's pages and files: not API
    }
    async with serving(settings) as client:
        status, doc = await client.get("/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0"
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == served
    chat = doc["paths"]["/api/chat"]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"] == {"$ref": "#/components/schemas/ChatRequest"}
    assert doc["components"]["schemas"]["ChatRequest"]["required"] == ["messages"]


async def test_streamed_completions_count_in_the_token_metrics(tmp_path: Path) -> None:
    """The usage chunk is always asked for, counted, and passed on only when asked for."""
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        async with client.http.post("/v1/chat/completions", json=CHAT | {"stream": True}) as r:
            events = (await r.read()).decode()
        assert r.status == 200 and '"usage"' not in events and events.endswith("[DONE]\n\n")
        samples = await scrape(client)
    assert samples[("ai_server_tokens_generated_total", (("backend", "cli"),))] == 3
