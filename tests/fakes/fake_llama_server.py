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
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEHAVIOUR = json.loads(os.environ.get("FAKE_LLAMA", "{}"))
STARTED = time.monotonic()
HEALTH_PROBES = 0


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

    def do_GET(self) -> None:
        global HEALTH_PROBES
        if self.path != "/health":
            return self.reply(404, {"error": "not found"})
        HEALTH_PROBES += 1
        if time.monotonic() - STARTED < BEHAVIOUR.get("load_delay", 0):
            return self.reply(503, {"error": {"message": "Loading model"}})
        if HEALTH_PROBES > BEHAVIOUR.get("health_fail_after", 1 << 30):
            return self.reply(500, {"error": {"message": "broken"}})
        return self.reply(200, {"status": "ok"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if BEHAVIOUR.get("hang_completion"):
            threading.Event().wait()
        if self.path == "/completion":
            return self.reply(200, {"content": "x", "tokens_predicted": 1})
        return self.reply(404, {"error": "not found"})


def main() -> None:
    if BEHAVIOUR.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "exit_at_start" in BEHAVIOUR:
        print("error: failed to load model", file=sys.stderr, flush=True)
        sys.exit(BEHAVIOUR["exit_at_start"])
    if BEHAVIOUR.get("silent"):
        threading.Event().wait()
    print("fake llama-server: loading model", file=sys.stderr, flush=True)
    server = ThreadingHTTPServer((arg("--host", "127.0.0.1"), int(arg("--port", "8080"))), Handler)
    server.daemon_threads = True
    print(f"fake llama-server: listening on port {server.server_port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
