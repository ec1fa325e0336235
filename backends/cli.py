"""Cli mode: one llama.cpp process per request, nothing resident in between.

Each run is an anyio subprocess from an argv list in its own process group (admission
control bounds how many run at once), with `limits.request_timeout_s`; timeout,
cancellation (a client that went away) and errors all stop the whole group and remove the
private temp files."""

from __future__ import annotations

import codecs
import itertools
import logging
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

from backends import hermes, infill, toolchain
from backends.base import ChatTask, Embedded
from backends.catalog import ModelDef
from backends.cli_args import completion_argv, embedding_argv, mtmd_argv
from backends.gguf_meta import read_meta
from backends.prompt import render_chat
from backends.stops import StopWatch
from core.chat import Answer, Event, Finish, FinishReason, TextDelta, Usage
from core.config import LlmParams, Settings
from core.errors import (
    AiServerError,
    BackendTimeout,
    BadRequest,
    ContextExceeded,
    UpstreamError,
)
from supervisor.logtail import LogTail
from supervisor.process import spawn

log = logging.getLogger("ai_server.backend")

_PROMPT_TOKENS = re.compile(r"prompt eval time =.*?/\s*(\d+) tokens")
_SAMPLED_TOKENS = re.compile(r"samplers time =.*?/\s*(\d+) tokens")
_EMBED_TOKENS = re.compile(r"number of tokens in prompt = (\d+)")
_N_CTX = re.compile(r"generate: n_ctx = (\d+)")
_SPEED = re.compile(r"(?<!prompt )eval time =[^\n]*?([\d.]+) tokens per second")
# llama-tokenize's line for a token: its id and its text (which may hold a newline).
_PIECE = re.compile(rb" *(\d+) -> '(.*?)'\n(?= *\d+ -> '|\Z)", re.S)
_PROMPT_MS = re.compile(r"prompt eval time =\s*([\d.]+) ms")
_EVAL_MS = re.compile(r"(?<!prompt )eval time =\s*([\d.]+) ms")


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


def timings_of(log: str) -> dict[str, float] | None:
    """The prompt's and the generation's milliseconds from llama-completion's closing perf
    lines, under llama-server's names for them (`prompt_ms`, `predicted_ms`)."""
    prompt, generation = _PROMPT_MS.findall(log), _EVAL_MS.findall(log)
    if not prompt or not generation:
        return None
    return {"prompt_ms": float(prompt[-1]), "predicted_ms": float(generation[-1])}


def completion_result(content: str, log: str, max_tokens: int) -> Answer:
    """A finished llama-completion run as an answer: counts and speed from its stderr."""
    prompt_tokens, completion_tokens = token_counts(log)
    speed = _SPEED.findall(log)
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tokens_per_second=float(speed[-1]) if speed else None,
        timings=timings_of(log),
    )
    # A run also ends where the context does: cut short as by max_tokens (server mode says
    # "length" there too), not a "stop".
    n_ctx = _N_CTX.findall(log)
    full = bool(n_ctx) and prompt_tokens + completion_tokens >= int(n_ctx[-1])
    finish: FinishReason = "length" if completion_tokens >= max_tokens or full else "stop"
    return Answer(text=content, finish_reason=finish, usage=usage)


class _Embeddings(msgspec.Struct):
    data: list[dict[str, Any]]


# What llama-completion prints on stdout after the model's end of generation, and after the
# text whenever it exits: not the answer.
END_OF_TEXT = " [end of text]"
TRAILER = "\n\n"


class RunTail(LogTail):
    """One run's output, for its errors and counts; each complete line is also copied to its
    model's log (`log`, what `/api/logs/{name}` shows in cli mode) after `label`, except
    llama-embedding's echo of the input, which may run over several lines until llama.cpp's
    next log line: prompts are never logged."""

    def __init__(self, log: LogTail, label: str) -> None:
        super().__init__(max_lines=200)
        self._log, self._label = log, label
        self._echo = False  # in an echo of the input

    def feed(self, text: str) -> None:
        before = self.count
        super().feed(text)
        for line in self.since(before):
            self._echo = _in_echo(line, self._echo)
            if not self._echo:
                self._log.feed(f"{self._label}{line}\n")


class _Run:
    """One llama-completion run as `_generate` goes: its prompt, what it sent, its log."""

    def __init__(self, tail: LogTail) -> None:
        self.prompt = ""
        self.text: list[str] = []
        self.tail = tail
        self.stopped = False  # ended by a stop string
        self.hit: str | None = None  # that stop string


