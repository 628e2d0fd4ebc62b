"""Turn a model's scores into a decision. Pure: no I/O, no state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sortbox.daemon.console import not_sure_words
from sortbox.daemon.layout import REVIEW_FOLDER
from sortbox.daemon.sorting.manifest import Manifest
from sortbox.daemon.sorting.quality import PictureQuality, quality_issue

SPOT_CHECK = "spot check"  # the journal's reason for a confident decision sent to review


@dataclass(frozen=True)
class Decision:
    label: str  # the model's best guess, also when the picture goes to review
    confidence: float
    top3: list[tuple[str, float]]
    threshold: float  # the label's: at or above it, the picture is auto-sorted
    # the label, or needs_review: under the label's threshold, or a spot check
    folder: str
    spot_check: bool = False  # confident, but sent to review so precision stays measured
    # how unlike every class the picture is, and the score above which that sends it to
    # review (issue #33); None for a model without the unknown check
    unknown: float | None = None
    unknown_threshold: float | None = None
    # how judgeable the picture is (quality.py), and why it is too poor to judge, if it is
    quality: PictureQuality | None = None
    too_poor: str | None = None

    @property
    def needs_review(self) -> bool:
        return self.folder == REVIEW_FOLDER

    @property
    def unlike_any_class(self) -> bool:
        return (
            self.unknown is not None
            and self.unknown_threshold is not None
            and self.unknown > self.unknown_threshold
        )

    @property
    def reason(self) -> str | None:
        """Why a picture went to review other than by its confidence, for the journal; None
        otherwise. Unlike any class comes first where both hold: a landscape in a library of
        clothes is also "too blurry" by the measure of sharp clothing photos, and that alone
        misleads."""
        whys = []
        if self.unlike_any_class:
            whys.append(
                f"unlike any class (score {self.unknown:.3g} > threshold "
                f"{self.unknown_threshold:.3g})"
            )
        if self.too_poor is not None:
            whys.append(self.too_poor)
        if whys:
            return "; ".join(whys)
        return SPOT_CHECK if self.spot_check else None

    def describe(self) -> str:
        """In words, as `sortbox explain` says it."""
        if self.unlike_any_class:
            return f"review: {self.reason}; nearest class {self.label} ({self.confidence:.2f})"
        if self.too_poor is not None:
            return f"review: {self.too_poor}; the model would say {self.label}"
        if self.spot_check:
            return f"review (spot check): would be sorted into {self.label}"
        if self.needs_review and self.threshold > 1.0:
            return f"review: too little calibration evidence to sort {self.label} automatically"
        if self.needs_review:
            return f"review: {not_sure_words(self.confidence, self.threshold, self.label)}"
        return f"sorted into {self.label} ({self.confidence:.2f} >= {self.threshold:.2f})"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def decide(
    row: np.ndarray,
    manifest: Manifest,
    sha256: str | None = None,
    audit_rate: float = 0.0,
    quality: PictureQuality | None = None,
) -> Decision:
    """One image's model outputs (`Classifier.logits`: a logit per class, then the unknown
    score where the model has the check) -> where it goes, with the calibrated temperature
    and thresholds. A picture unlike any class goes to review however confident the class
    scores are, and so does one too poor to judge (`quality` past the model's limits); a
    share `audit_rate` of the other confident decisions go as spot checks."""
    logits = row[: len(manifest.classes)]
    unknown, unknown_threshold = None, manifest.unknown_threshold
    if unknown_threshold is not None and len(row) > len(manifest.classes):
        unknown = round(float(row[len(manifest.classes)]), 6)
    probabilities = softmax(logits, manifest.temperature)
    order = np.argsort(-probabilities)
    best = int(order[0])
    label = manifest.classes[best]
    confidence = float(probabilities[best])
    top3 = [(manifest.classes[int(i)], round(float(probabilities[i]), 6)) for i in order[:3]]
    threshold = manifest.thresholds[label]
    unlike = unknown is not None and unknown > unknown_threshold  # type: ignore[operator]
    limits = manifest.quality_limits
    too_poor = quality_issue(quality, limits) if quality and limits else None
    confident = confidence >= threshold and not unlike and too_poor is None
    spot_check = confident and sha256 is not None and is_spot_check(sha256, audit_rate)
    folder = label if confident and not spot_check else REVIEW_FOLDER
    return Decision(
        label,
        confidence,
        top3,
        threshold,
        folder,
        spot_check,
        unknown,
        unknown_threshold,
        quality,
        too_poor,
    )


def is_spot_check(sha256: str, audit_rate: float) -> bool:
    """Chosen by the content's hash, uniform over pictures: the same picture gets the same
    answer from the daemon, `sortbox sort` and `sortbox explain`, and no state is kept."""
    return int(sha256[:12], 16) < audit_rate * 16**12
