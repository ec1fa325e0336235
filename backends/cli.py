"""Cli mode: one llama.cpp process per request, nothing resident in between.

Each run is an anyio subprocess from an argv list in its own process group (admission
control bounds how many run at once), with `limits.request_timeout_s`; timeout,
cancellation (a client that went away) and errors all stop the whole group and remove the
private temp files."""

from __future__ import annotations

import codecs
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec

from backends import toolchain
from backends.base import ChatResult, ChatTask, VisionTask
from backends.catalog import ModelDef
from backends.cli_args import completion_argv, embedding_argv, mtmd_argv
from backends.prompt import render_chat
from backends.sse import DONE, ChunkWriter
from gateway.config import LlmParams, Settings
from gateway.errors import BackendTimeout, BadRequest, GatewayError, UpstreamError
from supervisor.logtail import LogTail
from supervisor.process import spawn

_PROMPT_TOKENS = re.compile(r"prompt eval time =.*?/\s*(\d+) tokens")
_SAMPLED_TOKENS = re.compile(r"samplers time =.*?/\s*(\d+) tokens")
_SPEED = re.compile(r"(?<!prompt )eval time =[^\n]*?([\d.]+) tokens per second")


@contextmanager
def private_dir() -> Iterator[Path]:
    """A directory only we can read (0700), removed with its contents in every outcome."""
    path = Path(tempfile.mkdtemp(prefix="ai-server-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_private(path: Path, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return str(path)


def token_counts(log: str) -> tuple[int, int]:
    """(prompt, generated) tokens from llama-completion's closing perf lines on stderr; the
    sampler sees the prompt and every generated token."""
    prompt = _PROMPT_TOKENS.findall(log)
    sampled = _SAMPLED_TOKENS.findall(log)
    if not prompt or not sampled:
        return 0, 0
    return int(prompt[-1]), max(int(sampled[-1]) - int(prompt[-1]), 0)


def completion_result(content: str, log: str, max_tokens: int) -> ChatResult:
    """A finished llama-completion run as a result: counts and speed from its stderr."""
    prompt_tokens, completion_tokens = token_counts(log)
    speed = _SPEED.findall(log)
    return ChatResult(
        content=content,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason="length" if completion_tokens >= max_tokens else "stop",
        tokens_per_second=float(speed[-1]) if speed else None,
    )


class _Embeddings(msgspec.Struct):
    data: list[dict[str, Any]]


class CliBackend:
    name: Literal["cli"] = "cli"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._timeout = settings.limits.request_timeout_s

    def _binary(self, name: str) -> str:
        explicit = self._settings.binaries.get(name)
        return str(toolchain.resolve_binary(name, explicit, self._settings.cache_path()))

    @contextmanager
    def _prompt_file(self, task: ChatTask, prompt: str) -> Iterator[list[str]]:
        """The llama-completion argv for `task`, its rendered `prompt` in a private file
        that is gone when the block ends."""
        model = task.model.file()
        data = _text_bytes(prompt)
        with private_dir() as tmp:
            # llama.cpp's --file drops one trailing newline; the template's own must stay.
            prompt_file = write_private(tmp / "prompt.txt", data + b"\n")
            yield completion_argv(
                self._binary("llama-completion"),
                str(model),
                prompt_file,
                _sized(task.model, task.params),
                task.max_tokens,
            )

    async def _render(self, task: ChatTask) -> str:
        """The prompt, in a worker thread: a model's first render reads its GGUF."""
        model = task.model.file()
        template = task.model.chat_template
        return await anyio.to_thread.run_sync(render_chat, template, task.messages, model)

    async def chat(self, task: ChatTask) -> ChatResult:
        with self._prompt_file(task, await self._render(task)) as argv:
            stdout, tail = await self._run(argv)
        content = stdout.decode(errors="replace")
        return completion_result(content, tail.text(last=200), task.max_tokens)

    async def chat_stream(self, task: ChatTask, include_usage: bool) -> AsyncGenerator[bytes, None]:
        """OpenAI chunks of llama-completion's stdout, as it writes it. Leaving the loop early
        (the client went away) stops the process group."""
        writer = ChunkWriter(task.model.name)
        tail = LogTail(max_lines=200)
        failure: GatewayError | None = None
        with self._prompt_file(task, await self._render(task)) as argv:
            async with anyio.create_task_group() as tg:
                child = await spawn(argv, tg, tail, stdout="caller")
                assert child.process.stdout is not None
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                try:
                    while (chunk := await self._read(child.process.stdout)) is not None:
                        if text := decoder.decode(chunk):
                            yield writer.delta(text)
                    if text := decoder.decode(b"", final=True):
                        yield writer.delta(text)
                    code = await child.wait()
                except TimeoutError:
                    failure = BackendTimeout(
                        f"llama-completion wrote nothing for {self._timeout:.0f} s"
                    )
                finally:
                    await child.stop(grace=1)
        if failure is None and code != 0:
            failure = exit_error("llama-completion", code, tail)
        if failure is not None:
            raise failure
        result = completion_result("", tail.text(last=200), task.max_tokens)
        yield writer.finish(result.finish_reason or "stop")
        if include_usage:
            yield writer.usage(result.prompt_tokens, result.completion_tokens)
        yield DONE

    async def _read(self, stream: anyio.abc.ByteReceiveStream) -> bytes | None:
        """The next piece of output; None at its end; TimeoutError after a silent timeout."""
        with anyio.fail_after(self._timeout):
            try:
                return await stream.receive()
            except anyio.EndOfStream:
                return None

    async def vision(self, task: VisionTask) -> ChatResult:
        """llama-mtmd-cli on the image, from a private 0600 file like the prompt."""
        model, mmproj = task.model.file(), task.model.projector()
        with private_dir() as tmp:
            argv = mtmd_argv(
                self._binary("llama-mtmd-cli"),
                str(model),
                mmproj,
                write_private(tmp / f"image.{task.image.format}", task.image.data),
                write_private(tmp / "prompt.txt", _text_bytes(task.prompt)),
                _sized(task.model, task.params),
                task.max_tokens,
                task.model.chat_template,
                task.grammar,
            )
            stdout, _ = await self._run(argv)
        # llama-mtmd-cli writes a newline before its answer and prints no token counts.
        return ChatResult(content=stdout.decode(errors="replace").strip(), prompt_tokens=0,
                          completion_tokens=0)  # fmt: skip

    async def embed(
        self, model: ModelDef, texts: Sequence[str], params: LlmParams
    ) -> list[list[float]]:
        # A separator no input contains: inputs may hold newlines (the default separator).
        separator = f"<|ai-server-{secrets.token_hex(8)}|>"
        data = _text_bytes(separator.join(texts))
        path = str(model.file())
        with private_dir() as tmp:
            input_file = write_private(tmp / "input.txt", data)
            argv = embedding_argv(
                self._binary("llama-embedding"), path, input_file, separator, _sized(model, params)
            )
            stdout, _ = await self._run(argv)
        try:
            rows = msgspec.json.decode(stdout, type=_Embeddings).data
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"llama-embedding printed no JSON: {exc}") from None
        if len(rows) != len(texts):
            raise UpstreamError(f"llama-embedding returned {len(rows)} vectors for {len(texts)}")
        return [row["embedding"] for row in rows]

    async def _run(self, argv: list[str]) -> tuple[bytes, LogTail]:
        """Run `argv` to completion; its stdout, and its stderr's tail for errors."""
        name = Path(argv[0]).name
        stdout = bytearray()
        tail = LogTail(max_lines=200)
        try:
            with anyio.fail_after(self._timeout):
                async with anyio.create_task_group() as tg:
                    child = await spawn(argv, tg, tail, stdout=stdout)
                    try:
                        code = await child.wait()
                    finally:
                        await child.stop(grace=1)
        except TimeoutError:
            raise BackendTimeout(f"{name} did not finish within {self._timeout:.0f} s") from None
        if code != 0:
            raise exit_error(name, code, tail)
        return bytes(stdout), tail


# What llama-completion and llama-embedding log when the input does not fit.
_TOO_LONG = re.compile(
    r"prompt is too long \((\d+) tokens, max (\d+)\)"
    r"|tokens in input line \((\d+)\) exceeds batch size \((\d+)\)"
)


def exit_error(name: str, code: int, tail: LogTail) -> GatewayError:
    """A failed llama.cpp run as our error. Input longer than the context is the request's
    fault: 400, as llama-server answers it. Anything else is a 502 with the run's error
    lines (its last lines if it logged none as errors)."""
    lines = tail.lines()
    for line in lines:
        if match := _TOO_LONG.search(line):
            tokens, limit = (group for group in match.groups() if group)
            return BadRequest(f"the input is too long: {tokens} tokens, the context takes {limit}")
    errors = [line for line in lines if " E " in line] or lines
    return UpstreamError(f"{name} exited with status {code}: " + "\n".join(errors[-5:]))


def _sized(model: ModelDef, params: LlmParams) -> LlmParams:
    """The parameters with the model's own startup overrides, as server mode starts it."""
    overrides = {
        name: value
        for name in ("ctx_size", "batch_size", "ubatch_size")
        if (value := getattr(model, name)) is not None
    }
    return msgspec.structs.replace(params, **overrides) if overrides else params


def _text_bytes(text: str) -> bytes:
    if "\0" in text:
        raise BadRequest("text with NUL characters cannot be passed to llama.cpp in cli mode")
    return text.encode()
