"""Image decoding and preprocessing, shared by the daemon and the trainer.

The parameters travel in each model's manifest (`Preprocessing`), so a model is always fed
exactly the way it was trained. Everything here is pure: bytes in, arrays out.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

WHITE = (255, 255, 255)


class Preprocessing(BaseModel):
    """How pixels become a model input. Stored in manifest.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: int = Field(256, ge=8, description="shorter side is resized to this")
    crop: int = Field(224, ge=8, description="then a centred square of this size is cut")
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"


class BadImage(Exception):
    """The input cannot be used as a picture; str(exc) is the human-readable reason."""


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def decode_rgb(data: bytes, min_side: int, max_pixels: int) -> Image.Image:
    """Decode, orient and convert to 8-bit RGB, never at more resolution than needed.

    `min_side` is the smallest shorter side the caller will resize to: JPEG draft mode
    lets libjpeg decode at 1/2, 1/4 or 1/8 scale while staying above it, which is what
    makes a 12-megapixel photo cheap.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise BadImage(f"too many pixels: {width}x{height} exceeds the limit of {max_pixels}")
        if width < 1 or height < 1:
            raise BadImage(f"degenerate size {width}x{height}")
        if image.format == "JPEG":
            image.draft("RGB", _draft_size(image.size, min_side, _exif_orientation(image)))
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image, or a format Pillow cannot read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError / SyntaxError.
        raise BadImage(f"cannot decode: {exc}") from None


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make the picture unreadable
        return 1


def _draft_size(size: tuple[int, int], min_side: int, orientation: int) -> tuple[int, int]:
    # Draft keeps both sides >= the request; ask for the aspect of the original so the
    # shorter side (after rotation) stays >= min_side.
    width, height = size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    scale = min_side / min(width, height)
    request = (max(1, round(width * scale)), max(1, round(height * scale)))
    if orientation in (5, 6, 7, 8):
        request = (request[1], request[0])
    return request


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (*WHITE, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    # 1, L, P, CMYK, YCbCr, LAB, HSV: Pillow's own conversions are right for these.
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's convert() clips 16-bit values to 255 (a nearly white picture); scale instead.
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        low, high = float(values.min()), float(values.max())
    span = high - low or 1.0
    grey = np.clip((values - low) * (255.0 / span), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    width, height = image.size
    scale = spec.resize / min(width, height)
    new_size = (max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale)))
    resized = image.resize(new_size, _RESAMPLE[spec.interpolation])
    left = (new_size[0] - spec.crop) // 2
    top = (new_size[1] - spec.crop) // 2
    return resized.crop((left, top, left + spec.crop, top + spec.crop))


def normalise(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """RGB image -> float32 CHW array, scaled as the model expects."""
    pixels = np.asarray(image, dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def prepare(data: bytes, spec: Preprocessing, max_pixels: int) -> np.ndarray:
    """Bytes of an image file -> the model input for it (3 x crop x crop)."""
    image = decode_rgb(data, spec.resize, max_pixels)
    return normalise(resize_and_crop(image, spec), spec)
