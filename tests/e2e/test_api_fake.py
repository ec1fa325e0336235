"""The /api routes against fake llama binaries: what reaches llama, config, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest

from core.config import Limits, LlamaServer
from tests.conftest import free_port, wait_until
from tests.e2e.conftest import fake_settings, recorded, serving
from tests.helpers import alive
from tests.supervisor.conftest import behave

JSON = "application/json"
CHAT = {"messages": [{"role": "user", "content": "Hi"}]}
DEFAULTS = {
    "ctx_size": 12192, "temp": 0.35, "top_p": 0.9, "top_k": 40,
    "presence_penalty": 0.2, "mirostat": 0, "batch_size": 8192, "ubatch_size": 1024,
}  # fmt: skip
CHANGED = {
    "ctx_size": 4096, "temp": 0.7, "top_p": 0.5, "top_k": 5,
    "presence_penalty": 1.0, "mirostat": 2, "batch_size": 2048, "ubatch_size": 512,
}  # fmt: skip


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def server_argv_params(argv: list[str]) -> dict[str, int]:
    return {
        "ctx_size": int(flag(argv, "--ctx-size")),
        "batch_size": int(flag(argv, "--batch-size")),
        "ubatch_size": int(flag(argv, "--ubatch-size")),
    }


def payload_params(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "temp": body["temperature"],
        "top_p": body["top_p"],
        "top_k": body["top_k"],
        "presence_penalty": body["presence_penalty"],
        "mirostat": body["mirostat"],
    }


def cli_argv_params(argv: list[str]) -> dict[str, Any]:
    return {
        "ctx_size": int(flag(argv, "--ctx-size")),
        "temp": float(flag(argv, "--temp")),
        "top_p": float(flag(argv, "--top-p")),
        "top_k": int(flag(argv, "--top-k")),
        "presence_penalty": float(flag(argv, "--presence-penalty")),
        "mirostat": int(flag(argv, "--mirostat")),
        "batch_size": int(flag(argv, "--batch-size")),
        "ubatch_size": int(flag(argv, "--ubatch-size")),
    }


async def test_server_mode_applies_all_eight_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "server.jsonl"
    behave(monkeypatch, record=str(log))
    async with serving(fake_settings(tmp_path)) as client:
        status, answer = await client.post("/api/chat", CHAT)
        assert status == 200, answer
        assert answer["message"] == {"role": "assistant", "content": "fake answer"}
        assert answer["backend"] == "server" and answer["usage"] == {
            "prompt_tokens": 3, "completion_tokens": 2
        }  # fmt: skip
        status, config = await client.post("/api/config", {"llm_params": CHANGED})
        assert status == 200 and config["llm_params"] == CHANGED
        status, answer = await client.post("/api/chat", CHAT)
        assert status == 200, answer
    starts = [e["argv"] for e in recorded(log) if "argv" in e]
    chats = [e["body"] for e in recorded(log) if e.get("path") == "/v1/chat/completions"]
    assert len(starts) == 2  # a startup parameter changed: the process was replaced
    for argv, body, params in zip(starts, chats, (DEFAULTS, CHANGED), strict=True):
        assert server_argv_params(argv) | payload_params(body) == params
        assert argv[argv.index("--chat-template") - 1 :][:2] == ["--no-jinja", "--chat-template"]


async def test_server_mode_sampling_change_keeps_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "server.jsonl"
    behave(monkeypatch, record=str(log))
    async with serving(fake_settings(tmp_path)) as client:
        await client.post("/api/chat", CHAT)
        await client.post("/api/config", {"llm_params": {"temp": 0.9, "top_k": 7}})
        # A per-request override wins for that request only.
        status, _ = await client.post("/api/chat", CHAT | {"temp": 0.1, "mirostat": 1})
        assert status == 200
        await client.post("/api/chat", CHAT)
    assert len([e for e in recorded(log) if "argv" in e]) == 1
    chats = [e["body"] for e in recorded(log) if e.get("path") == "/v1/chat/completions"]
    assert [(c["temperature"], c["top_k"], c["mirostat"]) for c in chats] == [
        (0.35, 40, 0), (0.1, 7, 1), (0.9, 7, 0)
    ]  # fmt: skip


async def test_cli_mode_applies_all_eight_params_and_hides_the_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "cli.jsonl"
    behave(monkeypatch, record=str(log))
    prompt = "--help $(touch pwned) `id` \"double\" 'single'\nsecond line; rm -rf /"
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        status, answer = await client.post(
            "/api/chat", {"messages": [{"role": "user", "content": prompt}], "max_tokens": 9}
        )
        assert status == 200, answer
        assert answer["backend"] == "cli" and answer["message"]["content"] == "fake answer"
        assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 3}
        status, answer = await client.post("/api/generate-embeddings", {"input": ["a\nb", "c"]})
        assert status == 200 and answer["embeddings"] == [[0.25, 0], [0.25, 1]]
        await client.post("/api/config", {"llm_params": CHANGED})
        await client.post("/api/chat", CHAT)
        await client.post("/api/generate-embeddings", {"input": "x"})
    chat1, embed1, chat2, embed2 = recorded(log)
    assert cli_argv_params(chat1["argv"]) == DEFAULTS
    assert cli_argv_params(chat2["argv"]) == CHANGED
    assert flag(chat1["argv"], "--n-predict") == "9"
    # The prompt travels in a private file, rendered with the template, never in argv.
    assert chat1["file"] == f"<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n\n"
    assert chat1["file_mode"] == "0o600"
    assert not any("touch" in a or "second line" in a for a in chat1["argv"])
    assert not Path(flag(chat1["argv"], "--file")).exists()
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    # Embeddings: the non-sampling params only; the context padded as llama-server pads it.
    for entry, params in ((embed1, DEFAULTS), (embed2, CHANGED)):
        argv = entry["argv"]
        assert int(flag(argv, "--ctx-size")) == -(-params["ctx_size"] // 256) * 256
        assert int(flag(argv, "--batch-size")) == params["batch_size"]
        assert int(flag(argv, "--ubatch-size")) == params["ubatch_size"]
        assert flag(argv, "--pooling") == "mean" and "--temp" not in argv
    assert embed1["file"].split(flag(embed1["argv"], "--embd-separator")) == ["a\nb", "c"]


async def test_config_survives_a_restart(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, backend="cli")
    async with serving(settings) as client:
        status, config = await client.post(
            "/api/config", {"llm_mode": "cli", "llm_params": {"temp": 0.7}}
        )
        assert status == 200 and config["backend"] == "cli" and config["llm_params"]["temp"] == 0.7
    async with serving(settings) as client:
        status, config = await client.get("/api/config")
        assert status == 200
        assert config["backend"] == "cli" and config["llm_params"] == DEFAULTS | {"temp": 0.7}


@pytest.mark.parametrize(
    ("update", "named"),
    [
        ({"llm_params": {"top_p": 1.5}}, "llm_params.top_p"),
        ({"llm_params": {"top_p": 0}}, "llm_params.top_p"),
        ({"llm_params": {"mirostat": 3}}, "llm_params.mirostat"),
        ({"llm_params": {"ctx_size": -1}}, "llm_params.ctx_size"),
        ({"llm_params": {"batch_size": 0}}, "llm_params.batch_size"),
        ({"llm_params": {"ubatch_size": 9000}}, "ubatch_size"),
        ({"llm_params": {"temp": "hot"}}, "llm_params.temp"),
        ({"llm_params": {"top_k": 1.5}}, "llm_params.top_k"),
        ({"llm_params": {"tempp": 1}}, "tempp"),
        ({"llm_params": {"temp": 0.5, "top_p": 2}}, "llm_params.top_p"),
        ({"backend": "gpu"}, "backend"),
        ({"backend": "cli", "llm_mode": "server"}, "llm_mode"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_invalid_config_update_changes_nothing(
    tmp_path: Path, update: dict[str, Any], named: str
) -> None:
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        _, before = await client.get("/api/config")
        status, body = await client.post("/api/config", update)
        assert status == 400
        assert body["error"]["type"] == "invalid_request" and named in body["error"]["message"]
        assert (await client.get("/api/config"))[1] == before
    assert not (tmp_path / "state" / "config.json").exists()


async def test_config_write_failure_is_a_json_error_and_changes_nothing(tmp_path: Path) -> None:
    settings = fake_settings(tmp_path, backend="cli")
    state = tmp_path / "state"
    async with serving(settings) as client:
        await client.post("/api/config", {"llm_params": {"temp": 0.5}})
        saved = (state / "config.json").read_bytes()
        # The state directory becomes unwritable (a file in its place fails even for root).
        state.rename(tmp_path / "state.bak")
        state.write_text("not a directory")
        status, body = await client.post("/api/config", {"llm_params": {"temp": 0.9}})
        assert status == 500 and body["error"]["type"] == "state_error"
        assert f"cannot save the config in {state}" in body["error"]["message"]
        assert (await client.get("/api/config"))[1]["llm_params"]["temp"] == 0.5
    assert (tmp_path / "state.bak" / "config.json").read_bytes() == saved


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b"{not json", JSON, 400, "invalid JSON"),
        (b"{}", JSON, 400, "missing required field `messages`"),
        (b'{"messages": []}', JSON, 400, "`$.messages`"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', JSON, 400, "`$.messages[0].role`"),
        (b'{"messages": [{"role": "user", "content": 5}]}', JSON, 400, "`$.messages[0].content`"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', JSON, 400,
         "`$.max_tokens`"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}', JSON, 400,
         "`$.max_tokens`"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 99999999}', JSON, 400,
         "Expected `int` <= 1048576"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}', JSON, 400,
         "`$.max_tokens`"),
        (b'{"messages": [{"role": "user", "content": "x"}], "top_p": 7}', JSON, 400, "`$.top_p`"),
        (b'{"a":' * 500 + b"1" + b"}" * 500, JSON, 400, "missing required field"),
        (b"[" * 3000, JSON, 400, "Expected `object`, got `array`"),
        (b'{"messages": []}', "text/plain", 415, "Content-Type: application/json"),
        (b"x" * 5000, JSON, 413, "over the limit of 4096 bytes"),
    ],
)  # fmt: skip
async def test_bad_chat_requests_get_a_json_error(
    tmp_path: Path, body: bytes, content_type: str, status: int, says: str
) -> None:
    settings = fake_settings(tmp_path, backend="cli")
    settings = msgspec.structs.replace(
        settings, limits=msgspec.structs.replace(settings.limits, max_body_bytes=4096)
    )
    headers = {"Content-Type": content_type}
    async with serving(settings) as client:
        async with client.http.post("/api/chat", data=body, headers=headers) as resp:
            assert resp.status == status
            error = (await resp.json())["error"]
    assert says in error["message"] and error["type"]


async def test_unknown_routes_and_methods_get_json_errors(tmp_path: Path) -> None:
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        assert (await client.get("/api/nope"))[0] == 404
        status, body = await client.get("/api/chat")
        assert status == 405 and body["error"]["message"] == "Method Not Allowed"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"input": ""}, "input 0 is empty"),
        ({"input": ["a", "  "]}, "input 1 is empty"),
        ({"input": []}, "`$.input`"),
        ({"input": 5}, "`$.input`"),
    ],
)
async def test_bad_embedding_requests_get_400(
    tmp_path: Path, body: dict[str, Any], says: str
) -> None:
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        status, answer = await client.post("/api/generate-embeddings", body)
    assert status == 400 and says in answer["error"]["message"]


async def test_cli_mode_rejects_nul_characters(tmp_path: Path) -> None:
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        status, answer = await client.post(
            "/api/chat", {"messages": [{"role": "user", "content": "a\u0000b"}]}
        )
    assert status == 400 and "NUL" in answer["error"]["message"]


@pytest.mark.parametrize(("llama_status", "status"), [(500, 502), (400, 400)])
async def test_server_mode_maps_llama_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama_status: int, status: int
) -> None:
    behave(monkeypatch, fail_status=llama_status)
    async with serving(fake_settings(tmp_path)) as client:
        got, answer = await client.post("/api/chat", CHAT)
    assert got == status and "fake failure" in answer["error"]["message"]


async def test_server_mode_crash_loop_answers_503_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request waits through the restarts its budget allows, then hears that the model
    has failed, in one sentence: the log's lines are for /ready and /api/models."""
    behave(monkeypatch, exit_at_start=1)
    llama = LlamaServer(port=free_port(), restart_limit=2, backoff_initial_s=0.05)
    async with serving(fake_settings(tmp_path, llama_server=llama)) as client:
        async with client.http.post("/api/chat", json=CHAT) as resp:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
            error = (await resp.json())["error"]
        status, ready = await client.get("/ready")
    assert error["type"] == "backend_unavailable"
    assert error["message"] == (
        "llama-server for stub has failed and is not restarted (see /api/models)"
    )
    assert status == 503 and "failed to load model" in ready["processes"][0]["last_error"]


