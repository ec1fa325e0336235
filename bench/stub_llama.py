"""An instant stand-in for llama-server, for the throughput ceiling: aiohttp, answers /health,
/v1/chat/completions, /v1/embeddings and /completion (the supervisor's probe) at once with
llama-server's shapes; a chat with `"stream":true` is answered with llama-server's events (a
role delta, one per token at once, a finish, usage, [DONE]), each written as it is made.
Takes llama-server's argv; only --host and --port matter."""

from __future__ import annotations

import sys

from aiohttp import web

CHAT = {
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    "timings": {"predicted_per_second": 100.0},
}
VECTOR = [0.03125] * 640
_CHUNK = (
    b'data: {"choices":[{"finish_reason":%s,"index":0,"delta":%s}],"created":1,'
    b'"id":"chatcmpl-stub","model":"stub","object":"chat.completion.chunk"}\n\n'
)
EVENTS = [
    _CHUNK % (b"null", b'{"role":"assistant","content":null}'),
    *(_CHUNK % (b"null", b'{"content":"ok"}') for _ in range(16)),
    _CHUNK % (b'"length"', b"{}"),
    b'data: {"choices":[],"created":1,"id":"chatcmpl-stub","model":"stub",'
    b'"object":"chat.completion.chunk","usage":{"completion_tokens":16,"prompt_tokens":9,'
    b'"total_tokens":25}}\n\n',
    b"data: [DONE]\n\n",
]


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream":true' not in body and b'"stream": true' not in body:
        return web.json_response(CHAT)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in EVENTS:
        await resp.write(event)
    await resp.write_eof()
    return resp


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"index": i, "embedding": VECTOR} for i in range(len(texts))]
    return web.json_response({"data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}})


async def completion(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"content": "ok"})


def main() -> None:
    argv = sys.argv
    host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
    port = int(argv[argv.index("--port") + 1])
    app = web.Application()
    app.add_routes(
        [
            web.get("/health", health),
            web.post("/v1/chat/completions", chat),
            web.post("/v1/embeddings", embeddings),
            web.post("/completion", completion),
        ]
    )
    web.run_app(app, host=host, port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
