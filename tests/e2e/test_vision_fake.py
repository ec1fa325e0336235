"""/api/tag and /api/describe against fake llama binaries: what reaches llama, hostile input."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from PIL import Image

from backends.vision import prepare_image
from core.config import Limits
from core.errors import PayloadTooLarge
from tests.conftest import wait_until
from tests.e2e.conftest import fake_settings, recorded, serving
from tests.helpers import alive, png_header_bomb, private_dirs, upload
from tests.supervisor.conftest import behave

pytestmark = pytest.mark.usefixtures("private_tmp")  # private_dirs() counts this test's


def jpeg(size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 50).convert("RGB").save(out, fmt)
    return out.getvalue()


async def test_cli_mode_tag_and_describe_multipart_and_base64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "cli.jsonl"
    behave(monkeypatch, record=str(log))
    before = private_dirs()
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        status, tags = await upload(client, "/api/tag", jpeg(), max_tags="5", temp="0.1")
        assert status == 200, tags
        assert tags == {"tags": ["red", "blue sky"], "backend": "cli", "model": "stub"}
        data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg()).decode()
        status, described = await client.post("/api/describe", {"image": data_url, "prompt": "Hm?"})
        assert status == 200 and described["description"] == "a picture"
        status, tags = await client.post("/api/tag", {"image": base64.b64encode(jpeg()).decode(),
                                                      "max_tags": 1})  # fmt: skip
        assert status == 200 and tags["tags"] == ["red"]
    runs = recorded(log)
    argvs = [r for r in runs if "argv" in r]
    images = [r for r in runs if "image_mode" in r]
    assert [i["image_mode"] for i in images] == ["0o600"] * 3
    first = argvs[0]["argv"]
    assert first[first.index("--temp") + 1] == "0.1" and "--grammar" in first
    assert argvs[0]["file"] == "List short tags for this image." and argvs[1]["file"] == "Hm?"
    assert "--grammar" not in argvs[1]["argv"]
    assert private_dirs() == before  # every private temp dir is gone


async def test_server_mode_sends_the_image_uncached_with_the_grammar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "server.jsonl"
    behave(monkeypatch, record=str(log))
    async with serving(fake_settings(tmp_path)) as client:
        status, tags = await upload(client, "/api/tag", jpeg((3000, 1000)))
        assert status == 200 and tags["tags"] == ["red", "blue sky"], tags
    starts = [e["argv"] for e in recorded(log) if "argv" in e]
    [body] = [e["body"] for e in recorded(log) if e.get("path") == "/v1/chat/completions"]
    assert len(starts) == 1 and "--mmproj" in starts[0]  # one process serves every role
    image, text = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "List short tags for this image."}
    url = image["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")  # a JPEG upload stays a JPEG
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (1024, 341)  # the longest side capped
    assert body["cache_prompt"] is False and "id_slot" not in body and "slot_id" not in body
    assert body["grammar"].startswith('root ::= "{\\"tags\\":["')
    assert (body["temperature"], body["top_k"], body["mirostat"]) == (0.35, 40, 0)


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"", "image/jpeg", 400),
        (jpeg()[:100], "image/jpeg", 400),
        (jpeg((400, 300), "PNG")[:-2000], "image/png", 400),
        (png_header_bomb(100_000, 100_000), "image/png", 413),
        (os.urandom(5000), "image/png", 415),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><rect/></svg>", "image/svg+xml", 415),
        (b"\xff" * (21 * 2**20), "image/jpeg", 413),
    ],
)
async def test_hostile_images_get_4xx(
    tmp_path: Path, data: bytes, content_type: str, status: int
) -> None:
    before = private_dirs()
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        got, body = await upload(client, "/api/describe", data, content_type)
    assert got == status, body
    assert body["error"]["message"]  # type: ignore[index]
    assert private_dirs() == before


async def test_bad_vision_requests_get_400(tmp_path: Path) -> None:
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        assert (await client.post("/api/tag", {"prompt": "x"}))[0] == 400
        assert (await client.post("/api/tag", {"image": "%%%"}))[0] == 400
        status, body = await client.post("/api/tag", {"image": "aGk=", "max_tags": 0})
        assert status == 400 and "max_tags" in json.dumps(body)
        form = aiohttp.FormData()
        form.add_field("picture", b"x", filename="a.jpg")
        async with client.http.post("/api/tag", data=form) as resp:
            assert resp.status == 400


async def test_openai_image_url_parts_take_the_vision_path(tmp_path: Path) -> None:
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg()).decode()
    image = {"type": "image_url", "image_url": {"url": url}}
    text = {"type": "text", "text": "What is this?"}
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        status, body = await client.post(
            "/v1/chat/completions", {"messages": [{"role": "user", "content": [text, image]}]}
        )
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "a picture"
        status, body = await client.post(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [text, image, image]}]},
        )
    assert status == 400 and "one image" in body["error"]["message"]


def images(log: Path) -> list[dict[str, Any]]:
    """The llama-mtmd-cli runs the fake recorded: argv and pid."""
    return [run for run in recorded(log) if "--image" in run.get("argv", [])]


async def test_cli_vision_timeout_and_disconnect_leave_no_process_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "cli.jsonl"
    behave(monkeypatch, sleep=60, record=str(log))
    timing_out, default = tmp_path / "timing-out", tmp_path / "default"
    timing_out.mkdir()
    default.mkdir()
    async with serving(
        fake_settings(timing_out, backend="cli", limits=Limits(request_timeout_s=3))
    ) as client:
        status, body = await upload(client, "/api/describe", jpeg())
        assert status == 504, body
        await gone(images(log))
    # The default timeout is minutes: the disconnect alone must stop this one.
    async with serving(fake_settings(default, backend="cli")) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(upload, client, "/api/describe", jpeg())
            await wait_until(lambda: len(images(log)) == 2, within=10)
            tg.cancel_scope.cancel()  # the client goes away
        await gone(images(log)[1:])


async def gone(runs: list[dict[str, Any]]) -> None:
    """The fake's processes and their image files are gone, within a third of its sleep: they
    were stopped, they did not end by themselves."""
    for run in runs:
        await wait_until(lambda run=run: not alive(run["pid"]), within=20)  # type: ignore[misc]
        image = Path(run["argv"][run["argv"].index("--image") + 1])
        await wait_until(lambda image=image: not image.exists(), within=5)  # type: ignore[misc]


def test_a_pixel_bomb_is_refused_without_being_decoded() -> None:
    """The gateway's memory stays bounded: refusing a 100000 x 100000 PNG (30 GB decoded)
    must not grow this process by more than a few MB."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PayloadTooLarge):
        prepare_image(png_header_bomb(100_000, 100_000), max_side=1024, max_pixels=50_000_000)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50 * 1024
