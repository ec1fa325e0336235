"""OpenAI's Responses API: POST /v1/responses, stateless (`gateway.dialects.responses`).

The same dispatcher, admission and budgets as /v1/chat/completions; an image in the input
goes to the vision model, as there."""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.bodies import decode_json, json_response
from gateway.dialects.responses import ResponsesRequest
from gateway.dialects.responses_answer import Head, response_of, stream
from gateway.routes.job import Job


async def create_response(request: Request) -> Response:
    job = Job(request)
    body = await decode_json(request, ResponsesRequest, job.max_body)
    chat, namespaces = body.decode()
    if chat.has_images:
        job.use(chat.model, "vision")
        head = Head.of(body, job.model.name, namespaces)
        return json_response(response_of(await job.vision(chat), head))
    job.use(chat.model, "chat")
    head = Head.of(body, job.model.name, namespaces)
    task = job.chat_task(chat)
    if chat.stream:
        return await job.chat_stream(task, partial(stream, head=head))
    return json_response(response_of(await job.chat(task), head))


routes = [Route("/v1/responses", create_response, methods=["POST"])]
