"""Reading request bodies and writing JSON responses, with msgspec, at the edge."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from core.errors import BadRequest, PayloadTooLarge, UnsupportedMedia

T = TypeVar("T")


# `curl -d '{...}'` labels JSON as a form; taking it saves every LAN user a -H flag.
_ACCEPTED = ("", "application/json", "application/x-www-form-urlencoded")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in _ACCEPTED or media.endswith("+json")


async def read_limited(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"request body is over the limit of {max_bytes} bytes")
        # The HTTP parser holds a body to its declared length: no counting chunk by chunk, and
        # no async generator (request.stream()) around `receive`.
        return await _read_all(request)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"request body is over the limit of {max_bytes} bytes")
    return bytes(body)


async def _read_all(request: Request) -> bytes:
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def decode_json(request: Request, type_: type[T], max_bytes: int) -> T:
    """The body as `type_`; 415 for a non-JSON content type, 413 over `max_bytes`, 400 with
    the path of the bad field otherwise."""
    if not _is_json(request.headers.get("content-type", "")):
        raise UnsupportedMedia("send the body as JSON (Content-Type: application/json)")
    body = await read_limited(request, max_bytes)
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


def json_response(body: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status, media_type="application/json")
