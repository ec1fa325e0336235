"""Vision with the real llama.cpp, the default model and the synthetic projector."""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.conftest import real_settings, serving
from tests.helpers import private_dirs, upload

pytestmark = [pytest.mark.llama, pytest.mark.usefixtures("private_tmp")]


FORMATS = ["PNG", "JPEG", "WEBP", "GIF"]


def random_image(rng: random.Random, image_format: str) -> bytes:
    size = (rng.randint(8, 900), rng.randint(8, 900))
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, image_format)
    return out.getvalue()


@pytest.mark.parametrize(("backend", "images"), [("server", 10), ("cli", 3)])
async def test_tags_are_always_valid_and_describe_answers(
    tmp_path: Path, backend: str, images: int
) -> None:
    rng = random.Random(20261124)
    before = private_dirs()
    async with serving(real_settings(tmp_path, backend=backend)) as client:
        for i in range(images):
            data = random_image(rng, FORMATS[i % len(FORMATS)])
            if i % 2:
                status, body = await upload(client, "/api/tag", data, max_tags="4")
            else:
                encoded = base64.b64encode(data).decode()
                status, body = await client.post("/api/tag", {"image": encoded, "max_tags": 4})
            assert status == 200, body
            tags = body["tags"]
            assert isinstance(tags, list) and 1 <= len(tags) <= 4
            assert all(t == t.strip().lower() and 0 < len(t) <= 24 for t in tags)
            assert len(set(tags)) == len(tags) and body["backend"] == backend
        status, body = await upload(
            client, "/api/describe", random_image(rng, "JPEG"), max_tokens="8"
        )
        assert status == 200 and isinstance(body["description"], str), body
    assert private_dirs() == before
