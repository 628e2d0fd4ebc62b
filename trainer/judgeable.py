"""Which training pictures nobody could judge, and the limits the daemon applies from them.

Every labelled picture is measured as the daemon measures what it sorts (daemon/sorting/
quality.py, on the crop the model sees). The limits are quantiles of the training pictures'
own measures (`train.unjudgeable_share` beyond each), so "too dark to judge" means darker
than nearly everything the model learned from, not a number picked by hand. The data report
lists the training pictures past the limits; `train.exclude_unjudgeable` leaves them out.

Measures are cached per picture content and preprocessing, like the features: a retrain
after a few corrections measures only the new pictures.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sortbox.daemon.layout import replacing
from sortbox.daemon.sorting.preprocess import BadImage, Preprocessing, prepare
from sortbox.daemon.sorting.quality import (
    PictureQuality,
    QualityLimits,
    limits_from,
    measure_quality,
    quality_issue,
)
from sortbox.trainer.data import Example


@dataclass(frozen=True)
class Unjudgeable:
    example: Example
    why: str  # "too dark to judge (brightness 9 of 255; ...)"


def measure_examples(
    examples: list[Example], spec: Preprocessing, max_pixels: int, cache_dir: Path, threads: int
) -> dict[str, PictureQuality]:
    """sha256 -> the picture's measures, for every example that can be decoded."""
    cache_file = cache_dir / f"quality-{_spec_key(spec)}.json"
    try:
        cached = {k: PictureQuality(*v) for k, v in json.loads(cache_file.read_text()).items()}
    except (OSError, ValueError, TypeError):
        cached = {}
    missing = [e for e in examples if e.sha256 not in cached]

    def measure(example: Example) -> tuple[str, PictureQuality | None]:
        try:
            pixels = prepare(example.path.read_bytes(), spec, max_pixels, example.path.name)
        except (OSError, BadImage):
            return example.sha256, None  # the feature pass reports unreadable pictures
        return example.sha256, measure_quality(pixels, spec)

    with ThreadPoolExecutor(max(1, threads)) as pool:  # Pillow decodes without the GIL
        for sha256, quality in pool.map(measure, missing):
            if quality is not None:
                cached[sha256] = quality
    if missing:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with replacing(cache_file) as temporary:
            rows = {k: [q.sharpness, q.brightness, q.contrast] for k, q in cached.items()}
            temporary.write_text(json.dumps(rows))
    return {e.sha256: cached[e.sha256] for e in examples if e.sha256 in cached}


def quality_limits(
    train: list[Example], measures: dict[str, PictureQuality], share: float
) -> QualityLimits | None:
    """The limits from the training pictures; None when turned off (share 0) or too few
    pictures to place a quantile (fewer than one picture per tail)."""
    measured = [measures[e.sha256] for e in train if e.sha256 in measures]
    if share <= 0 or len(measured) * share < 1:
        return None
    return limits_from(measured, share)


def unjudgeable(
    examples: list[Example], measures: dict[str, PictureQuality], limits: QualityLimits | None
) -> list[Unjudgeable]:
    """The examples past the limits, each with why, worst offenders' order kept by path."""
    if limits is None:
        return []
    found = []
    for example in sorted(examples, key=lambda e: str(e.path)):
        quality = measures.get(example.sha256)
        why = quality_issue(quality, limits) if quality is not None else None
        if why is not None:
            found.append(Unjudgeable(example, why))
    return found


def _spec_key(spec: Preprocessing) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:12]