async def test_cli_failure_answers_502_and_logs_the_stderr_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    behave(monkeypatch, exit=3)
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        status, answer = await client.post("/api/chat", CHAT)
    assert status == 502
    assert answer["error"]["message"] == "llama-completion exited with status 3"
    assert "llama-completion exited with status 3: ['error: fake failure']" in caplog.text


async def test_cli_timeout_answers_504_and_kills_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "cli.jsonl"
    behave(monkeypatch, sleep=60, record=str(log))
    settings = fake_settings(tmp_path, backend="cli", limits=Limits(request_timeout_s=1))
    async with serving(settings) as client:
        status, answer = await client.post("/api/chat", CHAT)
    assert status == 504 and answer["error"]["type"] == "timeout"
    [run] = recorded(log)
    assert not alive(run["pid"])
    assert not Path(flag(run["argv"], "--file")).parent.exists()


async def read_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    return [e for e in (await resp.read()).split(b"\n\n") if e]


async def test_cli_stream_failure_ends_with_an_error_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, partial=3)
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        async with client.http.post("/api/chat", json=CHAT | {"stream": True}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = await read_events(resp)
    first = json.loads(events[0].removeprefix(b"data: "))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "half an ans"}
    error = json.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["type"] == "upstream_error" and "exited with status 3" in error["message"]
    assert b"data: [DONE]" not in events


