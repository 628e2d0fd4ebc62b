"""The formats people's pictures come in, each built from a real photo with the libraries that
write it, each sorted by the real daemon, and each turned upright before the model sees it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CLOTHING10,
    Daemon,
    Home,
    dng,
    encode,
    make_home,
    publish_rgb_model,
    wait_until,
)
from PIL import Image
from sortbox.daemon.sorting.preprocess import RAW_EXTRA_MISSING, Preprocessing, prepare

SPEC = Preprocessing(resize=128, crop=112)
ORIENTATION = 0x0112
TURNED_RIGHT = 6  # EXIF: the stored pixels must be turned 90° clockwise to be upright


def photo(folder: str, n: int = 0) -> Image.Image:
    files = sorted((CLOTHING10 / folder).glob("*.jpg"))
    if not files:
        pytest.skip(f"real photos missing: {CLOTHING10 / folder}")
    return Image.open(files[n]).convert("RGB")


def as_stored_sideways(image: Image.Image) -> Image.Image:
    """What a camera held upright-but-turned stores: the pixels turned left."""
    return image.transpose(Image.Transpose.ROTATE_90)


def orientation_exif(value: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = value
    return exif.tobytes()


def sideways_file(kind: str, upright: Image.Image) -> tuple[str, bytes]:
    """(file name, bytes) of `upright` stored sideways with an orientation tag, as `kind`."""
    stored = as_stored_sideways(upright)
    exif = orientation_exif(TURNED_RIGHT)
    if kind == "dng":
        pytest.importorskip("rawpy", reason="RAW support is the optional extra sortbox[raw]")
        return "IMG_0001.DNG", dng(stored, TURNED_RIGHT)
    if kind == "heic":
        return "IMG_0001.HEIC", encode(stored, "HEIF", exif=exif, quality=90)
    pillow_format = {"jpeg": "JPEG", "avif": "AVIF", "webp": "WEBP", "tiff": "TIFF", "png": "PNG"}
    return f"photo.{kind}", encode(stored, pillow_format[kind], exif=exif)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


FORMATS = ["jpeg", "heic", "avif", "webp", "tiff", "png", "dng"]


@pytest.mark.parametrize("kind", FORMATS)
def test_each_format_is_decoded_upright(kind: str) -> None:
    upright = photo("shoes")
    name, data = sideways_file(kind, upright)
    expected = {"heic": "HEIF", "dng": "TIFF"}.get(kind, kind.upper())
    assert Image.open(io.BytesIO(data)).format == expected  # really that format, not a JPEG

    seen = prepare(data, SPEC, 10**9, name)

    reference = prepare(encode(upright, "PNG"), SPEC, 10**9)
    unturned = prepare(encode(as_stored_sideways(upright), "PNG"), SPEC, 10**9)
    assert difference(seen, reference) < 0.05, "the model would see it as stored, not upright"
    assert difference(unturned, reference) > 0.2  # the check above can fail


def test_multi_page_tiff_and_animations_use_the_first_page_or_frame() -> None:
    first, second = photo("shoes"), photo("hat").resize(photo("shoes").size)
    files = {
        "scan.tiff": encode(first, "TIFF", save_all=True, append_images=[second]),
        "anim.gif": encode(first, "GIF", save_all=True, append_images=[second], duration=100),
        "anim.webp": encode(first, "WEBP", save_all=True, append_images=[second], lossless=True),
    }
    for name, data in files.items():
        with Image.open(io.BytesIO(data)) as opened:
            assert opened.n_frames == 2, name
        seen = prepare(data, SPEC, 10**9, name)
        to_first = difference(seen, prepare(encode(first, "PNG"), SPEC, 10**9))
        to_second = difference(seen, prepare(encode(second, "PNG"), SPEC, 10**9))
        assert to_first < 0.05 < to_second, name


def test_the_daemon_sorts_every_format(tmp_path: Path) -> None:
    """Each format lands in a class folder, labelled as the same photo as a plain JPEG is."""
    home = make_home(tmp_path)
    # the colour model at a low threshold: every real photo is auto-sorted, none reviewed
    publish_rgb_model(home.models, "v1", threshold=0.34)
    photos = {f"{folder}-{n}": photo(folder, n) for folder in ("shoes", "dress") for n in (0, 1)}
    (home.root / "plain").mkdir()
    kinds = [*FORMATS, "tiff-pages", "gif-frames", "webp-frames"]
    expected_label: dict[str, str] = {}
    daemon = Daemon(home).start()
    try:
        for key, image in photos.items():
            (home.inbox / f"{key}.plain.jpg").write_bytes(encode(image, "JPEG", quality=95))
        wait_until(lambda: len(home.file_events()) == len(photos), 30, "the plain JPEGs")
        for event in home.file_events():
            expected_label[event["src"].removesuffix(".plain.jpg")] = event["label"]
        for key, image in photos.items():
            for kind in kinds:
                if kind.endswith(("-pages", "-frames")):
                    fmt = {"tiff": "TIFF", "gif": "GIF", "webp": "WEBP"}[kind.split("-")[0]]
                    data = encode(image, fmt, save_all=True, append_images=[image.rotate(90)])
                    name = f"{kind}.{kind.split('-')[0]}"
                else:
                    name, data = sideways_file(kind, image)
                folder = home.inbox / key / kind
                folder.mkdir(parents=True)
                (folder / f".{name}.part").write_bytes(data)
                (folder / f".{name}.part").rename(folder / name)
        total = len(photos) * (len(kinds) + 1)
        wait_until(lambda: len(home.file_events()) >= total, 60, "every format sorted")
    finally:
        daemon.stop()
    for event in home.file_events():
        key = event["src"].split("/")[0].removesuffix(".plain.jpg")
        assert event["event"] == "sorted", event
        if "frames" not in event["src"] and "pages" not in event["src"]:
            # turned upright, so the same picture gets the same class as the plain JPEG
            assert event["label"] == expected_label[key], event
    assert len(home.file_events()) == len(photos) * (len(kinds) + 1)


def test_raw_without_the_extra_is_rejected_with_what_to_install(home: Home, tmp_path: Path) -> None:
    """A daemon installed without sortbox[raw] journals RAW files as rejected, naming the fix."""
    (home.inbox / "IMG_0002.CR2").write_bytes(b"II*\x00" + bytes(4096))  # rawpy is never asked
    without_rawpy = tmp_path / "no_rawpy"
    without_rawpy.mkdir()
    # a `rawpy` that cannot be imported, exactly as when the package is not installed
    (without_rawpy / "rawpy.py").write_text("raise ImportError('No module named rawpy')\n")
    result = subprocess.run(
        [sys.executable, "-m", "sortbox.daemon.cli", "sort", str(home.inbox)],
        env={"PYTHONPATH": str(without_rawpy), "PATH": "/usr/bin:/bin"},
        cwd=home.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (event,) = home.file_events()
    assert event["event"] == "rejected"
    assert RAW_EXTRA_MISSING in event["reason"]
    assert "sortbox[raw]" in event["reason"]
