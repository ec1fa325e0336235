"""POST /v1/responses over the fake llama binaries: the `openai` SDK's shapes, the errors in
OpenAI's envelope, and a failure before and after a stream's start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.conftest import Client, fake_settings, serving
from tests.helpers import sdk
from tests.supervisor.conftest import behave

ASK: dict[str, Any] = {"model": "stub", "input": "Say something.", "max_output_tokens": 8}


async def sse_events(client: Client, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """The status and the events of a streamed response (or the error body, as one event)."""
    async with client.http.post("/v1/responses", json=body | {"stream": True}) as resp:
        raw = await resp.read()
    if resp.content_type != "text/event-stream":
        return resp.status, [json.loads(raw)]
    events = []
    for block in raw.decode().split("\n\n")[:-1]:
        event, data = block.split("\n")
        events.append(json.loads(data.removeprefix("data: ")))
        assert event == "event: " + events[-1]["type"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return resp.status, events


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_responses_sdk_create_and_stream(tmp_path: Path, backend: str) -> None:
    settings = fake_settings(tmp_path, backend=backend)
    async with serving(settings), sdk(settings) as client:
        response = await client.responses.create(**ASK)
        assert response.status == "completed" and response.output_text == "fake answer"
        assert response.id.startswith("resp_") and response.model == "stub"
        async with client.responses.stream(**ASK) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
    assert final.output_text == "fake answer" and final.status == "completed"
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [o.type for o in final.output] == [o.type for o in response.output] == ["message"]


async def test_responses_errors_use_the_openai_envelope(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path)
    async with serving(settings) as http, sdk(settings) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.responses.create(**ASK, store=True)
        assert bad.value.param == "store" and "keeps no responses" in bad.value.message
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(**ASK | {"model": "no-such-model"})
        remote = {"type": "input_image", "image_url": "https://example.com/cat.png"}
        status, body = await http.post(
            "/v1/responses", ASK | {"input": [{"role": "user", "content": [remote]}]}
        )
    assert status == 400 and body["error"]["param"] == "input[0].content[0]", body
    assert "never fetches" in body["error"]["message"]


@pytest.mark.parametrize(
    ("backend", "behaviour"),
    [("server", {"stream_fault": "cut"}), ("cli", {"partial": 3})],
)
async def test_a_failure_mid_stream_is_an_error_event_then_response_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, behaviour: dict[str, object]
) -> None:
    behave(monkeypatch, **behaviour)
    async with serving(fake_settings(tmp_path, backend=backend)) as client:
        status, events = await sse_events(client, ASK)
    assert status == 200
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-2:] == ["error", "response.failed"], kinds
    assert events[-2]["message"] and events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["message"] == events[-2]["message"]


async def test_a_failure_before_the_stream_starts_is_an_http_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, fail_status=500)
    async with serving(fake_settings(tmp_path)) as client:
        status, (body,) = await sse_events(client, ASK)
    assert status >= 500 and body["error"]["message"], body