async def test_stream_that_fails_before_its_first_event_is_a_json_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, fail_status=500)
    async with serving(fake_settings(tmp_path)) as client:
        status, body = await client.post("/v1/chat/completions", CHAT | {"stream": True})
    assert status == 502 and "fake failure" in body["error"]["message"]


async def test_disconnect_without_streaming_kills_the_cli_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "cli.jsonl"
    behave(monkeypatch, sleep=60, record=str(log))
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.post, "/api/chat", CHAT)
            await wait_until(lambda: bool(recorded(log)), within=10)
            tg.cancel_scope.cancel()  # the client gives up and closes its connection
        [run] = recorded(log)
        # Within a third of the fake's sleep: it was stopped, it did not end by itself.
        await wait_until(lambda: not alive(run["pid"]), within=20)
        await wait_until(lambda: not Path(flag(run["argv"], "--file")).exists(), within=5)


async def test_overload_queues_one_and_refuses_the_next_with_429(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, sleep=1.0)
    limits = Limits(cli_concurrency=1, max_queue=1, request_timeout_s=10)
    results: list[tuple[int, str | None]] = []
    async with serving(fake_settings(tmp_path, backend="cli", limits=limits)) as client:

        async def one() -> None:
            async with client.http.post("/api/chat", json=CHAT) as resp:
                await resp.read()
                results.append((resp.status, resp.headers.get("Retry-After")))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
                await anyio.sleep(0.1)  # arrive in order: served, queued, refused
    assert sorted(status for status, _ in results) == [200, 200, 429]
    assert [retry for status, retry in results if status == 429] == ["2"]


