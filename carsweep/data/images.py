"""Opening one image file as RGB, the same way for the audit and for whoever loads pixels.

PIL's bare `.convert("RGB")` is right for grayscale ("L"), CMYK (PIL's JPEG decoder already
undoes Adobe's inverted CMYK) and palette images without transparency, but it simply drops an
alpha channel: the colour stored under fully transparent pixels (often black) shows through.
`to_rgb` composites such images on white, which is what a viewer shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from carsweep.errors import UserError

# What a broken image file raises in PIL: not an image (UnidentifiedImageError is an OSError),
# truncated data (OSError), a malformed header (SyntaxError, ValueError), a decompression bomb.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
BACKGROUND = (255, 255, 255)


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as mode RGB; transparent parts composited on white."""
    if has_alpha(image):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(flat, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # 16-bit grayscale: PIL would clip it, scale it instead
        pixels = np.asarray(image).astype(np.float64)
        if pixels.max(initial=0) > 255:
            pixels = pixels / 257
        return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode the file at `path` fully and return it as RGB (raises one of DECODE_ERRORS)."""
    with Image.open(path) as opened:
        opened.load()
        return to_rgb(opened)


def open_dataset_image(path: str | Path) -> Image.Image:
    """`open_rgb` for an image a prepared dataset lists: one that is gone or no longer decodes
    (changed since `carsweep prepare` read it) is a UserError naming the file, which the
    cache build's message matches."""
    try:
        return open_rgb(path)
    except FileNotFoundError:
        raise UserError(f"{path}: the image is missing (moved or deleted since `carsweep "
                        "prepare`?); put it back or prepare the dataset again") from None
    except DECODE_ERRORS as error:
        raise UserError(f"{path}: cannot decode the image ({error}); it changed since "
                        "`carsweep prepare` read it: restore it or prepare the dataset "
                        "again") from None
