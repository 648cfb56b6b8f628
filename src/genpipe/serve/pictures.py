"""Images a person can open: seeds from a query string, PNGs out, a PNG or JPEG in."""

from __future__ import annotations

import io
import math
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from genpipe.images import image_grid

SEED_MAX = 2**63 - 1  # the served model's seeds are int64
UPLOAD_MAX_BYTES = 16 * 2**20  # an image posted to /reconstruct
FORMATS = ("PNG", "JPEG")
_RANGE = re.compile(r"(\d+)-(\d+)")


class BadRequest(ValueError):
    """A request the server answers with HTTP 400 and this one line."""


def seeds(seed: str | None, many: str | None, most: int) -> list[int]:
    """`?seed=3` -> [3]; `?seeds=0-15` (inclusive) or `?seeds=0,4,9` -> those seeds, at
    most `most` of them."""
    if (seed is None) == (many is None):
        raise BadRequest("expected ?seed=N (one image) or ?seeds=A-B or ?seeds=A,B,C (a grid)")
    text = (seed if many is None else many).strip()
    if many is not None and (found := _RANGE.fullmatch(text)):
        low, high = int(found[1]), int(found[2])
        if high < low:
            raise BadRequest(f"seeds: expected A-B with A <= B; got {text!r}")
        if high - low + 1 > most:
            raise BadRequest(f"seeds: expected at most {most} images; got {high - low + 1}")
        chosen = list(range(low, high + 1))
    else:
        parts = text.split(",") if many is not None else [text]
        if not all(part.strip().isdigit() for part in parts):
            raise BadRequest(f"{'seeds' if many is not None else 'seed'}: expected whole "
                             f"numbers 0..{SEED_MAX}; got {text[:80]!r}")  # fmt: skip
        chosen = [int(part) for part in parts]
    if len(chosen) > most:
        raise BadRequest(f"seeds: expected at most {most} images; got {len(chosen)}")
    if max(chosen) > SEED_MAX:
        raise BadRequest(f"seed: expected at most {SEED_MAX}; got {max(chosen)}")
    return chosen


def png(images: np.ndarray) -> bytes:
    """(N, C, S, S) uint8 -> PNG bytes: one image at its own size, or a near-square grid."""
    if len(images) == 1:
        image = images[0].transpose(1, 2, 0)
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    else:
        picture = image_grid(images, rows=max(1, math.isqrt(len(images))))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def upload(body: bytes, channels: int, size: int) -> np.ndarray:
    """A PNG or JPEG of `size` x `size` pixels -> uint8 (1, channels, size, size): grey or
    colour converted to the model's channels."""
    if not body:
        raise BadRequest("expected a PNG or JPEG image as the request's body; got an empty body")
    try:
        picture = Image.open(io.BytesIO(body))  # reads the header only
    except Image.DecompressionBombError:
        raise BadRequest(f"expected an image of {size}x{size} pixels (the model's size); got "
                         f"one of more than {Image.MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError):
        raise BadRequest(f"expected a PNG or JPEG image; got {len(body)} bytes of something "
                         "else") from None  # fmt: skip
    if picture.format not in FORMATS:
        raise BadRequest(f"expected a PNG or JPEG image; got {picture.format}")
    if picture.size != (size, size):
        width, height = picture.size
        raise BadRequest(f"expected an image of {size}x{size} pixels (the model's size); "
                         f"got {width}x{height}")  # fmt: skip
    try:
        pixels = np.asarray(picture.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise BadRequest(f"expected a whole {picture.format} image; it does not decode "
                         f"({exc})") from None  # fmt: skip
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return np.array(pixels[None], dtype=np.uint8)  # its own, writable: torch reads it
