"""Slow clients against `ai-server serve` as a real process (gateway.protocol): total header
and body deadlines, idle keep-alive connections, the connection cap, and slow readers left
alone. Raw sockets play the slow clients; order and counts are asserted, never timings."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, wait_until
from tests.helpers import (
    gateway,
    parse,
    parse_head,
    read_response,
    read_to_eof,
    wait_ready,
    write_config,
)

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}
FAST = "header_timeout_s = 2\nbody_timeout_s = 2\nkeepalive_timeout_s = 1\n"


class Gateway:
    def __init__(self, url: str, port: int, pid: int, record: Path, log: Path) -> None:
        self.url, self.port, self.pid, self.record, self.log = url, port, pid, record, log

    async def connect(self) -> anyio.abc.SocketStream:
        return await anyio.connect_tcp("127.0.0.1", self.port)

    async def counters(self) -> dict[str, float]:
        """`ai_server_deadlines_missed` by deadline, `connections_refused`, and requests
        whose client was gone before they were answered (status 499)."""
        async with aiohttp.ClientSession() as http, http.get(self.url + "/metrics") as resp:
            text = await resp.text()
        found = {"header": 0.0, "body": 0.0, "refused": 0.0, "gone": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "ai_server_deadlines_missed_total":
                    found[sample.labels["deadline"]] = sample.value
                elif sample.name == "ai_server_connections_refused_total":
                    found["refused"] = sample.value
                elif sample.name == "ai_server_requests_total":
                    found["gone"] += sample.value * (sample.labels["status"] == "499")
        return found

    def sockets(self) -> int:
        """Connections to the gateway's port that its process still holds open (any TCP
        state but LISTEN), from /proc: its socket fds matched to /proc/net/tcp."""
        inodes = set()
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                target = fd.readlink().name
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        return sum(
            1
            for row in (line.split() for line in rows)
            if int(row[1].split(":")[1], 16) == self.port and row[3] != "0A" and row[9] in inodes
        )


@asynccontextmanager
async def started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: str, backend: str = "server",
    **behaviour: Any,
) -> AsyncIterator[Gateway]:  # fmt: skip
    """`ai-server serve` on the fakes with these `[limits]`, ready, with no connection of
    ours left open on it."""
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_LLAMA", json.dumps({"record": str(record), **behaviour}))
    port = free_port()
    config = write_config(tmp_path, port, free_port(), backend=backend)
    config.write_text(config.read_text() + "[limits]\n" + limits)
    url = f"http://127.0.0.1:{port}"
    with gateway(config) as process:
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, url)
            found = Gateway(url, port, process.pid, record, tmp_path / "gateway.log")
            await wait_until(lambda: found.sockets() == 0, within=10)
            yield found
        finally:  # SIGTERM, so the gateway stops its llama-server too (SIGKILL leaves it)
            process.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(process.wait, 30)


def error(code: str) -> dict[str, str]:
    """The `error` object of the gateway's envelope for one of gateway.protocol's answers."""
    return {"type": "request_timeout" if code.endswith("_timeout") else "overloaded", "code": code}


def assert_envelope(body: Any, code: str) -> None:
    assert set(body) == {"error"}
    assert list(body["error"]) == ["type", "code", "message"]  # error_response's order
    assert {k: body["error"][k] for k in ("type", "code")} == error(code)
    assert "[limits]" in body["error"]["message"]


async def test_slow_bodies_are_answered_408_and_closed_while_a_normal_client_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow, normal = 500, 10
    full = json.dumps({**CHAT, "pad": "x" * 100}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(full)}\r\n\r\n"
    ).encode()
    async with started(tmp_path, monkeypatch, FAST + "max_connections = 1000\n") as gw:
        answers: list[bytes] = []
        unanswered_when_served: list[int] = []
        all_sent = anyio.Event()
        sent = 0

        async def slow_body() -> None:
            nonlocal sent
            async with await gw.connect() as stream:
                await stream.send(head + full[: len(full) // 2])  # then silence
                sent += 1
                if sent == slow:
                    all_sent.set()
                answers.append(await read_to_eof(stream))

        async with anyio.create_task_group() as tg:
            for _ in range(slow):
                tg.start_soon(slow_body)
            await all_sent.wait()
            async with aiohttp.ClientSession() as http:
                for _ in range(normal):
                    async with http.post(gw.url + "/v1/chat/completions", json=CHAT) as resp:
                        assert resp.status == 200, await resp.text()
                        unanswered_when_served.append(slow - len(answers))
        # The normal client was served while the slow bodies held their connections.
        assert unanswered_when_served[0] > 0
        assert len(answers) == slow
        for raw in answers:
            status, headers, body = parse(raw)
            assert status == 408 and headers["connection"] == "close"
            assert_envelope(body, "body_timeout")
        await wait_until(lambda: gw.sockets() == 0, within=10)  # none left open
        assert await gw.counters() == {"header": 0, "body": slow, "refused": 0, "gone": slow}
        assert "Traceback" not in gw.log.read_text()  # a slow client is not our error
        # No slow body reached llama-server: only the normal client's requests did.
        upstream = [json.loads(line) for line in gw.record.read_text().splitlines()]
        assert [e.get("path") for e in upstream].count("/v1/chat/completions") == normal


async def test_a_trickled_header_gets_408_at_the_header_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: gw\r\nUser-Agent: " + b"x" * 100 + b"\r\n\r\n"
    async with started(tmp_path, monkeypatch, FAST) as gw:
        async with await gw.connect() as stream:
            trickled = 0

            async def trickle() -> None:  # one byte every 0.2 s, until answered
                nonlocal trickled
                for byte in request:
                    await stream.send(bytes([byte]))
                    trickled += 1
                    await anyio.sleep(0.2)

            async with anyio.create_task_group() as tg:
                tg.start_soon(trickle)
                answer = await read_to_eof(stream)
                tg.cancel_scope.cancel()
        status, headers, body = parse(answer)
        assert status == 408 and headers["connection"] == "close"
        assert_envelope(body, "header_timeout")
        assert 0 < trickled < len(request)  # the deadline came before the headers did
        async with await gw.connect() as silent:  # never sends a byte: closed, unanswered
            assert await read_to_eof(silent) == b""
        assert await gw.counters() == {"header": 2, "body": 0, "refused": 0, "gone": 0}


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keepalive_timeout_s (1) is set, not uvicorn's default (5): the idle connection closes
    # before a slow body's deadline (3) started at the same time.
    limits = "header_timeout_s = 2\nbody_timeout_s = 3\nkeepalive_timeout_s = 1\n"
    async with started(tmp_path, monkeypatch, limits) as gw:
        closed: list[str] = []

        async def idle() -> None:
            async with await gw.connect() as stream:
                for _ in range(2):  # kept alive between requests
                    await stream.send(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
                    status, headers, _ = await read_response(stream)
                    assert status == 200 and "connection" not in headers
                idling.set()
                assert await read_to_eof(stream) == b""  # idle: closed, nothing said
                closed.append("idle")

        async def slow_body() -> None:
            async with await gw.connect() as stream:
                await idling.wait()
                await stream.send(
                    b"POST /api/chat HTTP/1.1\r\nHost: gw\r\nContent-Length: 9\r\n\r\n{"
                )
                assert parse(await read_to_eof(stream))[0] == 408
                closed.append("slow body")

        idling = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(idle)
            tg.start_soon(slow_body)
        assert closed == ["idle", "slow body"]
        await wait_until(lambda: gw.sockets() == 0, within=10)
        assert await gw.counters() == {"header": 0, "body": 1, "refused": 0, "gone": 1}


async def test_over_max_connections_a_new_connection_gets_a_json_503_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 20
    limits = f"max_connections = {cap}\nheader_timeout_s = 60\nkeepalive_timeout_s = 60\n"
    async with started(tmp_path, monkeypatch, limits) as gw:
        held = [await gw.connect() for _ in range(cap)]
        for stream in held:  # each one served, so the gateway counts it open
            await stream.send(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert (await read_response(stream))[0] == 200
        async with await gw.connect() as quiet:  # answered before it sends anything
            status, headers, body = parse(await read_to_eof(quiet))
        assert status == 503 and headers["retry-after"] == "1"
        assert_envelope(body, "too_many_connections")
        async with await gw.connect() as asking:  # its request is read and dropped, no reset
            await asking.send(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert parse(await read_to_eof(asking))[0] == 503
        await wait_until(lambda: gw.sockets() == cap, within=10)  # the refused ones: closed
        await held.pop().aclose()
        await wait_until(lambda: gw.sockets() == cap - 1, within=10)
        assert await gw.counters() == {"header": 0, "body": 0, "refused": 2, "gone": 0}
        for stream in held:
            await stream.aclose()


async def test_a_slow_reader_is_not_cut_off_by_the_body_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    words = 8  # 0.5 s apart: a stream of 4 s, twice the body deadline
    limits = "header_timeout_s = 2\nbody_timeout_s = 2\n"
    body = json.dumps({**CHAT, "stream": True}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    async with started(tmp_path, monkeypatch, limits, backend="cli", drip=[words, 0.5]) as gw:
        async with await gw.connect() as stream:
            # The body in a read of its own (after 100 Continue), so its deadline was running.
            await stream.send(head)
            assert await stream.receive() == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send(body)
            received = b""
            while not received.endswith(b"\r\n0\r\n\r\n"):
                received += await stream.receive(256)
                await anyio.sleep(1)  # reading a chunk a second
        head_bytes, _, chunked = received.partition(b"\r\n\r\n")
        assert parse_head(head_bytes)[0] == 200
        events = [
            json.loads(line[6:]) for line in dechunk(chunked).decode().split("\n\n")
            if line.startswith("data: {")
        ]  # fmt: skip
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        assert text == "".join(f"w{i} " for i in range(words)) + "fake answer"
        assert dechunk(chunked).rstrip().endswith(b"data: [DONE]")
        assert await gw.counters() == {"header": 0, "body": 0, "refused": 0, "gone": 0}


def dechunk(data: bytes) -> bytes:
    """A chunked transfer-coded body, decoded."""
    out = bytearray()
    while True:
        size, _, data = data.partition(b"\r\n")
        if not int(size, 16):
            return bytes(out)
        out += data[: int(size, 16)]
        data = data[int(size, 16) + 2 :]