async def test_waiting_past_the_queue_timeout_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    behave(monkeypatch, sleep=2.0)
    limits = Limits(cli_concurrency=1, queue_timeout_s=0.3, request_timeout_s=10)
    statuses: list[int] = []
    async with serving(fake_settings(tmp_path, backend="cli", limits=limits)) as client:

        async def one() -> None:
            statuses.append((await client.post("/api/chat", CHAT))[0])

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await anyio.sleep(0.1)
            tg.start_soon(one)
    assert statuses == [503, 200]


FIELDS = {
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 9,
    "stop": ["END", "\n\n"],
    "seed": 42,
    "frequency_penalty": 0.7,
    "presence_penalty": -0.3,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    },
}


async def test_openai_fields_reach_llama_server_and_llama_completion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.jsonl"
    behave(monkeypatch, record=str(log))
    async with serving(fake_settings(tmp_path)) as client:
        status, answer = await client.post("/v1/chat/completions", FIELDS)
        assert status == 200, answer
    [body] = [e["body"] for e in recorded(log) if e.get("path") == "/v1/chat/completions"]
    assert body["stop"] == ["END", "\n\n"] and body["seed"] == 42
    assert body["cache_prompt"] is False  # a cached prefix can change a seeded answer
    assert (body["frequency_penalty"], body["presence_penalty"]) == (0.7, -0.3)
    assert body["json_schema"] == {"type": "object"}
    log.unlink()
    (tmp_path / "cli").mkdir()
    async with serving(fake_settings(tmp_path / "cli", backend="cli")) as client:
        status, answer = await client.post("/v1/chat/completions", FIELDS)
        assert status == 200, answer
    [run] = recorded(log)
    argv = run["argv"]
    assert (flag(argv, "--seed"), flag(argv, "--frequency-penalty")) == ("42", "0.7")
    assert flag(argv, "--presence-penalty") == "-0.3"
    assert "--json-schema-file" in argv  # the schema in a private file, like the prompt


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": -1}, "seed"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"maxLength": 10**6}},
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
async def test_bad_openai_fields_are_a_400_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, object], param: str
) -> None:
    behave(monkeypatch)
    async with serving(fake_settings(tmp_path)) as client:
        status, answer = await client.post("/v1/chat/completions", FIELDS | change)
    assert status == 400, answer
    assert param in answer["error"]["message"] or answer["error"].get("param") == param
