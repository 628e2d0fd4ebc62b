"""Confidence calibration on the calibration split: one temperature, the unknown threshold
(where the model scores how unlike every class a picture is), then the class threshold.

Temperature scaling (Guo et al., 2017) fixes over-confidence without changing any prediction.
Thresholds come from daemon/thresholds.py, which the daemon also runs at load time on the
calibration predictions stored in the manifest.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from sortbox.daemon.sorting.decide import softmax
from sortbox.daemon.sorting.thresholds import CalibrationPoints, derive_thresholds
from sortbox.trainer.unknown import unknown_threshold


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probabilities = softmax(logits, temperature)
    return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising calibration NLL: a coarse log-grid, then a fine one around it."""
    if len(labels) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = min(grid, key=lambda t: nll(logits, labels, t))
    fine = best * np.exp(np.linspace(-0.06, 0.06, 41))
    return float(min(fine, key=lambda t: nll(logits, labels, t)))


# Weights of the fast model in a blend with the fine-tuned one (model.Blended) to try. The
# blend costs about a third more model time, so it must lower the tempered calibration loss by
# BLEND_MIN_GAIN to be chosen. On clothing-dataset-small it lowered that loss by 0.04 (README).
BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
BLEND_MIN_GAIN = 0.01
Logits = TypeVar("Logits")  # np.ndarray or torch.Tensor: the arithmetic is the same


def tempered_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Calibration NLL at the temperature that suits these logits best: how good the model is
    as the daemon sees it, through its fitted temperature."""
    return nll(logits, labels, fit_temperature(logits, labels)) if len(labels) else 0.0


def blend(tuned: Logits, fast: Logits, fast_weight: float) -> Logits:
    """The blend of two models' logits (NumPy arrays, or tensors inside model.Blended)."""
    return (1 - fast_weight) * tuned + fast_weight * fast


def choose_blend(tuned: np.ndarray, fast: np.ndarray, labels: np.ndarray) -> float:
    """The fast model's weight in the blend (0: the fine-tuned model alone), from the
    calibration pictures' logits of both models."""
    losses = {w: tempered_nll(blend(tuned, fast, w), labels) for w in BLEND_WEIGHTS}
    best = min(losses, key=losses.__getitem__)
    return best if losses[best] <= losses[0.0] - BLEND_MIN_GAIN else 0.0


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


@dataclass(frozen=True)
class Calibration:
    temperature: float
    thresholds: dict[str, float]
    points: CalibrationPoints  # the calibration predictions, for the manifest
    expected_auto_share: float  # share of calibration pictures that would be auto-sorted
    expected_auto_precision: float
    unknown_threshold: float | None = None  # above it: "unlike any class", to review


def calibrate(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    target: float,
    unknown: np.ndarray | None = None,
    unknown_review_rate: float = 0.0,
    check_scores: np.ndarray | None = None,
) -> Calibration:
    """`unknown`: the calibration pictures' unknown scores, where the model has them; at most
    `unknown_review_rate` of such known pictures are to be sent to review by the check.
    `check_scores`: where `unknown` comes from other checks than the one that ships (the
    cross-fitted folds'), the shipped check's scores on known pictures it never learnt from.
    The threshold is set on those, and `unknown` is rescaled so that the same share of it lies
    past the threshold: the evidence the walk keeps is what the shipped check would keep."""
    temperature = fit_temperature(logits, labels)
    probabilities = softmax(logits, temperature)
    predicted = probabilities.argmax(axis=1)
    check = None if unknown is None else unknown_threshold(unknown, unknown_review_rate)
    if unknown is not None and check is not None and check_scores is not None:
        shipped_check = unknown_threshold(check_scores, unknown_review_rate)
        if shipped_check is not None and check > 0:
            unknown = unknown * (shipped_check / check)
            check = shipped_check
    points = CalibrationPoints(
        predicted=predicted.tolist(),
        confidence=[round(float(c), 6) for c in probabilities.max(axis=1)],
        correct=(predicted == labels).tolist(),
        unknown=None if unknown is None else [round(float(u), 6) for u in unknown],
    )
    derived = derive_thresholds(points, classes, target, check)
    return Calibration(
        temperature, derived.per_class, points, derived.auto_share, derived.auto_precision, check
    )


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
