"""Hostile prompts through the real binaries in both modes: a 1 MB prompt of shell syntax and
leading dashes is text that does not fit the context (400, as llama-server says it), never
argv, never a shell, and leaves no process behind."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Client, real_settings, serving
from tests.helpers import llama_pids

pytestmark = pytest.mark.llama

HOSTILE = ("-n 5 --help; $(touch pwned) `touch pwned` | cat /etc/passwd && ' \" \\ " * 20000)[
    : 2**20
]


async def post_big(client: Client, path: str, body: object) -> tuple[int, Any]:
    """POST a large JSON body as a stream (aiohttp warns about big in-memory bodies)."""
    data = io.BytesIO(json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    async with client.http.post(path, data=data, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("backend", ["cli", "server"])
async def test_a_1mb_hostile_prompt_is_a_400_in_both_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.chdir(tmp_path)
    async with serving(real_settings(tmp_path, backend=backend)) as client:
        chat = {"messages": [{"role": "user", "content": HOSTILE}], "max_tokens": 4}
        status, body = await post_big(client, "/api/chat", chat)
        assert status == 400, body
        assert body["error"]["code"] == "context_length_exceeded", body
        assert body["error"]["message"].startswith("prompt is too long: "), body
        status, body = await post_big(client, "/api/generate-embeddings", {"input": HOSTILE})
        assert 400 <= status < 500, body
        # A normal request still works after both.
        ok = {"messages": [{"role": "user", "content": "-n 1"}], "max_tokens": 2}
        assert (await client.post("/api/chat", ok))[0] == 200
    assert not list(tmp_path.glob("pwned*"))
    assert not llama_pids(("llama-completion", "llama-embedding"))
