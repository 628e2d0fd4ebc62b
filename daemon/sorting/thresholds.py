"""Confidence thresholds that keep a precision promise, from calibration predictions. Pure.

The trainer stores its calibration predictions in the manifest (`CalibrationPoints`); the
daemon derives the thresholds from them at load time for the `target_precision` in
config.toml, so a user makes the sorter stricter or bolder without training again.

The promise is about what a user measures: of PROMISE_BATCH (400) or more auto-sorted
pictures, at least `target` are right, with 90% confidence. Half that risk goes to the luck of
the batch (`batch_target`: 97% on 400 needs about 98.1% on average), half to the luck of the
calibration draw. That part is made for the threshold actually chosen, not for each candidate
(Learn-then-Test, Angelopoulos et al. 2021, with fixed-sequence testing): for each threshold
on a fixed grid, from the highest down, the hypothesis "the pictures at or above it are less
than `target` precise" is tested with the exact binomial tail of its mistakes; the walk stops
at the first it cannot reject; a second walk, started lower with the other half of the risk,
keeps one early confident mistake from ending everything (`promised_threshold`). The lowest
rejected threshold keeps its target with probability at least 1 - its risk over the draw of
the calibration pictures. Where the walks start depends on how many calibration
pictures lie above a threshold, never on which of them were right.

Why not the old rule (the lowest threshold whose own one-sided 80% Wilson bound reached the
target): choosing the lowest of many candidates spends that 80% many times, and on unseen
pictures the promise broke (issue #33: 95.0% on the test pictures for a 97% promise).

One threshold serves every class: per-class thresholds would each need about 76 calibration
predictions without a mistake to show 97% (a promise per class would need ten times the
evidence), which a user's few hundred calibration pictures do not hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

FLOOR = 0.5  # no threshold is below it
# The threshold of a class never shown precise enough: above any probability. Not 1.0: a
# softmax gives exactly 1.0 when one logit dominates (always, after a temperature fitted on a
# handful of calibration pictures), and those pictures would be auto-sorted on no evidence.
ALWAYS_REVIEW = 1.01
# The promise: of PROMISE_BATCH (or more) pictures auto-sorted, at least the target share is
# right, with probability 1 - CONFIDENCE_RISK: "at least 97% of 400 with 90% confidence". Half
# the risk is for the calibration draw (Learn-then-Test), half for the batch's own luck: a
# threshold that is 97% precise on average still gives under 97% on half of all batches, and
# so it did on the test pictures of clothing-dataset-small resplits (README, Benchmarks).
CONFIDENCE_RISK = 0.1
PROMISE_BATCH = 400
# The thresholds tried, highest first: fixed before any data is seen (Learn-then-Test needs
# that), dense near 1 where a tempered softmax puts most confident pictures.
GRID = tuple(float(t) for t in 1.0 - np.geomspace(1e-5, 1.0 - FLOOR, 600))
# The two walks down GRID (see promised_threshold): the share of the risk each has, and where
# the second starts, as a share of the calibration pictures lying above.
START_WEIGHTS = (0.5, 0.5)
SECOND_START = 0.25


class CalibrationPoints(BaseModel):
    """One row per calibration picture: predicted class index, calibrated confidence, right?"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    predicted: list[int]
    confidence: list[float]
    correct: list[bool]
    # the unknown score of each (issue #33), where the model has one
    unknown: list[float] | None = None

    @model_validator(mode="after")
    def _rows_line_up(self) -> CalibrationPoints:
        rows = {len(self.predicted), len(self.confidence), len(self.correct)}
        if self.unknown is not None:
            rows.add(len(self.unknown))
        if len(rows) > 1:
            raise ValueError(
                "calibration points: predicted, confidence, correct and unknown differ in length"
            )
        return self


@dataclass(frozen=True)
class Thresholds:
    per_class: dict[str, float]
    auto_share: float  # share of the calibration pictures that would be auto-sorted
    auto_precision: float  # and how many of those are right
    auto_count: int
    total: int


def sorts_nothing(thresholds: dict[str, float]) -> bool:
    """No class can be auto-sorted: the evidence showed no threshold keeping the target, and
    every picture goes to review with its suggestion."""
    return all(t >= ALWAYS_REVIEW for t in thresholds.values())


def promise_words(target: float, risk: float = CONFIDENCE_RISK) -> str:
    """The precision promise as what it is, for the report and `sortbox status`."""
    return (
        f"at least {target:.0%} right, measured on {PROMISE_BATCH} or more auto-sorted "
        f"pictures, with {1 - risk:.0%} confidence"
    )


