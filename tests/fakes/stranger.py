#!/usr/bin/env python3
"""An HTTP server that is not llama-server: every request, whatever its path, gets STATUS
with an empty body. It stands for whatever answers at a vanished host's address: the LAN's
default gateway or a proxy on it, or another machine that took the address.

    stranger.py --port PORT [--host ADDR] [--status 400]
"""

from __future__ import annotations

import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections alive, as a real server would
    status = 400

    def log_message(self, format: str, *args: object) -> None:
        print("request:", format % args, file=sys.stderr, flush=True)

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = answer


def main() -> None:
    cmd = argparse.ArgumentParser()
    cmd.add_argument("--host", default="0.0.0.0")  # noqa: S104 - inside a test's namespace
    cmd.add_argument("--port", type=int, required=True)
    cmd.add_argument("--status", type=int, default=400)
    args = cmd.parse_args()
    Handler.status = args.status
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
