"""Vision preprocessing: backends.vision.prepare_image against its floor, decoding the image
alone (a JPEG at the draft scale prepare_image decodes it at), and against a naive full
decode + resize; on a 12-megapixel JPEG and a large PNG, alternating, in one run.

Quality: prepare_image's output against the one before the draft slack (Pillow's own draft
scale for a max_side box, then bilinear to max_side, the same encode), that one scaled with
bicubic to ours's size, as the mean absolute difference per channel (0-255) and the PSNR."""

from __future__ import annotations

import io
import math
import statistics
import sys
import time
from collections.abc import Callable

from PIL import Image, ImageChops, ImageStat

from backends.vision import draft_scale, prepare_image
from bench.common import Machine, write_section

ROUNDS = 15
MAX_SIDE = 1024
TARGET = 1.2  # the JPEG's preparation, of its decode alone (issue 16)


def photo(size: tuple[int, int], fmt: str) -> bytes:
    # A gradient with noise: compresses like a photo, not like a flat colour.
    image = Image.radial_gradient("L").resize(size).convert("RGB")
    noise = Image.effect_noise(size, 40).convert("RGB")
    out = io.BytesIO()
    Image.blend(image, noise, 0.3).save(out, fmt, quality=90)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    """The floor: the decode alone, at the draft scale prepare_image asks for."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG" and (scale := draft_scale(image.size, MAX_SIDE)) > 1:
        image.draft("RGB", (image.size[0] // scale, image.size[1] // scale))
    image.load()
    return image


def naive(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def ours(data: bytes) -> bytes:
    return prepare_image(data, max_side=MAX_SIDE, max_pixels=100_000_000).data


def before(data: bytes) -> Image.Image:
    """prepare_image's output before the draft slack (commit 1b0c871)."""
    opened = Image.open(io.BytesIO(data))
    if opened.format == "JPEG":
        opened.draft("RGB", (MAX_SIDE, MAX_SIDE))
    image = opened.convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    if opened.format == "JPEG":
        image.save(out, "JPEG", quality=95, subsampling=0)
    else:
        image.save(out, "PNG", compress_level=1)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def quality(data: bytes) -> tuple[str, str]:
    """Ours's size; mean absolute difference and PSNR of ours against the output before,
    scaled (bicubic) to the same size."""
    mine = Image.open(io.BytesIO(ours(data))).convert("RGB")
    then = before(data)
    if then.size != mine.size:
        then = then.resize(mine.size, Image.Resampling.BICUBIC)
    stat = ImageStat.Stat(ImageChops.difference(mine, then))
    mse = sum(stat.sum2) / (3 * mine.size[0] * mine.size[1])
    if not mse:
        return f"{mine.size[0]}x{mine.size[1]}", "0 / identical"
    psnr = 10 * math.log10(255**2 / mse)
    return f"{mine.size[0]}x{mine.size[1]}", f"{sum(stat.mean) / 3:.2f} / {psnr:.1f} dB"


def time_it(fn: Callable[[bytes], object], data: bytes) -> float:
    started = time.perf_counter()
    fn(data)
    return time.perf_counter() - started


def main() -> int:
    machine = Machine()
    inputs = {"12 MP JPEG (4000x3000)": photo((4000, 3000), "JPEG"),
              "PNG 3000x2000": photo((3000, 2000), "PNG")}  # fmt: skip
    cases: dict[str, Callable[[bytes], object]] = {"decode": decode, "ours": ours, "naive": naive}
    lines = [
        f"**Vision preprocessing** to a {MAX_SIDE} px longest side ({ROUNDS} rounds, the order "
        "rotating; ms, median; the decode alone at the draft scale is the floor)",
        "",
        "| input | decoded at | decode alone | prepare_image | / decode | naive decode + resize "
        "| / naive | output | vs the output before: mean abs diff / PSNR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios: dict[str, float] = {}
    for name, data in inputs.items():
        times: dict[str, list[float]] = {label: [] for label in cases}
        for i in range(ROUNDS):
            order = list(cases)[i % 3 :] + list(cases)[: i % 3]
            for label in order:
                times[label].append(time_it(cases[label], data))
        d, a, b = (statistics.median(times[k]) for k in ("decode", "ours", "naive"))
        ratios[name] = a / d
        drafted = decode(data).size
        size, diff = quality(data)
        lines.append(
            f"| {name} | {drafted[0]}x{drafted[1]} | {d * 1000:.1f} | {a * 1000:.1f} | "
            f"**{a / d:.2f}x** | {b * 1000:.1f} | {a / b:.2f}x | {size} | {diff} |"
        )
    jpeg = ratios["12 MP JPEG (4000x3000)"]
    lines += [
        "",
        f"Target: the 12 MP JPEG's preparation <= {TARGET}x its decode alone: "
        f"{'met' if jpeg <= TARGET else f'**not met** ({jpeg:.2f}x)'} ({jpeg:.2f}x). "
        "`max_side` is a cap: a JPEG's draft scale landing within 5% below it (4000x3000 at "
        "1/4 is 1000x750) is used without resampling, so beyond that decode there is only the "
        "JPEG encode (quality 95, 4:4:4). The output before decoded at 1/2 (2000x1500) and "
        "scaled to 1024x768 with bilinear; the last column compares the two at one size.",
        "",
        machine.line(),
    ]
    write_section("images", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