def batch_target(target: float, batch: int, risk: float) -> float:
    """The precision a sorter needs on average so that a batch of `batch` of its pictures is
    at least `target` precise with probability 1 - risk (exact binomial)."""
    allowed = math.floor((1 - target) * batch + 1e-9)
    low, high = 0.0, 1.0 - target  # error rates: low keeps the batch, high may not
    for _ in range(60):
        middle = (low + high) / 2
        if 1.0 - binomial_cdf(allowed, batch, middle) <= risk:
            low = middle
        else:
            high = middle
    return 1.0 - low


def binomial_cdf(mistakes: int, trials: int, rate: float) -> float:
    """P(Binomial(trials, rate) <= mistakes), summed in log space (exact for any size)."""
    if mistakes >= trials:
        return 1.0
    if rate <= 0.0:
        return 1.0
    log_rate, log_rest = math.log(rate), math.log1p(-rate)
    log_choose = math.lgamma(trials + 1)
    terms = [
        log_choose - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
        + k * log_rate + (trials - k) * log_rest
        for k in range(mistakes + 1)
    ]  # fmt: skip
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def minimum_support(target: float, risk: float = CONFIDENCE_RISK) -> int:
    """The fewest predictions, all right, that can show `target` precision with confidence
    1 - risk: 99 for 97%, 149 for 98% at 95% (76 and 114 at 90%)."""
    return math.ceil(math.log(risk) / math.log(max(1e-12, target))) if target < 1 else 10**9


def promised_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float, risk: float = CONFIDENCE_RISK
) -> float | None:
    """The lowest threshold on GRID whose auto-sorted set (predictions with confidence >= it)
    is shown at least `target` precise, walking GRID from the top with the fallback procedure
    at level `risk`; None if none is.

    A plain fixed sequence stops for good at its first failure, and near the top, where few
    pictures lie above, one confident mistake is a failure: a calibrated sorter with 4,000
    calibration pictures then auto-sorted under 1%. So the walk starts twice (Wiens' fallback
    procedure, a shortcut of weighted Bonferroni, valid for any order fixed in advance): with
    half the risk where the fewest pictures that can show the target lie above, and with the
    other half where a quarter of all the calibration pictures do. A walk still going there
    carries its half on, so it then tests with the whole risk. With too few calibration
    pictures for two starts, one walk has all the risk."""
    order = np.argsort(-confidence, kind="stable")
    confidence, wrong = confidence[order], ~correct[order]
    mistakes_above = np.concatenate([[0], np.cumsum(wrong)])
    error_rate = 1.0 - target
    second = math.ceil(SECOND_START * len(confidence))
    if second <= minimum_support(target, risk):  # few pictures: one walk, with all the risk
        starts = [minimum_support(target, risk)] * 2
    else:
        first = minimum_support(target, risk * START_WEIGHTS[0])
        starts = [first, max(first, second)]
    level, started, chosen = 0.0, 0, None
    for threshold in GRID:
        count = int(np.searchsorted(-confidence, -threshold, side="right"))
        while started < len(starts) and count >= starts[started]:
            level += risk * START_WEIGHTS[started]
            started += 1
        if level == 0.0:
            continue  # no walk is going here: nothing is tested (and nothing spent)
        if binomial_cdf(int(mistakes_above[count]), count, error_rate) <= level:
            chosen = threshold
        else:
            level = 0.0  # this walk ends; its risk is spent
    return chosen


def derive_thresholds(
    points: CalibrationPoints,
    classes: list[str],
    target: float,
    unknown_threshold: float | None = None,
    risk: float = CONFIDENCE_RISK,
    batch: int | None = PROMISE_BATCH,
) -> Thresholds:
    """One threshold for every class (see the module doc), ALWAYS_REVIEW if no threshold can
    be shown to keep `target` on a batch of `batch` auto-sorted pictures (None: on average).
    With an `unknown_threshold`, only the pictures the unknown check lets through count: the
    others are never auto-sorted, so the promise is about the rest."""
    confidence = np.asarray(points.confidence, dtype=np.float64)
    correct = np.asarray(points.correct, dtype=bool)
    familiar = np.ones(len(confidence), dtype=bool)
    if unknown_threshold is not None and points.unknown is not None:
        familiar = np.asarray(points.unknown, dtype=np.float64) <= unknown_threshold
    if batch is not None:  # half the risk for the batch, half for the calibration draw
        target, risk = batch_target(target, batch, risk / 2), risk / 2
    threshold = promised_threshold(confidence[familiar], correct[familiar], target, risk)
    value = ALWAYS_REVIEW if threshold is None else round(max(FLOOR, threshold), 6)
    per_class = dict.fromkeys(classes, value)

    total = len(confidence)
    if not total:
        return Thresholds(per_class, 0.0, 1.0, 0, 0)
    auto = familiar & (confidence >= value)
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
