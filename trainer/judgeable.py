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

import dataclasses
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sortbox.daemon.layout import replacing
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.preprocess import BadImage, Preprocessing, prepare
from sortbox.daemon.sorting.quality import (
    PictureQuality,
    QualityLimits,
    limits_from,
    measure_quality,
    quality_issue,
)
from sortbox.trainer.data import ROLES, Example, TrainingSet


@dataclass(frozen=True)
class Unjudgeable:
    example: Example
    why: str  # "too dark to judge (brightness 9 of 255; ...)"


@dataclass(frozen=True)
class Judged:
    """The limits a model ships with, and the labelled pictures past them."""

    limits: QualityLimits | None  # None: no check (turned off, or too few pictures)
    unjudgeable: list[Unjudgeable]
    left_out: bool  # train.exclude_unjudgeable: the training ones are left out

    def describe(self, data: TrainingSet) -> str:
        if self.limits is None:
            return "pictures too poor to judge: not checked (too few training pictures, or off)"
        shas = {role: {e.sha256 for e in data.role(role)} for role in ROLES}
        count = {r: sum(u.example.sha256 in shas[r] for u in self.unjudgeable) for r in ROLES}
        what = "left out of training" if self.left_out else "kept (train.exclude_unjudgeable)"
        lines = [
            f"pictures too poor to judge: {count['train']} of {len(data.train)} training "
            f"pictures, {what}; {count['calibration']} of {len(data.calibration)} calibration "
            f"pictures; {count['test']} of {len(data.test)} test pictures would go to "
            f"review as too poor to judge; the {len(self.unjudgeable)} labelled pictures past "
            "the limits:"
        ]
        lines += [f"  {u.example.path}: {u.why}" for u in self.unjudgeable[:SHOWN]]
        if len(self.unjudgeable) > SHOWN:
            lines.append(f"  … and {len(self.unjudgeable) - SHOWN} more, listed in report.md")
        return "\n".join(lines)


SHOWN = 10  # listed on the terminal; the report lists them all


def judge_pictures(settings: Settings, data: TrainingSet, spec: Preprocessing) -> Judged:
    """Measure every labelled picture; limits from the training ones; those past them."""
    measures = measure_examples(
        data.everything,
        spec,
        settings.max_pixels,
        settings.resolved_cache_dir,
        settings.train.threads,
    )
    limits = quality_limits(data.train, measures, settings.train.unjudgeable_share)
    found = unjudgeable(data.everything, measures, limits)
    return Judged(limits, found, settings.train.exclude_unjudgeable)


def leave_out(data: TrainingSet, judged: Judged) -> TrainingSet:
    """The training set without the unjudgeable training pictures, where the user asked for
    it. Calibration and test pictures stay: the daemon meets such pictures too."""
    if not judged.left_out or not judged.unjudgeable:
        return data
    flagged = {u.example.sha256 for u in judged.unjudgeable}
    kept = [e for e in data.train if e.sha256 not in flagged]
    left = [(str(e.path), "too poor to judge") for e in data.train if e.sha256 in flagged]
    return dataclasses.replace(data, train=kept, excluded=data.excluded + left)


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
