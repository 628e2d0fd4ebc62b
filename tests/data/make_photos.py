"""Make tests/data/clothing10/: the small set of real photos the tests use, from the full set.

    .venv/bin/python tests/data/make_photos.py [SOURCE]

SOURCE (default ../shared/data/clothing10, beside the checkout) holds the first 120 photos of
each class folder of clothing-dataset-small (CC0). The tests need real photos from a fresh
clone (issue #32, finding 19), and the repository must stay small: so the first PER_CLASS
photos of each class in sorted order (more of the three classes the trainer tests learn),
downscaled to 320 px on the long side and re-encoded as JPEG at quality 85. The choice and the
encoding are deterministic: running it again writes the same bytes.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
TARGET = HERE / "clothing10"
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "clothing10"
PER_CLASS = 20
# the trainer tests split these three into train, calibration and test pictures of their own
# (14 + 12 + 12) and add a few unseen ones: forty each
TRAINER_CLASSES = {"hat": 40, "pants": 40, "shoes": 40}
LONG_SIDE = 320
QUALITY = 85


def small_jpeg(path: Path) -> bytes:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=QUALITY, optimize=True)
        return buffer.getvalue()


def main(source: Path) -> None:
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    if len(classes) != 10:
        raise SystemExit(f"{source}: expected 10 class folders, found {len(classes)}")
    for name in classes:
        target = TARGET / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        count = TRAINER_CLASSES.get(name, PER_CLASS)
        for photo in sorted((source / name).glob("*.jpg"))[:count]:
            (target / photo.name).write_bytes(small_jpeg(photo))
    total = sum(p.stat().st_size for p in TARGET.rglob("*.jpg"))
    print(f"{TARGET}: {len(list(TARGET.rglob('*.jpg')))} photos, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