class CliBackend:
    name: Literal["cli"] = "cli"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._timeout = settings.limits.request_timeout_s
        self._logs: dict[str, LogTail] = {}  # by model: the last lines of its runs
        self._runs = itertools.count(1)

    def log_of(self, name: str) -> LogTail | None:
        """The last lines of model `name`'s runs, each after `binary#N: ` (N counts runs)."""
        return self._logs.get(name)

    def _tail(self, model: str, binary: str) -> RunTail:
        """A new run's tail, copying to `model`'s log."""
        if (log := self._logs.get(model)) is None:
            log = self._logs[model] = LogTail(max_lines=500)
        return RunTail(log, f"{binary}#{next(self._runs)}: ")

    def _binary(self, name: str) -> str:
        explicit = self._settings.binaries.get(name)
        return str(toolchain.resolve_binary(name, explicit, self._settings.cache_path()))

    @contextmanager
    def _prompt_file(self, task: ChatTask, prompt: str) -> Iterator[list[str]]:
        """The llama-completion argv for `task`, its rendered `prompt` (and JSON schema) in
        private files that are gone when the block ends."""
        model = task.model.file()
        data = _text_bytes(prompt)
        with private_dir() as tmp:
            # llama.cpp's --file drops one trailing newline; the template's own must stay.
            prompt_file = write_private(tmp / "prompt.txt", data + b"\n")
            schema_file = grammar_file = None
            if task.request.json_schema is not None:
                schema = msgspec.json.encode(task.request.json_schema)
                schema_file = write_private(tmp / "schema.json", schema)
            if task.request.tools and task.request.tool_choice == "required":
                # llama-server's grammar for a required call (backends.hermes)
                rules = hermes.grammar(task.request.tools, task.request.parallel_tool_calls)
                grammar_file = write_private(tmp / "grammar.gbnf", rules.encode())
            yield completion_argv(
                self._binary("llama-completion"),
                str(model),
                prompt_file,
                _sized(task.model, task.params),
                task.max_tokens,
                seed=task.request.seed,
                frequency_penalty=task.request.sampling.frequency_penalty,
                schema_file=schema_file,
                grammar_file=grammar_file,
            )

    async def _render(self, task: ChatTask) -> str:
        """The prompt, in a worker thread: a model's first render reads its GGUF. A raw
        request's is its own."""
        if task.request.suffix is not None:
            return await self._infill(task, task.request.suffix)
        if task.request.raw:
            return task.request.prompt
        model = task.model.file()
        template = task.model.chat_template
        messages = task.request.messages
        tools = hermes.tools_json(task.request.tools)
        return await anyio.to_thread.run_sync(render_chat, template, messages, model, tools)

    async def _infill(self, task: ChatTask, suffix: str) -> str:
        """The prompt llama-server's /infill builds (backends.infill), each part cut to the
        tokens it keeps: counted by llama-tokenize only when its bytes could exceed them."""
        path = str(task.model.file())
        meta = await anyio.to_thread.run_sync(read_meta, path)
        if meta.fim is None:
            raise BadRequest(f"{task.model.name} does not support insert", param="suffix")
        params = _sized(task.model, task.params)
        take = infill.budget(params, task.model.embeddings, meta.context_length)
        prefix, preamble = task.request.prompt, infill.preamble(meta.fim)
        if len(prefix.encode()) > take.prefix:
            prefix = _text(await self._pieces(path, prefix, special=False), -take.prefix)
        if len(suffix.encode()) > take.suffix:
            suffix = _text(await self._pieces(path, suffix, special=False), take.suffix)
        if len(preamble.encode()) > take.preamble:
            preamble = _text(await self._pieces(path, preamble, special=True), -take.preamble)
        return infill.prompt(meta.fim, prefix, suffix, preamble)

    async def _pieces(self, model: str, text: str, *, special: bool) -> list[bytes]:
        """`text`'s tokens (each token's bytes) by llama-tokenize, without a BOS; its
        special tokens' text parsed into them only if `special`."""
        flags = ["--no-bos", *([] if special else ["--no-parse-special"])]
        stdout = await self._tokenize(model, text, flags)
        return [match[2] for match in _PIECE.finditer(stdout)]

    async def chat(self, task: ChatTask) -> Answer:
        """With `tools` (a template that calls them natively, backends.hermes), its calls
        parsed out of the text as llama-server's parser does."""
        run = _Run(self._tail(task.model.name, "llama-completion"))
        async for _ in self._generate(task, run):
            pass
        answer = await self._result(task, run)
        if not task.request.tools or task.request.tool_choice == "none":
            return answer
        last = task.request.messages[-1]
        prefill = last.text if last.role == "assistant" else ""  # the answer continues it
        # A stop at the call's end cut it off the text (llama-server parses the call).
        closed = hermes.CLOSE if run.stopped and hermes.CLOSE in task.request.stop else ""
        content, calls = hermes.parse(prefill + answer.text + closed)
        if not calls:
            return answer
        return msgspec.structs.replace(
            answer, text=content, tool_calls=tuple(calls), finish_reason="tool_calls"
        )

    async def chat_stream(self, task: ChatTask) -> AsyncGenerator[Event, None]:
        """llama-completion's stdout as text deltas, as it writes it; then the finish and the
        counts. Leaving the loop early (the client went away) stops the process group."""
        run = _Run(self._tail(task.model.name, "llama-completion"))
        async for text in self._generate(task, run):
            yield TextDelta(text=text)
        answer = await self._result(task, run)
        yield Finish(reason=answer.finish_reason, stop_sequence=answer.stop_sequence)
        if answer.usage is not None:
            yield answer.usage

    async def _generate(self, task: ChatTask, run: _Run) -> AsyncGenerator[str, None]:
        """llama-completion's text as it writes it, cut before the first stop string: the
        process group is stopped there, and nothing of the stop is ever yielded."""
        run.prompt = await self._render(task)
        watch = StopWatch([*task.request.stop, END_OF_TEXT], trailer=TRAILER)
        failure: AiServerError | None = None
        code = 0
        with self._prompt_file(task, run.prompt) as argv:
            async with anyio.create_task_group() as tg:
                child = await spawn(argv, tg, run.tail, stdout="caller")
                assert child.process.stdout is not None
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                try:
                    while (chunk := await self._read(child.process.stdout)) is not None:
                        if text := watch.feed(decoder.decode(chunk)):
                            run.text.append(text)
                            yield text
                        if watch.stopped and watch.hit != END_OF_TEXT:
                            break
                    else:
                        if text := watch.feed(decoder.decode(b"", final=True)) + watch.flush():
                            run.text.append(text)
                            yield text
                        code = await child.wait()
                except TimeoutError:
                    failure = BackendTimeout(
                        f"llama-completion wrote nothing for {self._timeout:.0f} s"
                    )
                finally:
                    await child.stop(grace=1)
        run.stopped = watch.stopped and watch.hit != END_OF_TEXT
        run.hit = watch.hit if run.stopped else None
        if failure is not None:
            raise failure
        if not run.stopped and code != 0:
            raise exit_error("llama-completion", code, run.tail)

    async def _result(self, task: ChatTask, run: _Run) -> Answer:
        """Counts and speed from llama-completion's closing lines; after a stop string ended
        it early (no closing lines), counted by llama.cpp's own tokenizer."""
        content = "".join(run.text)
        if not run.stopped:
            return completion_result(content, run.tail.text(last=200), task.max_tokens)
        model = str(task.model.file())
        prompt_tokens = await self._count_tokens(model, run.prompt, bos=True)
        completion_tokens = await self._count_tokens(model, content, bos=False)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return Answer(text=content, finish_reason="stop", usage=usage, stop_sequence=run.hit)

    async def count_tokens(self, task: ChatTask) -> int:
        """The prompt rendered as for llama-completion, counted by llama-tokenize."""
        prompt = await self._render(task)
        return await self._count_tokens(str(task.model.file()), prompt, bos=True)

    async def _count_tokens(self, model: str, text: str, *, bos: bool) -> int:
        """Tokens of `text` by llama-tokenize, special tokens parsed as llama-completion
        does (a rendered prompt's template markers are one token each)."""
        if not text:
            return 0
        stdout = await self._tokenize(model, text, ["--ids", *([] if bos else ["--no-bos"])])
        ids = stdout.decode().strip().removeprefix("[").removesuffix("]")
        return len([i for i in ids.split(",") if i.strip()])

    async def _tokenize(self, model: str, text: str, flags: list[str]) -> bytes:
        """llama-tokenize's output for `text` (from a private file, as it is) with `flags`."""
        with private_dir() as tmp:
            argv = [
                self._binary("llama-tokenize"), "--model", model,
                "--file", write_private(tmp / "text.txt", _text_bytes(text)),
                "--no-escape", "--log-disable", *flags,
            ]  # fmt: skip
            stdout, _ = await self._run(argv)
        return stdout

    async def _read(self, stream: anyio.abc.ByteReceiveStream) -> bytes | None:
        """The next piece of output; None at its end; TimeoutError after a silent timeout."""
        with anyio.fail_after(self._timeout):
            try:
                return await stream.receive()
            except anyio.EndOfStream:
                return None

    async def vision(self, task: ChatTask) -> Answer:
        """llama-mtmd-cli on the image, from a private 0600 file like the prompt."""
        model, mmproj = task.model.file(), task.model.projector()
        (message,) = task.request.messages
        (image,) = message.images
        extension = image.media_type.removeprefix("image/")  # jpeg or png, once prepared
        with private_dir() as tmp:
            argv = mtmd_argv(
                self._binary("llama-mtmd-cli"),
                str(model),
                mmproj,
                write_private(tmp / f"image.{extension}", image.data),
                write_private(tmp / "prompt.txt", _text_bytes(message.text)),
                _sized(task.model, task.params),
                task.max_tokens,
                task.model.chat_template,
                task.request.grammar,
            )
            stdout, _ = await self._run(argv, task.model.name)
        # llama-mtmd-cli writes a newline before its answer and prints no token counts (the
        # image's tokens cannot be counted apart from it): the answer has no `usage`.
        return Answer(text=stdout.decode(errors="replace").strip())

    async def embed(self, model: ModelDef, texts: Sequence[str], params: LlmParams) -> Embedded:
        # A separator no input contains: inputs may hold newlines (the default separator).
        separator = f"<|ai-server-{secrets.token_hex(8)}|>"
        data = _text_bytes(separator.join(texts))
        path = str(model.file())
        with private_dir() as tmp:
            input_file = write_private(tmp / "input.txt", data)
            argv = embedding_argv(
                self._binary("llama-embedding"), path, input_file, separator, _sized(model, params)
            )
            stdout, tail = await self._run(argv, model.name)
        # --verbose-prompt lists the tokens on stdout first; the JSON starts on a line "{".
        start = 0 if stdout.startswith(b"{") else stdout.find(b"\n{\n") + 1
        try:
            rows = msgspec.json.decode(stdout[start:], type=_Embeddings).data
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"llama-embedding printed no JSON: {exc}") from None
        if len(rows) != len(texts):
            raise UpstreamError(f"llama-embedding returned {len(rows)} vectors for {len(texts)}")
        counts = [int(n) for n in _EMBED_TOKENS.findall(tail.text())]
        return Embedded(
            vectors=[row["embedding"] for row in rows],
            prompt_tokens=sum(counts) if len(counts) == len(texts) else None,
        )

    async def _run(self, argv: list[str], model: str | None = None) -> tuple[bytes, LogTail]:
        """Run `argv` to completion; its stdout, and its stderr's tail for errors (copied to
        `model`'s log, if given)."""
        name = Path(argv[0]).name
        stdout = bytearray()
        tail = self._tail(model, name) if model is not None else LogTail(max_lines=200)
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


