"""Per-class confidence thresholds for a target precision, from calibration predictions. Pure.

The trainer stores its calibration predictions in the manifest (`CalibrationPoints`); the
daemon derives the thresholds from them at load time for the `target_precision` in
config.toml, so a user makes the sorter stricter or bolder without training again.

A class's threshold is the lowest one whose auto-sorted set (its predictions at or above it)
reaches the target precision, as far as the calibration pictures can show it: the set's
precision must reach the target at the lower end of its one-sided 80% Wilson interval, not
just on average. A class with too few calibration predictions to measure that shares one
threshold with the other such classes, chosen the same way on their predictions together.
No threshold is below a floor.

Why the interval: the lowest threshold whose measured precision just reaches the target is
the most optimistic of many choices, so on new pictures it falls short about half the time
(on the clothing benchmark, 4 of 8 models under 97% on their test pictures). With the lower
bound, none of the 8 fell short, for about 5 points less auto-sorted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

MIN_PREDICTIONS = 10  # the smallest auto-sorted set a threshold may be chosen on
FLOOR = 0.5
# The threshold of a class never shown precise enough: above any probability. Not 1.0: a
# softmax gives exactly 1.0 when one logit dominates (always, after a temperature fitted on a
# handful of calibration pictures), and those pictures would be auto-sorted on no evidence.
ALWAYS_REVIEW = 1.01
EVIDENCE_Z = 0.84  # one-sided 80%: the precision a threshold promises is this sure to hold


class CalibrationPoints(BaseModel):
    """One row per calibration picture: predicted class index, calibrated confidence, right?"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    predicted: list[int]
    confidence: list[float]
    correct: list[bool]

    @model_validator(mode="after")
    def _rows_line_up(self) -> CalibrationPoints:
        if not len(self.predicted) == len(self.confidence) == len(self.correct):
            raise ValueError(
                "calibration points: predicted, confidence and correct differ in length"
            )
        return self


@dataclass(frozen=True)
class Thresholds:
    per_class: dict[str, float]
    auto_share: float  # share of the calibration pictures that would be auto-sorted
    auto_precision: float  # and how many of those are right
    auto_count: int
    total: int


def lowest_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float, min_support: int
) -> float | None:
    """The lowest t whose auto-sorted set, the predictions with confidence >= t, is at least
    `target` precise (at the lower bound) and holds at least `min_support` predictions; None
    if there is none."""
    if len(confidence) < min_support:
        return None
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    # the precision each candidate set is EVIDENCE_Z-sure to have, not the one it happened to
    assured, _ = wilson_bounds(np.cumsum(correct), np.arange(1, len(correct) + 1), EVIDENCE_Z)
    # a threshold takes a whole group of equal confidences, so only a group's end is a choice
    group_ends = np.append(confidence[1:] < confidence[:-1], True)
    choices = np.flatnonzero(group_ends & (assured >= target))
    choices = choices[choices >= min_support - 1]
    if not len(choices):
        return None
    last = choices[-1]
    # halfway to the next confidence down: the same set on calibration, and a prediction at
    # the boundary does not flip on the last digit of a float (ORT and PyTorch differ there)
    below = confidence[last + 1] if last + 1 < len(confidence) else confidence[last]
    return float((confidence[last] + below) / 2)


def own_threshold_support(target: float) -> int:
    """Calibration predictions a class needs for a threshold of its own: enough to expect two
    mistakes at the target rate (67 at 0.97). With fewer, one mistake more or less swings
    the class between 100% precision and far below the target: that is noise, not evidence."""
    return max(MIN_PREDICTIONS, math.ceil(2 / max(1e-6, 1 - target)))


def derive_thresholds(points: CalibrationPoints, classes: list[str], target: float) -> Thresholds:
    predicted = np.asarray(points.predicted, dtype=int)
    confidence = np.asarray(points.confidence, dtype=np.float64)
    correct = np.asarray(points.correct, dtype=bool)

    counts = np.bincount(predicted, minlength=len(classes))
    has_own = counts >= own_threshold_support(target)
    # pooled over the other classes only: a class with its own threshold must not lend them
    # its precision, or the classes together fall short of the target
    rest = ~has_own[predicted]
    pooled = lowest_threshold(confidence[rest], correct[rest], target, MIN_PREDICTIONS)
    per_class = {}
    for index, name in enumerate(classes):
        if has_own[index]:
            mine = predicted == index
            threshold = lowest_threshold(confidence[mine], correct[mine], target, MIN_PREDICTIONS)
        else:
            threshold = pooled
        # None: never precise enough, always review
        per_class[name] = ALWAYS_REVIEW if threshold is None else round(max(FLOOR, threshold), 6)

    total = len(predicted)
    if not total:
        return Thresholds(per_class, 0.0, 1.0, 0, 0)
    auto = confidence >= np.array([per_class[classes[p]] for p in predicted])
    count = int(auto.sum())
    precision = float(correct[auto].mean()) if count else 1.0
    return Thresholds(per_class, count / total, precision, count, total)


def wilson_bounds(
    successes: np.ndarray, trials: np.ndarray, z: float
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for proportions, element by element (trials > 0): honest at small
    counts and near 0 or 1."""
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    spread = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return np.maximum(0.0, centre - spread), np.minimum(1.0, centre + spread)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    if trials <= 0:
        return (0.0, 1.0)
    low, high = wilson_bounds(np.float64(successes), np.float64(trials), z)
    return (float(low), float(high))
