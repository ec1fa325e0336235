"""Anthropic's Messages API over the fake llama binaries: Claude Code's own request replayed
(every field it sends taken, none a 400), the event sequence, a failure after the stream
started, and the statuses Anthropic's clients retry on (issue 27)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from core.config import Limits
from tests.claude_code import HEADERS, request
from tests.conftest import wait_until
from tests.e2e.conftest import Client, fake_settings, recorded, serving
from tests.helpers import alive


async def sse(client: Client, body: dict[str, Any]) -> tuple[int, list[tuple[str, Any]]]:
    """The status and the (event, data) pairs of a streamed answer."""
    async with client.http.post("/v1/messages?beta=true", json=body, headers=HEADERS) as resp:
        text = (await resp.read()).decode()
    if resp.status != 200:
        return resp.status, [("", json.loads(text))]
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return resp.status, events


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_claude_code_request_replayed_gets_answers(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_LLAMA", json.dumps({"record": str(record)}))
    body = request("stub")
    assert len(json.dumps(body)) > 70_000 and body["max_tokens"] == 32000
    async with serving(fake_settings(tmp_path, backend=backend)) as client:
        status, answer = await client.post("/v1/messages?beta=true", body, headers=HEADERS)
        assert status == 200, answer
        assert answer["type"] == "message" and answer["stop_reason"] == "end_turn"
        assert answer["content"] == [{"type": "text", "text": "fake answer"}]

        status, events = await sse(client, body | {"stream": True})
        assert status == 200, events
        names = [name for name, _ in events]
        assert names[:2] == ["message_start", "ping"], names
        assert names[2] == "content_block_start" and "content_block_delta" in names
        assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
        assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
        text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
        assert text == "fake answer"
    if backend == "server":
        sent = [r["body"] for r in recorded(record) if r.get("path") == "/v1/chat/completions"]
        system = sent[0]["messages"][0]
        assert system["role"] == "system" and "Claude Code" in system["content"]
        assert "x-anthropic-billing-header" not in json.dumps(sent[0])  # out of the prompt
        assert "Bash" in system["content"]  # the tools, described in the prompt
        assert sent[0]["max_tokens"] < 32000  # bounded by the context: a ceiling, no 400


async def test_failure_after_the_stream_started_is_an_error_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA", json.dumps({"stream_fault": "cut"}))
    async with serving(fake_settings(tmp_path, backend="server")) as client:
        status, events = await sse(
            client, {"model": "stub", "max_tokens": 8, "stream": True, "messages": [
                {"role": "user", "content": "Hi"}]}
        )  # fmt: skip
    assert status == 200
    name, data = events[-1]
    assert name == "error" and data["type"] == "error", events
    assert data["error"]["type"] == "api_error" and data["error"]["message"]
    assert "message_stop" not in [n for n, _ in events]


async def test_queue_full_is_overloaded_529(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA", json.dumps({"answer_delay": 3}))
    limits = Limits(request_timeout_s=10, max_concurrency=1, max_queue=0)
    body = {"model": "stub", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    async with serving(fake_settings(tmp_path, backend="server", limits=limits)) as client:
        results: list[tuple[int, Any]] = []

        async def ask() -> None:
            results.append(await client.post("/v1/messages", body))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            tg.start_soon(ask)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 529], results
    refused = next(b for s, b in results if s == 529)
    assert refused["error"]["type"] == "overloaded_error"


async def test_a_quiet_stream_pings_and_a_disconnect_stops_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-completion says nothing for a while (a long prompt): the stream starts with
    `message_start` and a `ping`; the client leaves, and the process group is stopped."""
    log = tmp_path / "cli.jsonl"
    monkeypatch.setenv("FAKE_LLAMA", json.dumps({"sleep": 60, "record": str(log)}))
    body = {"model": "stub", "max_tokens": 8, "stream": True, "messages": [
        {"role": "user", "content": "Hi"}]}  # fmt: skip
    # Its own silence timeout far off: only the disconnect can stop it within 20 s.
    settings = fake_settings(tmp_path, backend="cli", limits=Limits(request_timeout_s=120))
    async with serving(settings) as client:
        async with client.http.post("/v1/messages", json=body) as resp:
            assert resp.status == 200
            first = await resp.content.readuntil(b"event: ping\n")
            assert first.startswith(b"event: message_start\n")
        [run] = recorded(log)
        await wait_until(lambda: not alive(run["pid"]), within=20)
