"""Confidence calibration on the validation split: one temperature, then a threshold per class.

Temperature scaling (Guo et al., 2017) fixes over-confidence without changing any prediction.
Thresholds are chosen so that the pictures auto-sorted into a class reach `target_precision` on
validation; a class with too few validation predictions to measure that uses the threshold
pooled over all classes. No threshold is below a floor.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from daemon.decide import softmax

MIN_PREDICTIONS = 10  # the smallest auto-sorted set a threshold may be chosen on
FLOOR = 0.5


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probabilities = softmax(logits, temperature)
    return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation NLL: a coarse log-grid, then a fine one around it."""
    if len(labels) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = min(grid, key=lambda t: nll(logits, labels, t))
    fine = best * np.exp(np.linspace(-0.06, 0.06, 41))
    return float(min(fine, key=lambda t: nll(logits, labels, t)))


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> float:
    if len(labels) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def lowest_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float, min_support: int
) -> float | None:
    """The lowest t whose auto-sorted set, the predictions with confidence >= t, is at least
    `target` precise and holds at least `min_support` predictions; None if there is none."""
    if len(confidence) < min_support:
        return None
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    # a threshold takes a whole group of equal confidences, so only a group's end is a choice
    group_ends = np.append(confidence[1:] < confidence[:-1], True)
    choices = np.flatnonzero(group_ends & (precision >= target))
    choices = choices[choices >= min_support - 1]
    if not len(choices):
        return None
    last = choices[-1]
    # halfway to the next confidence down: the same set on validation, and a prediction at
    # the boundary does not flip on the last digit of a float (ORT and PyTorch differ there)
    below = confidence[last + 1] if last + 1 < len(confidence) else confidence[last]
    return float((confidence[last] + below) / 2)


def own_threshold_support(target: float) -> int:
    """Validation predictions a class needs for a threshold of its own: enough to expect two
    mistakes at the target rate (67 at 0.97). With fewer, one mistake more or less swings
    the class between 100% precision and far below the target: that is noise, not evidence."""
    return max(MIN_PREDICTIONS, math.ceil(2 / max(1e-6, 1 - target)))


@dataclass(frozen=True)
class Calibration:
    temperature: float
    thresholds: dict[str, float]
    expected_auto_share: float  # share of validation pictures that would be auto-sorted
    expected_auto_precision: float


def calibrate(
    logits: np.ndarray, labels: np.ndarray, classes: list[str], target: float
) -> Calibration:
    temperature = fit_temperature(logits, labels)
    probabilities = softmax(logits, temperature)
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    correct = predicted == labels

    pooled = lowest_threshold(confidence, correct, target, MIN_PREDICTIONS)
    pooled = max(FLOOR, pooled if pooled is not None else 1.0)
    support = own_threshold_support(target)
    thresholds = {}
    for index, name in enumerate(classes):
        mine = predicted == index
        if mine.sum() < support:
            threshold = pooled  # too little evidence for a threshold of its own
        else:
            own = lowest_threshold(confidence[mine], correct[mine], target, MIN_PREDICTIONS)
            threshold = own if own is not None else 1.0  # never precise enough: always review
        thresholds[name] = round(max(FLOOR, threshold), 6)

    auto = (
        confidence >= np.array([thresholds[classes[p]] for p in predicted])
        if len(labels)
        else np.zeros(0, bool)
    )
    share = float(auto.mean()) if len(labels) else 0.0
    precision = float(correct[auto].mean()) if auto.any() else 1.0
    return Calibration(temperature, thresholds, share, precision)


def precision_coverage(
    probabilities: np.ndarray,
    labels: np.ndarray,
    steps: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
) -> list[dict[str, float]]:
    """For one global threshold at a time: how many are auto-sorted, and how precisely."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    rows = []
    for threshold in steps:
        auto = confidence >= threshold
        rows.append(
            {
                "threshold": threshold,
                "coverage": float(auto.mean()) if len(labels) else 0.0,
                "precision": float(correct[auto].mean()) if auto.any() else 1.0,
            }
        )
    return rows
