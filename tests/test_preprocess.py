"""Preprocessing: decoding real bytes into what the model takes, and the reasons it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import encode
from PIL import Image
from sortbox.daemon.intake.files import Arrival, Identity
from sortbox.daemon.sorting.preprocess import BadImage, Preprocessing, decode_rgb, prepare
from sortbox.daemon.sorting.read import read_and_prepare

SPEC = Preprocessing(resize=64, crop=56)


# -- preprocessing -----------------------------------------------------------------------------


def _red_rgba() -> Image.Image:
    image = Image.new("RGBA", (80, 60), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 40, 60))  # left half fully transparent
    return image


@pytest.mark.parametrize(
    ("name", "image", "fmt"),
    [
        ("RGBA", _red_rgba(), "PNG"),
        ("LA", _red_rgba().convert("LA"), "PNG"),
        ("P+transparency", _red_rgba().convert("P"), "PNG"),
        ("CMYK", Image.new("RGB", (80, 60), (255, 0, 0)).convert("CMYK"), "JPEG"),
        ("1-bit", Image.new("1", (80, 60), 1), "PNG"),
        ("I;16", Image.fromarray(np.full((60, 80), 65535, np.uint16)), "PNG"),
        ("L", Image.new("L", (80, 60), 200), "TIFF"),
    ],
)
def test_every_mode_becomes_sensible_rgb(name: str, image: Image.Image, fmt: str) -> None:
    rgb = decode_rgb(encode(image, fmt), 64, 10**8)
    assert rgb.mode == "RGB" and rgb.size == (80, 60)
    right = rgb.getpixel((70, 30))
    if name in ("RGBA", "P+transparency", "CMYK"):
        assert right[0] > 200 and right[1] < 60, right  # still red
    if name in ("RGBA", "LA", "P+transparency"):
        assert rgb.getpixel((5, 30)) == (255, 255, 255)  # transparency flattened onto white
    if name in ("1-bit", "I;16"):
        assert right == (255, 255, 255)  # 16-bit white stays white, not clipped junk


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (120, 60), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 60, 60))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rgb = decode_rgb(encode(image, "JPEG", exif=exif), 32, 10**8)
    assert rgb.size == (60, 120)
    top = rgb.getpixel((30, 10))
    assert top[0] > 200 and top[2] < 60, top  # red ends up on top


def test_large_jpeg_is_draft_decoded_not_at_full_size() -> None:
    big = Image.new("RGB", (4000, 3000), (10, 200, 10))
    rgb = decode_rgb(encode(big, "JPEG"), 256, 10**8)
    assert rgb.size == (500, 375)  # 1/8 scale: still >= 256 on the short side
    assert prepare(encode(big, "JPEG"), Preprocessing(), 10**8).shape == (3, 224, 224)


def test_prepare_is_scaled_as_the_manifest_says() -> None:
    data = encode(Image.new("RGB", (70, 90), (255, 127, 0)), "PNG")
    array = prepare(data, SPEC, 10**8)
    assert array.shape == (3, 56, 56) and array.dtype == np.float32
    assert np.allclose(array[:, 28, 28], [(255 - 127) / 128, 0.0, -127 / 128], atol=1e-6)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (encode(Image.new("RGB", (64, 64), "red"), "PNG")[:80], "cannot decode"),
        (b"%PDF-1.4 hello", "a PDF document: sortbox sorts pictures"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10" + bytes(64), r"an icon \(\.ico\)"),
        (b"PK\x03\x04" + bytes(60), "an archive"),
        (b"\x00\x00\x00\x18ftypmp42" + bytes(60), "a video"),
        (b"hello, a shopping list\n", "a text file"),
        (bytes(range(256)) * 4, "not a picture sortbox can read"),
    ],
)
def test_bad_bytes_raise_a_readable_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=reason):
        prepare(data, SPEC, 10**8)


def test_decompression_bomb_limit() -> None:
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(BadImage, match="too many pixels"):
        prepare(data, SPEC, 1_000_000)


def test_phone_photos_and_page_scans_beyond_40_megapixels_are_decoded_within_budget() -> None:
    """Refused before: a 108-megapixel phone JPEG (Pillow's own bomb warning), a grey A3 page
    scanned at 600 dpi (70 megapixels). A colour picture that would need more than 200 MB
    decoded is still refused, with the reason."""
    phone = encode(Image.new("RGB", (12000, 9000), (30, 90, 200)), "JPEG", quality=80)
    assert prepare(phone, SPEC, 250_000_000).shape == (3, 56, 56)
    scan = encode(Image.new("L", (7016, 9921), 200), "TIFF", compression="tiff_lzw")
    grey = prepare(scan, SPEC, 250_000_000)
    assert np.allclose(grey, (200 - 127) / 128)
    poster = encode(Image.new("RGB", (9000, 9000), (1, 2, 3)), "PNG", compress_level=1)
    with pytest.raises(BadImage, match="too large to decode: 9000x9000 PNG needs 243 MB"):
        prepare(poster, SPEC, 250_000_000)


def test_a_progressive_jpeg_built_of_endless_scans_is_refused_before_decoding() -> None:
    """Every scan of a progressive JPEG is decoded, draft mode or not: a file of a million tiny
    scans takes hours (here 300 repeats of a real scan stand in for them)."""
    progressive = encode(picture_like_a_photo(), "JPEG", quality=90, progressive=True)
    assert prepare(progressive, SPEC, 10**8).shape == (3, 56, 56)
    first_scan = progressive.index(b"\xff\xda")
    second_scan = progressive.index(b"\xff\xda", first_scan + 2)
    end = progressive.rindex(b"\xff\xd9")
    scan = progressive[first_scan:second_scan]
    endless = progressive[:end] + scan * 300 + progressive[end:]
    with pytest.raises(BadImage, match=r"a progressive JPEG of 3\d\d scans, more than the 256"):
        prepare(endless, SPEC, 10**8)


def picture_like_a_photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))


def test_vanished_file_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    arrival = Arrival(tmp_path / "gone.jpg", tmp_path, Identity(1, 1, 1))
    decoded = read_and_prepare(arrival, SPEC, 10**8, 10**9)
    assert decoded.problem == "vanished before it could be read" and decoded.sha256 is None
