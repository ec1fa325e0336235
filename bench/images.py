"""Vision preprocessing: backends.vision.prepare_image vs a naive full decode + resize, on a
12-megapixel JPEG and a large PNG, alternating, in one run."""

from __future__ import annotations

import io
import statistics
import sys
import time
from collections.abc import Callable

from PIL import Image

from backends.vision import prepare_image
from bench.common import write_section

ROUNDS = 10
MAX_SIDE = 1024


def photo(size: tuple[int, int], fmt: str) -> bytes:
    # A gradient with noise: compresses like a photo, not like a flat colour.
    image = Image.radial_gradient("L").resize(size).convert("RGB")
    noise = Image.effect_noise(size, 40).convert("RGB")
    out = io.BytesIO()
    Image.blend(image, noise, 0.3).save(out, fmt, quality=90)
    return out.getvalue()


def naive(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def ours(data: bytes) -> bytes:
    return prepare_image(data, max_side=MAX_SIDE, max_pixels=100_000_000).data


def time_it(fn: Callable[[bytes], bytes], data: bytes) -> float:
    started = time.perf_counter()
    fn(data)
    return time.perf_counter() - started


def main() -> int:
    inputs = {"12 MP JPEG (4000x3000)": photo((4000, 3000), "JPEG"),
              "PNG 3000x2000": photo((3000, 2000), "PNG")}  # fmt: skip
    lines = [
        f"**Vision preprocessing** to a {MAX_SIDE} px longest side ({ROUNDS} rounds, "
        "alternating; ms, median)",
        "",
        "| input | prepare_image | naive decode + resize | ratio |",
        "|---|---|---|---|",
    ]
    for name, data in inputs.items():
        times: dict[str, list[float]] = {"ours": [], "naive": []}
        for i in range(ROUNDS):
            for label, fn in ((("ours", ours), ("naive", naive)) if i % 2 else
                              (("naive", naive), ("ours", ours))):  # fmt: skip
                times[label].append(time_it(fn, data))
        a, b = statistics.median(times["ours"]), statistics.median(times["naive"])
        lines.append(f"| {name} | {a * 1000:.1f} | {b * 1000:.1f} | {a / b:.2f}x |")
    write_section("images", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
