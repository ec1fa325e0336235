"""/api/tag and /api/describe: one image (multipart field `image`, or JSON base64 / data URL)
through the current mode's vision path."""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends.vision import decode_base64_image
from core.chat import ChatRequest, ImagePart, Message, TextPart
from core.errors import BadRequest, PayloadTooLarge, UpstreamError
from gateway.bodies import decode_json, json_response
from gateway.routes.job import Job
from gateway.schemas import MaxTokens, ModelName, SamplingOverrides

TAG_PROMPT = "List short tags for this image."
DESCRIBE_PROMPT = "Describe this image."
TAG_CHARS = 24


class VisionOptions(SamplingOverrides, kw_only=True):
    """The fields of a multipart upload besides its file part `image`."""

    prompt: str | UnsetType = UNSET
    model: ModelName | None = None
    max_tags: Annotated[int, Meta(ge=1, le=50)] = 10
    max_tokens: MaxTokens | UnsetType = UNSET


class VisionRequest(VisionOptions, kw_only=True):
    """The JSON body: the options and the image, base64 or a data:image/...;base64 URL."""

    image: Annotated[str, Meta(min_length=1)]


def tags_grammar(max_tags: int) -> str:
    """Compact GBNF for {"tags":[...]}: no free whitespace for a weak model to fill the
    token budget with, at most `max_tags` short lowercase tags."""
    return (
        f'root ::= "{{\\"tags\\":[" tag ("," tag){{0,{max_tags - 1}}} "]}}"\n'
        f'tag ::= "\\"" [a-z0-9] [a-z0-9 -]{{0,{TAG_CHARS - 1}}} "\\""\n'
    )


def normalize_tags(text: str, max_tags: int) -> list[str]:
    try:
        raw = json.loads(text)["tags"]
    except (ValueError, KeyError, TypeError):
        raise UpstreamError(f"the model's tags are not the expected JSON: {text[:200]!r}") from None
    tags: list[str] = []
    for tag in raw:
        cleaned = " ".join(str(tag).lower().split())
        if cleaned and cleaned not in tags:
            tags.append(cleaned)
    return tags[:max_tags]


async def read_request(request: Request, job: Job) -> tuple[VisionOptions, bytes]:
    limit = job.svc.settings.vision.max_image_bytes
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        body = await decode_json(request, VisionRequest, limit * 4 // 3 + 65536)
        return body, decode_base64_image(body.image)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 65536:
        raise PayloadTooLarge(f"the upload is over {limit} bytes")
    async with request.form(max_files=1, max_fields=16, max_part_size=limit) as form:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest("send the image as the multipart file field `image`")
        data = await upload.read(limit + 1)
        fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        return msgspec.convert(fields, VisionOptions, strict=False), data
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None


async def tag(request: Request) -> Response:
    job = Job(request)
    body, image = await read_request(request, job)
    job.use(body.model, "vision")
    prompt = body.prompt if body.prompt is not UNSET else TAG_PROMPT
    budget = body.max_tokens or body.max_tags * (TAG_CHARS + 4) + 16
    answer = await job.vision(_asking(image, prompt, body, budget, tags_grammar(body.max_tags)))
    tags = normalize_tags(answer.text, body.max_tags)
    return json_response({"tags": tags, **_about(job)})


async def describe(request: Request) -> Response:
    job = Job(request)
    body, image = await read_request(request, job)
    job.use(body.model, "vision")
    prompt = body.prompt if body.prompt is not UNSET else DESCRIBE_PROMPT
    budget = body.max_tokens or job.svc.settings.limits.default_max_tokens
    answer = await job.vision(_asking(image, prompt, body, budget))
    return json_response({"description": answer.text.strip(), **_about(job)})


def _asking(
    image: bytes, prompt: str, body: VisionOptions, max_tokens: int, grammar: str | None = None
) -> ChatRequest:
    """One user turn: the image, then the prompt."""
    content = (ImagePart(data=image), TextPart(text=prompt))
    return ChatRequest(
        messages=(Message(role="user", content=content),),
        model=body.model,
        sampling=body.sampling(),
        max_tokens=max_tokens,
        grammar=grammar,
    )


def _about(job: Job) -> dict[str, str]:
    return {"backend": job.backend.name, "model": job.model.name}


routes = [
    Route("/api/tag", tag, methods=["POST"]),
    Route("/api/describe", describe, methods=["POST"]),
]
