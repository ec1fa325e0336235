#!/usr/bin/env python3
"""A stand-in for llama-server that misbehaves on request, for fault-injection tests.

Takes llama-server's argv (only --host and --port matter) and reads its behaviour from the
JSON in $FAKE_LLAMA, e.g. {"load_delay": 1, "ignore_sigterm": true}:

  load_delay         seconds /health answers 503 "Loading model" before 200
  exit_at_start      exit with this status right away (a corrupt model's crash loop)
  silent             never listen and never log (a start that makes no progress)
  health_fail_after  /health answers 500 after this many probes
  hang_completion    /completion and /v1/* never answer while /health stays 200 (wedged)
  ignore_sigterm     ignore SIGTERM (only SIGKILL stops it)
  fail_status        answer /v1/* with this HTTP status and an error body
  bare_status        answer /v1/* with this HTTP status and an empty body, as no llama-server
                     does (something else at its address), while its probes pass
  record             append {"argv"} at start and {"path", "body"} per request to this JSONL file
  hold_mb            keep this many MiB resident (a model's memory, as the pool measures it)
  answer_delay       seconds before each /v1/* answer (a request in flight for that long)
  answer             the text of chat answers (default "fake answer"); streamed word by word
                     when the request asks for `stream`
  say                a line written to stderr at start (what its log shows)
  linger             start a process outside its group that holds its stdout and stderr for
                     up to this many seconds after it is gone, writing a dot to stderr every
                     20 ms; it records {"linger": pid} at start and {"pipe_closed": pid} when
                     a write fails because the reader closed its end (needs `record`)
  stream_fault       what a streamed answer does after its first word: "stall" (sends nothing
                     more and never ends: wedged mid-answer) or "cut" (closes the connection,
                     without the rest or [DONE])

Like llama-server, it takes `--api-key-file FILE`: then everything but /health needs
`Authorization: Bearer KEY` (401 otherwise). `GET /slots` lists 4 slots, busy ones
(requests being answered) with `is_processing: true`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEHAVIOUR = json.loads(os.environ.get("FAKE_LLAMA", "{}"))
STARTED = time.monotonic()
HEALTH_PROBES = 0
BUSY = 0  # requests being answered
LOCK = threading.Lock()


def record(entry: dict[str, object]) -> None:
    if path := BEHAVIOUR.get("record"):
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def arg(name: str, default: str) -> str:
    argv = sys.argv
    return argv[argv.index(name) + 1] if name in argv else default


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        print("request:", format % args, file=sys.stderr, flush=True)

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refused(self) -> bool:
        """llama-server's --api-key: every endpoint but /health needs the key."""
        if "--api-key-file" not in sys.argv or self.path == "/health":
            return False
        with open(arg("--api-key-file", "")) as f:
            key = f.read().strip()
        if self.headers.get("Authorization") == f"Bearer {key}":
            return False
        self.reply(401, {"error": {"code": 401, "message": "Invalid API Key"}})
        return True

    def do_GET(self) -> None:
        global HEALTH_PROBES
        if self.refused():
            return None
        if self.path == "/slots":
            return self.reply(200, [{"id": i, "is_processing": i < BUSY} for i in range(4)])
        if self.path != "/health":
            return self.reply(404, {"error": "not found"})
        HEALTH_PROBES += 1
        if time.monotonic() - STARTED < BEHAVIOUR.get("load_delay", 0):
            return self.reply(503, {"error": {"message": "Loading model"}})
        if HEALTH_PROBES > BEHAVIOUR.get("health_fail_after", 1 << 30):
            return self.reply(500, {"error": {"message": "broken"}})
        return self.reply(200, {"status": "ok"})

    def do_POST(self) -> None:
        global BUSY
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.refused():
            return None
        record({"path": self.path, "body": body})
        with LOCK:
            BUSY += 1
        try:
            return self.answer(body)
        finally:
            with LOCK:
                BUSY -= 1

    def answer(self, body: dict[str, object]) -> None:
        if BEHAVIOUR.get("hang_completion"):
            threading.Event().wait()
        time.sleep(BEHAVIOUR.get("answer_delay", 0))
        if status := BEHAVIOUR.get("bare_status"):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if status := BEHAVIOUR.get("fail_status"):
            return self.reply(status, {"error": {"code": status, "message": "fake failure"}})
        if self.path == "/completion":
            return self.reply(200, {"content": "x", "tokens_predicted": 1})
        if self.path == "/v1/chat/completions":
            text = BEHAVIOUR.get("answer", "fake answer")
            answer = '{"tags":["Red","red"," Blue  sky "]}' if "grammar" in body else text
            if body.get("stream"):
                return self.stream(answer)
            message = {"role": "assistant", "content": answer}
            usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return self.reply(200, {"choices": [choice], "usage": usage})
        if self.path == "/v1/embeddings":
            raw = body["input"]
            inputs = raw if isinstance(raw, list) else [raw]
            data = [{"index": i, "embedding": [0.5, float(i)]} for i in range(len(inputs))]
            return self.reply(200, {"data": data[::-1]})  # llama-server's order is not promised
        return self.reply(404, {"error": "not found"})

    def stream(self, answer: str) -> None:
        """SSE chunks as llama-server sends them: a word each, usage, then [DONE]."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        words = answer.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        chunks: list[dict[str, object]] = [
            {"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces
        ]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {
            "prompt_tokens": 3,
            "completion_tokens": len(pieces),
            "total_tokens": 3 + len(pieces),
        }
        chunks.append({"choices": [], "usage": usage})
        fault = BEHAVIOUR.get("stream_fault")
        for chunk in chunks[:1] if fault else chunks:
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()
        if fault == "stall":
            threading.Event().wait()
        if not fault:
            self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


def linger(seconds: float) -> None:
    """The `linger` process: write until the reader's end is closed, or give up."""
    record({"linger": os.getpid()})
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.write(2, b".")
        except BrokenPipeError:
            record({"pipe_closed": os.getpid()})
            return
        time.sleep(0.02)


def main() -> None:
    if "--linger" in sys.argv:
        linger(BEHAVIOUR["linger"])
        return
    record({"argv": sys.argv[1:]})
    if "linger" in BEHAVIOUR:
        # Inherits our stdout and stderr; a session of its own, so our group's SIGKILL
        # does not reach it.
        subprocess.Popen([sys.executable, __file__, "--linger"], start_new_session=True)
    if BEHAVIOUR.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "exit_at_start" in BEHAVIOUR:
        print("error: failed to load model", file=sys.stderr, flush=True)
        sys.exit(BEHAVIOUR["exit_at_start"])
    if BEHAVIOUR.get("silent"):
        threading.Event().wait()
    print("fake llama-server: loading model", file=sys.stderr, flush=True)
    if "say" in BEHAVIOUR:
        print(BEHAVIOUR["say"], file=sys.stderr, flush=True)
    held = b"\x01" * (BEHAVIOUR.get("hold_mb", 0) << 20)  # written, so resident
    server = ThreadingHTTPServer((arg("--host", "127.0.0.1"), int(arg("--port", "8080"))), Handler)
    server.daemon_threads = True
    print(f"fake llama-server: listening on port {server.server_port}", file=sys.stderr, flush=True)
    server.serve_forever()
    del held


if __name__ == "__main__":
    main()
