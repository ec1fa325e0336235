"""`ai-server serve` as a real process: startup errors, SIGTERM and SIGKILL."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tests.conftest import free_port, wait_until
from tests.helpers import alive, gateway, wait_ready, write_config


def llama_pid(ready: dict[str, Any]) -> int:
    pid: int = ready["processes"][0]["pid"]
    return pid


async def test_a_killed_gateways_llama_server_is_reclaimed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA", json.dumps({}))
    port = free_port()
    config = write_config(tmp_path, port, free_port())
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        with gateway(config) as first:
            orphan = llama_pid(await wait_ready(http, url))
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert alive(orphan)  # what a SIGKILL leaves behind: our llama-server, on our port
        with gateway(config) as second:
            successor = llama_pid(await wait_ready(http, url))
            assert successor != orphan
            assert not alive(orphan)
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=20) == 0
            assert b"Application shutdown complete" in (tmp_path / "gateway.log").read_bytes()
        assert not alive(successor)  # a clean stop stops its children


async def test_sighup_rescans_the_models_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA", json.dumps({}))
    port, folder = free_port(), tmp_path / "models"
    folder.mkdir()
    config = write_config(tmp_path, port, free_port())
    config.write_text(config.read_text() + f'[pool]\nmodels_dir = "{folder}"\n')
    url = f"http://127.0.0.1:{port}"

    async def names(http: aiohttp.ClientSession) -> set[str]:
        async with http.get(url + "/v1/models") as resp:
            return {m["id"] for m in (await resp.json())["data"]}

    async with aiohttp.ClientSession() as http:
        with gateway(config) as process:
            await wait_ready(http, url)
            assert "added" not in await names(http)
            (folder / "added.gguf").write_bytes(b"GGUF")  # adding a model: copy a file
            process.send_signal(signal.SIGHUP)
            with anyio.fail_after(10):
                while "added" not in await names(http):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            assert process.poll() is None  # SIGHUP did not stop it
            process.send_signal(signal.SIGTERM)  # which stops its llama-server too
            assert await anyio.to_thread.run_sync(process.wait, 20) == 0


def test_serve_refuses_an_unknown_config_key_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[llm_params]\ntemprature = 0.5\n")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "temprature" in done.stderr and "llm_params" in done.stderr


async def test_sigterm_finishes_a_stream_notifies_systemd_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "cli.jsonl"
    monkeypatch.setenv("FAKE_LLAMA", json.dumps({"sleep": 1.5, "record": str(log)}))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    notify_path = tmp_path / "notify.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    port = free_port()
    config = write_config(tmp_path, port, free_port(), backend="cli")
    url = f"http://127.0.0.1:{port}"
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    messages: list[bytes] = []

    def listen(notify: socket.socket) -> None:  # what systemd does with NOTIFY_SOCKET
        with contextlib.suppress(TimeoutError):
            while b"STOPPING=1" not in messages:
                messages.append(notify.recv(64))

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(10)
        listener = threading.Thread(target=listen, args=(notify,))
        listener.start()
        async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
            with gateway(config) as process:
                await wait_ready(http, url)
                events: list[bytes] = []

                async def stream() -> None:
                    async with http.post(url + "/api/chat", json=body) as resp:
                        assert resp.status == 200
                        events.extend((await resp.read()).split(b"\n\n"))

                tg.start_soon(stream)
                await wait_until(log.exists, within=10)
                process.send_signal(signal.SIGTERM)  # mid-request
                assert await anyio.to_thread.run_sync(process.wait, 20) == 0
        listener.join()
    assert b"data: [DONE]" in events  # the in-flight stream was finished, not cut
    # It ran on uvloop's loop and httptools' parser, not asyncio's and h11's.
    assert "gateway.stack loop=uvloop.Loop http=httptools" in (tmp_path / "gateway.log").read_text()
    # READY=1 with the status `systemctl status` shows, then the watchdog's pings.
    assert messages[0] == f"READY=1\nSTATUS=Serving on http://127.0.0.1:{port}/".encode()
    assert b"WATCHDOG=1" in messages
    assert b"STOPPING=1\nSTATUS=Stopping: finishing the requests in flight" in messages
    assert messages[-1] == b"STOPPING=1"
    [run] = [json.loads(line) for line in log.read_text().splitlines()]
    assert not alive(run["pid"])


async def test_sigterm_ends_an_open_log_view_instead_of_waiting_out_the_grace(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, free_port())
    with config.open("a") as toml:
        toml.write("[limits]\nshutdown_grace_s = 300\n")
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
        with gateway(config) as process:
            await wait_ready(http, url)
            lines: list[bytes] = []

            async def follow() -> None:  # the dashboard's Logs page, left open
                async with http.get(url + "/api/logs/stub") as resp:
                    assert resp.status == 200
                    async for line in resp.content:
                        lines.append(line)

            tg.start_soon(follow)
            await wait_until(lambda: bool(lines), within=10)
            process.send_signal(signal.SIGTERM)
            # Within the hang guard, far short of the 300 s grace the stream would hold.
            assert await anyio.to_thread.run_sync(process.wait, 60) == 0
    assert b"listening" in b"".join(lines)  # the fake llama-server's own output