# What llama.cpp prints for a JSON schema it cannot turn into a grammar.
_SCHEMA_ERROR = re.compile(r"JSON schema error.*")
_PROMPT_ECHO = re.compile(r"\bprompt \d+: '")
# The start of a line of llama.cpp's own log: its time and level ("0.02.861.566 I ").
_LOG_LINE = re.compile(r"\d+\.\d+\.\d+\.\d+ [A-Z] ")


def _in_echo(line: str, echo: bool) -> bool:
    """Whether `line` is part of llama-embedding's echo of its input (which may take several
    lines, up to llama.cpp's next log line), given whether the line before it was."""
    if _PROMPT_ECHO.search(line):
        return True
    return echo and not _LOG_LINE.match(line)


def exit_error(name: str, code: int, tail: LogTail) -> AiServerError:
    """A failed llama.cpp run as our error. Input longer than the context, or a JSON schema
    llama.cpp cannot use, is the request's fault: 400, as llama-server answers it. Anything
    else is a 502 that says only which binary failed and how: its error lines (its last
    lines if it logged none as errors) go to the gateway's log, never to the client (they
    name the host's files and settings)."""
    # Never the input's own text (llama-embedding's --verbose-prompt echoes it): errors
    # are logged, and prompts never are.
    lines, echo = [], False
    for line in tail.lines():
        if not (echo := _in_echo(line, echo)):
            lines.append(line)
    for line in lines:
        if match := _SCHEMA_ERROR.search(line):
            return BadRequest(
                f"response_format: llama.cpp cannot use this schema: {match[0]}",
                param="response_format.json_schema.schema",
            )
        if match := _TOO_LONG.search(line):
            tokens, limit = (int(group) for group in match.groups() if group)
            return ContextExceeded(tokens, limit)
    errors = [line for line in lines if " E " in line] or lines
    log.warning("backend.cli_failed %s exited with status %d: %s", name, code, errors[-5:])
    return UpstreamError(f"{name} exited with status {code}")


def _sized(model: ModelDef, params: LlmParams) -> LlmParams:
    """The parameters with the model's own startup overrides, as server mode starts it."""
    overrides = {
        name: value
        for name in ("ctx_size", "batch_size", "ubatch_size")
        if (value := getattr(model, name)) is not None
    }
    return msgspec.structs.replace(params, **overrides) if overrides else params


def _text(pieces: list[bytes], count: int) -> str:
    """The text of the first `count` tokens, or of the last `-count`."""
    kept = pieces[:count] if count >= 0 else pieces[max(0, len(pieces) + count) :]
    return b"".join(kept).decode(errors="replace")


def _text_bytes(text: str) -> bytes:
    if "\0" in text:
        raise BadRequest("text with NUL characters cannot be passed to llama.cpp in cli mode")
    return text.encode()
