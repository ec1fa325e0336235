"""Helpers that tests in more than one module use: processes, the stub GGUF and PNG, the
gateway as a process, raw HTTP responses, uploads and the OpenAI client. Test modules import
them from here, never from one another."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import anyio.abc

from core.config import Settings
from supervisor.pidfile import cmdline
from tests.conftest import free_port

if TYPE_CHECKING:
    import openai

    from tests.e2e.conftest import Client

FAKES = Path(__file__).parent / "fakes"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def llama_pids(binaries: tuple[str, ...]) -> dict[int, list[str]]:
    """Every live process on this machine running one of `binaries`, from /proc: its argv."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return {
        pid: args
        for pid in pids
        if (args := cmdline(pid)) and Path(args[0]).name in binaries and alive(pid)
    }


def llama_servers_on(port: int) -> list[int]:
    """Pids of every llama-server on this machine listening on `port`."""
    return [pid for pid, args in llama_pids(("llama-server",)).items() if str(port) in args]


def gguf_bytes(
    *,
    arch: str = "gemma3",
    name: str | None = None,
    block_count: int | None = None,
    embedding_length: int | None = 640,
    head_count: int | None = None,
    head_count_kv: int | list[int] | None = None,
    key_length: int | None = None,
    value_length: int | None = None,
    context_length: int | None = None,
    chat_template: str | None = None,
    vocab_size: int | None = None,
    add_bos_token: bool | None = None,
    tokens: tuple[str, ...] = ("<bos>", "<eos>"),
    tensors: int = 7,
) -> bytes:
    """A tiny, valid GGUF written by `gguf.GGUFWriter`: the stub model of tests that are not
    about llama. Keys left None are not written; `tensors` one-float tensors. Token 0 is BOS,
    token 1 EOS (when there are two)."""
    import gguf  # numpy and gguf: ~19 MiB, for the tests that write a model only
    import numpy as np

    writer_options: dict[str, Any] = {
        "name": name,
        "block_count": block_count,
        "embedding_length": embedding_length,
        "head_count": head_count,
        "head_count_kv": head_count_kv,
        "key_length": key_length,
        "value_length": value_length,
        "context_length": context_length,
        "chat_template": chat_template,
        "vocab_size": vocab_size,
        "add_bos_token": add_bos_token,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stub.gguf"
        writer = gguf.GGUFWriter(str(path), arch=arch)
        for key, value in writer_options.items():
            if value is not None:
                getattr(writer, f"add_{key}")(value)
        if tokens:
            writer.add_token_list(list(tokens))
            writer.add_bos_token_id(0)
            writer.add_eos_token_id(min(1, len(tokens) - 1))
        for i in range(tensors):
            writer.add_tensor(f"stub.{i}.weight", np.zeros(1, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost nothing."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def write_config(tmp_path: Path, port: int, llama_port: int, backend: str = "server") -> Path:
    model = tmp_path / "stub.gguf"
    model.write_bytes(b"GGUF")
    completion = tmp_path / "llama-completion"
    completion.symlink_to(FAKES / "fake_llama_cli.py")
    path = tmp_path / "config.toml"
    path.write_text(
        f'port = {port}\nbackend = "{backend}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[models]\nchat = "{model}"\nembedding = "{model}"\n'
        f'vision = "{model}"\nmmproj = "{model}"\n'
        f"[llama_server]\nport = {llama_port}\n"
        f'[ollama]\nlisten = "127.0.0.1:{free_port()}"\n'  # never a real Ollama's 11434
        f'[binaries]\nllama_server = "{FAKES / "fake_llama_server.py"}"\n'
        f'llama_completion = "{completion}"\n'
    )
    return path


@contextmanager
def gateway(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`ai-server serve` as a process; its log goes to gateway.log beside the config."""
    with (config.parent / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            yield process
        finally:
            process.kill()
            process.wait()


async def wait_ready(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """Poll /ready until it answers 200 and the first llama-server, if any (server mode: the
    chat model's, which loads at startup), is ready; its body."""
    with anyio.fail_after(30):
        while True:
            try:
                async with http.get(url + "/ready") as resp:
                    body: dict[str, Any] = await resp.json()
                    first = body["processes"][:1]
                    if resp.status == 200 and all(p["state"] == "ready" for p in first):
                        return body
            except aiohttp.ClientConnectionError:
                pass
            await anyio.sleep(0.1)


async def read_to_eof(stream: anyio.abc.SocketStream) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    data = bytearray()
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return bytes(data)


async def read_response(stream: anyio.abc.SocketStream) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, leaving the connection open."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    while len(body) < int(headers["content-length"]):
        body += await stream.receive()
    return status, headers, body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines)
    return int(status_line.split()[1]), {k.lower(): v.strip() for k, _, v in fields}


def parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """A whole response read to EOF: status, headers and the JSON body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    return status, headers, json.loads(body)


async def upload(client: Client, path: str, data: bytes, content_type: str = "image/jpeg",
                 **fields: str) -> tuple[int, dict[str, object]]:  # fmt: skip
    form = aiohttp.FormData()
    form.add_field("image", io.BytesIO(data), filename="photo.jpg", content_type=content_type)
    for name, value in fields.items():
        form.add_field(name, value)
    async with client.http.post(path, data=form) as resp:
        return resp.status, await resp.json()


def private_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("ai-server-*")}


def sdk(settings: Settings) -> openai.AsyncOpenAI:
    import openai  # only the tests that drive the gateway with it pay for importing it

    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{settings.port}/v1", api_key="unused", max_retries=0
    )


def processes_named(name: str) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if (a := cmdline(pid)) and a[0].endswith(name) and alive(pid)]
