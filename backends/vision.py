"""Image hygiene with Pillow, before anything reaches llama.cpp.

The declared size is checked before decoding (a 100000x100000 PNG header is refused without
allocating it), JPEGs are decoded in draft mode at about the target size, EXIF orientation
is applied, animations give their first frame, every mode becomes RGB, and the longest side
is scaled down to `max_side` (a JPEG's to between 0.95 x `max_side` and `max_side`: see
`draft_scale`). A JPEG comes out as a JPEG at quality 95 without chroma
subsampling (it was lossy already; 2 ms where a PNG of a 12 MP photo takes 37, bench/images.py),
anything else as a lossless PNG. llama.cpp (stb_image) reads both. CPU-bound: call it in a
worker thread."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import Literal, NamedTuple

from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import BadRequest, PayloadTooLarge, UnsupportedMedia

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
SLACK = 0.95  # a JPEG's draft is kept, unresampled, down to this fraction of max_side
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.S)


class PreparedImage(NamedTuple):
    data: bytes
    format: Literal["jpeg", "png"]

    @property
    def media_type(self) -> str:
        return f"image/{self.format}"


def decode_base64_image(text: str) -> bytes:
    """Raw bytes from base64 or a `data:image/...;base64,` URL."""
    if match := _DATA_URL.fullmatch(text.strip()):
        text = match.group(1)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("`image` is neither base64 nor a data:image/...;base64 URL") from None


def draft_scale(size: tuple[int, int], max_side: int) -> int:
    """The JPEG draft scale (1, 2, 4 or 8: libjpeg decodes at 1/scale) to decode at: the
    smallest image whose longest side is at least SLACK x `max_side`. `max_side` is a cap, so
    a draft that lands a little below it (4000x3000 at 1/4 is 1000x750, for 1024) is used as
    it is: no resize at all, where the next scale up would decode 4x the pixels and resample."""
    longest = max(size)
    for scale in (8, 4, 2):
        if -(-longest // scale) >= SLACK * max_side:
            return scale
    return 1


def prepare_image(data: bytes, *, max_side: int, max_pixels: int) -> PreparedImage:
    if not data:
        raise BadRequest("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge("the image has too many pixels") from None
    except UnidentifiedImageError:
        raise UnsupportedMedia(
            f"not an image in a format read here ({', '.join(FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"the image could not be decoded: {exc}") from None
    width, height = opened.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"{width}x{height} pixels is over the limit of {max_pixels}")
    if opened.format == "JPEG" and (scale := draft_scale(opened.size, max_side)) > 1:
        # Decoded at a fraction of the size: Pillow takes the largest scale fitting the box.
        opened.draft("RGB", (width // scale, height // scale))
    try:
        opened.load()  # the first frame of an animation
        ImageOps.exif_transpose(opened, in_place=True)  # without it, a copy even if upright
        image: Image.Image = opened
        image = image.convert("RGBA").convert("RGB") if image.mode in ("P", "PA") else image
        image = image.convert("RGB") if image.mode != "RGB" else image
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"the image could not be decoded: {exc}") from None
    # Bilinear, not thumbnail's bicubic: half the time (a JPEG drafted to 1.9x max_side at
    # most is too little down for reduce()) for 44 dB PSNR against bicubic (bench/images.py).
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    if opened.format == "JPEG":
        image.save(out, "JPEG", quality=95, subsampling=0)
        return PreparedImage(out.getvalue(), "jpeg")
    # Lossless but barely compressed: it only travels over loopback or to a temp file, and
    # zlib's default level costs more than the decode (bench/images.py).
    image.save(out, "PNG", compress_level=1)
    return PreparedImage(out.getvalue(), "png")
