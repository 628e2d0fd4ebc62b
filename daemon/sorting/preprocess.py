"""Image decoding and preprocessing, shared by the daemon and the trainer.

The parameters travel in each model's manifest (`Preprocessing`), so a model is always fed
exactly the way it was trained. Everything here is pure: bytes in, arrays out.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
from collections.abc import Callable
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from sortbox.daemon.intake.group import is_raw

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

# The formats pictures come in. Pillow can open more, but some of those run programs
# (EPS calls Ghostscript) or are scientific containers nobody photographs with.
PICTURE_FORMATS = (
    "JPEG", "PNG", "WEBP", "AVIF", "HEIF", "GIF", "TIFF", "BMP", "DIB", "JPEG2000",
    "PPM", "TGA", "PSD", "QOI", "PCX",
)  # fmt: skip
# Memory per picture stays bounded whatever the input: a picture this elongated cannot be
# classified from its centre anyway, and one that needs more than this many bytes in memory
# once decoded (JPEGs are decoded reduced, so: a huge PNG, TIFF or HEIC) is refused rather
# than risk the host. 200 MB takes a 64-megapixel phone photo (a 48-megapixel iPhone HEIC
# is 146 MB) and an A3 page scanned at 600 dpi in grey (70 MB).
MAX_ASPECT_RATIO = 25
MAX_DECODED_BYTES = 200_000_000
# Decodes above this size run one at a time, whatever the number of decoders: two 48-megapixel
# HEICs decoded together would need 700 MB at once (libheif holds its planes besides the RGB).
LARGE_DECODE_BYTES = 48_000_000
_ONE_LARGE_DECODE_AT_A_TIME = threading.Lock()  # memory is the process's, so is the lock
# A progressive JPEG is decoded once per scan, whatever draft mode saves: a file built of
# millions of tiny scans takes hours (libjpeg-turbo advises a limit too). Encoders write about
# ten; the limit leaves room for previews embedded in the same file.
MAX_JPEG_SCANS = 256
# Camera RAW files. They are classified from the JPEG preview every camera embeds (no
# demosaicing), read with rawpy, the optional `raw` extra.
RAW_EXTRA_MISSING = "a camera RAW file; install sortbox[raw] to sort RAW files"
# LibRaw's `flip` (how the camera was held), as the turn that makes the preview upright
_UPRIGHT = {
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.ROTATE_90,
    6: Image.Transpose.ROTATE_270,
}


# What sortbox says of a file it will not sort, by what the file is: one list, reviewed as
# one, so each reason names the choice in a person's words (issue 34). Tried in order on the
# first bytes; the first that fits is said.
_NOT_SORTED: tuple[tuple[Callable[[bytes, str], bool], str], ...] = (
    (
        lambda head, name: head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")
        or name.endswith((".ico", ".cur")),
        "an icon (.ico): sortbox sorts photos and scans, not icons",
    ),
    (
        lambda head, name: head.startswith(b"%PDF"),
        "a PDF document: sortbox sorts pictures; save its pages as pictures to sort them",
    ),
    (
        lambda head, name: head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")),
        "a PostScript or EPS file: sortbox does not run the program such a file is",
    ),
    (
        lambda head, name: b"<svg" in head[:1024] or name.endswith((".svg", ".svgz")),
        "a vector drawing (.svg): sortbox sorts photos and scans",
    ),
    (
        lambda head, name: head[4:8] == b"ftyp"
        and head[8:12] in (b"isom", b"iso2", b"mp41", b"mp42", b"qt  ", b"M4V ", b"avc1", b"3gp4"),
        "a video: sortbox sorts pictures",
    ),
    (
        lambda head, name: head.startswith((b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!")),
        "an archive (zip, gz, 7z or rar): unpack it into the inbox to sort what it holds",
    ),
    (
        lambda head, name: head[128:132] == b"DICM",
        "a medical (DICOM) image: sortbox sorts photos and scans",
    ),
    (
        lambda head, name: _is_text(head),
        "a text file, not a picture",
    ),
)
NOT_A_PICTURE = "not a picture sortbox can read (a damaged file, or a format it does not know)"


# How decoders say a file ends before the picture does (Pillow, libjpeg, zlib, libheif)
_CUT_SHORT = ("truncated", "premature end", "broken data stream", "unexpected end")


def looks_cut_short(problem: str) -> bool:
    """The reason says the file ends early: a writer may still be at it."""
    lowered = problem.lower()
    return any(words in lowered for words in _CUT_SHORT)


def not_sorted_reason(data: bytes, name: str = "") -> str:
    """Why a file Pillow could not take as a picture is not sorted, in plain words."""
    head, lowered = data[:4096], name.lower()
    for fits, reason in _NOT_SORTED:
        if fits(head, lowered):
            return reason
    return NOT_A_PICTURE


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # only a character cut at the end of the sample
    return True


def decode_rgb(data: bytes, min_side: int, max_pixels: int, name: str = "") -> Image.Image:
    """Decode, orient and convert to 8-bit RGB, never at more resolution than needed.

    `min_side` is the smallest shorter side the caller will resize to: JPEG draft mode
    lets libjpeg decode at 1/2, 1/4 or 1/8 scale while staying above it, which is what
    makes a 12-megapixel photo cheap. `name` (the file's name) tells a camera RAW file,
    whose embedded preview is decoded instead. Multi-page and animated files give their
    first page or frame.
    """
    if not data:
        raise BadImage("empty file")
    if is_raw(name):
        preview, turn = _raw_preview(data)
        image = decode_rgb(preview, min_side, max_pixels)
        return image.transpose(turn) if turn is not None else image
    try:
        image = Image.open(io.BytesIO(data), formats=_openable())
        check_size(image.size, max_pixels)
        if image.format in ("JPEG", "MPO"):
            if image.info.get("progressive"):
                _check_scans(data)
            image.draft("RGB", _draft_size(image.size, min_side, _exif_orientation(image)))
        decoded_bytes = _decoded_bytes(image)  # at the size it will be decoded
        if decoded_bytes > MAX_DECODED_BYTES:
            width, height = image.size
            raise BadImage(
                f"too large to decode: {width}x{height} {image.format} needs "
                f"{decoded_bytes // 1_000_000} MB, the limit is {MAX_DECODED_BYTES // 1_000_000} MB"
                " (JPEGs are decoded reduced)"
            )
        large = decoded_bytes > LARGE_DECODE_BYTES
        with _ONE_LARGE_DECODE_AT_A_TIME if large else contextlib.nullcontext():
            image.load()
            image = ImageOps.exif_transpose(image, in_place=False) if _rotated(image) else image
            image = _reduced(image, min_side)  # the full-size picture is freed in the lock
        return to_rgb(image)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(not_sorted_reason(data, name)) from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"too many pixels ({exc})") from None
    except Exception as exc:
        # Corrupt files make Pillow's decoders raise almost anything (OSError, SyntaxError,
        # but also RuntimeError, TypeError, NotImplementedError ...): all mean "cannot decode".
        raise BadImage(f"cannot decode: {type(exc).__name__}: {exc}") from None


def _check_scans(data: bytes) -> None:
    # a start-of-scan marker (FF DA) never occurs inside coded data, where every FF is
    # followed by 00 or a restart marker: counting it counts the scans (metadata aside)
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise BadImage(
            f"a progressive JPEG of {scans} scans, more than the {MAX_JPEG_SCANS} sortbox "
            "decodes: no camera or editor writes that many, and decoding it could take hours"
        )


def _decoded_bytes(image: Image.Image) -> int:
    width, height = image.size
    if image.mode.startswith("I;16"):
        per_pixel = 2
    elif image.mode in ("I", "F"):
        per_pixel = 4
    else:  # Pillow keeps a byte per band, 1-bit pictures included
        per_pixel = max(1, len(image.getbands()))
    return width * height * per_pixel


@functools.cache
def _openable() -> list[str]:
    Image.init()
    # `max_pixels` (check_size) is the one limit on declared pixels, and the decoded size is
    # budgeted above: Pillow's own warning at 89 megapixels would refuse a 108-megapixel
    # phone JPEG that draft mode decodes in 5 MB
    Image.MAX_IMAGE_PIXELS = None
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # a default dependency, but the rest must not depend on it
        pass
    else:
        # HEIC/HEIF, every iPhone's format; libheif applies the rotation while decoding
        register_heif_opener()
    return [name for name in PICTURE_FORMATS if name in Image.OPEN]


def _raw_preview(data: bytes) -> tuple[bytes, Image.Transpose | None]:
    """The embedded preview of a camera RAW file as image file bytes, and the turn that makes
    it upright (None when the preview's own EXIF orientation does that)."""
    try:
        import rawpy
    except ImportError:
        raise BadImage(RAW_EXTRA_MISSING) from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            flip = raw.sizes.flip
            thumb = raw.extract_thumb()
    except Exception as exc:  # LibRaw's errors (no thumbnail, unsupported camera, corrupt)
        raise BadImage(f"a RAW file without a readable preview: {type(exc).__name__}") from None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        preview = bytes(thumb.data)
    else:  # an uncompressed preview: an RGB array
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(thumb.data, dtype=np.uint8)).save(buffer, "PNG")
        preview = buffer.getvalue()
    try:
        # what LibRaw calls a JPEG preview is whatever bytes the file holds there: only the
        # two formats a preview can be are tried, never a format that runs a program
        with Image.open(io.BytesIO(preview), formats=("JPEG", "PNG")) as probe:
            oriented = _rotated(probe)
    except Exception:
        raise BadImage("a RAW file whose preview is not a picture") from None
    return preview, None if oriented else _UPRIGHT.get(flip)


def check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise BadImage(f"degenerate size {width}x{height}")
    if width * height > max_pixels:
        raise BadImage(f"too many pixels: {width}x{height} exceeds the limit of {max_pixels}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadImage(f"extreme aspect ratio: {width}x{height} is beyond {MAX_ASPECT_RATIO}:1")


def _rotated(image: Image.Image) -> bool:
    return _exif_orientation(image) != 1


def _reduced(image: Image.Image, min_side: int) -> Image.Image:
    """Shrink by a whole factor while the shorter side stays >= 2 * min_side: the later
    conversions and the resize then work on a small picture, not a scanner's full page."""
    factor = min(image.size) // (2 * min_side)
    if factor < 2 or image.mode not in ("RGB", "RGBA", "L", "LA", "I", "F", "CMYK"):
        return image
    return image.reduce(factor)


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
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
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
    """Scale the shorter side to `spec.resize`, then cut the centred `spec.crop` square.

    Done as one resize of the source region the square comes from: a long panorama is
    never scaled whole, so memory stays that of the output.
    """
    width, height = image.size
    scale = spec.resize / min(width, height)
    side = spec.crop / scale  # the square's side, in source pixels
    left, top = (width - side) / 2, (height - side) / 2
    box = (max(0.0, left), max(0.0, top), min(width, left + side), min(height, top + side))
    return image.resize((spec.crop, spec.crop), _RESAMPLE[spec.interpolation], box=box)


def normalise(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """RGB image -> float32 CHW array, scaled as the model expects."""
    pixels = np.asarray(image, dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def prepare(data: bytes, spec: Preprocessing, max_pixels: int, name: str = "") -> np.ndarray:
    """Bytes of an image file (named `name`) -> the model input for it (3 x crop x crop)."""
    image = decode_rgb(data, spec.resize, max_pixels, name)
    return normalise(resize_and_crop(image, spec), spec)
