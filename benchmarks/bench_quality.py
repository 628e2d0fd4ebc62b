"""What the "too poor to judge" check costs on good photos, and what it catches on bad ones.

    python benchmarks/bench_quality.py clothing-dataset-small [--shares 0.0025 0.005 0.01]

Limits from the measures of train/ (as `sortbox train` sets them from its training pictures),
then on test/: the share of the real photos sent to review by the check (its cost), and the
share caught of the same test photos made unjudgeable four ways: underexposed (pixel values
/ 10), overexposed (x 3, clipped), shaken (Gaussian blur, radius 2% of the shorter side) and
a lens cap (a flat grey picture with sensor noise). Measured exactly as the daemon measures,
on the crop the model sees.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sortbox.daemon.sorting.preprocess import Preprocessing, prepare
from sortbox.daemon.sorting.quality import (
    PictureQuality,
    QualityLimits,
    limits_from,
    measure_quality,
    quality_issue,
)

SPEC = Preprocessing()
MAX_PIXELS = 100_000_000


def measure(data: bytes) -> PictureQuality:
    return measure_quality(prepare(data, SPEC, MAX_PIXELS), SPEC)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def underexposed(image: Image.Image) -> Image.Image:
    return Image.eval(image, lambda v: v // 10)


def overexposed(image: Image.Image) -> Image.Image:
    return Image.eval(image, lambda v: min(255, v * 3))


def shaken(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(0.02 * min(image.size)))


def lens_cap(image: Image.Image) -> Image.Image:
    rng = np.random.default_rng(image.size[0])
    noise = rng.normal(60, 2, (image.size[1], image.size[0], 3))
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "RGB")


SPOILERS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "underexposed": underexposed,
    "overexposed": overexposed,
    "shaken": shaken,
    "lens cap": lens_cap,
}


def measure_all(paths: list[Path], spoil: Callable[[Image.Image], Image.Image] | None = None) -> list[PictureQuality]:
    def one(path: Path) -> PictureQuality:
        data = path.read_bytes()
        if spoil is not None:
            data = jpeg(spoil(Image.open(io.BytesIO(data)).convert("RGB")))
        return measure(data)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, paths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="clothing-dataset-small (train/, test/)")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0025, 0.005, 0.01])
    args = parser.parse_args()
    train = sorted(args.dataset.glob("train/*/*.jpg"))
    test = sorted(args.dataset.glob("test/*/*.jpg"))
    started = time.perf_counter()
    train_measures = measure_all(train)
    per_picture = (time.perf_counter() - started) / len(train) * 2  # two threads
    test_measures = measure_all(test)
    spoiled = {name: measure_all(test, spoil) for name, spoil in SPOILERS.items()}
    print(f"{len(train)} training photos, {len(test)} test photos; measuring costs "
          f"{per_picture * 1000:.1f} ms a picture (decode included, one thread)")
    header = "| tail share | good test photos sent to review | " + " | ".join(
        f"{name} caught" for name in SPOILERS
    ) + " |"
    print(header)
    print("|" + "---|" * (2 + len(SPOILERS)))
    for share in args.shares:
        limits = limits_from(train_measures, share)

        def flagged(measures: list[PictureQuality], limits: QualityLimits = limits) -> float:
            return float(np.mean([quality_issue(q, limits) is not None for q in measures]))

        cells = " | ".join(f"{flagged(m):.1%}" for m in spoiled.values())
        print(f"| {share:g} | {flagged(test_measures):.1%} | {cells} |")
        print(f"  limits: {limits.model_dump()}")


if __name__ == "__main__":
    main()
