"""Decisions: model outputs to a folder, with temperature and per-class thresholds."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from sortbox.daemon.sorting.decide import decide
from sortbox.daemon.sorting.manifest import Manifest, retarget
from sortbox.daemon.sorting.preprocess import Preprocessing
from sortbox.daemon.sorting.thresholds import CalibrationPoints

# -- decisions -----------------------------------------------------------------------------------


def manifest(temperature: float = 1.0, threshold: float = 0.8) -> Manifest:
    return Manifest(
        version="t1",
        created=datetime.now(UTC),
        classes=["cats", "dogs", "cars"],
        preprocessing=Preprocessing(),
        temperature=temperature,
        thresholds={"cats": threshold, "dogs": 0.5, "cars": 0.5},
        model_sha256="0" * 64,
    )


def test_decide_uses_temperature_and_per_class_thresholds() -> None:
    logits = np.array([2.0, 0.0, 0.0], np.float32)
    confident = decide(logits, manifest(temperature=0.5))
    assert confident.folder == "cats" and confident.confidence > 0.95
    unsure = decide(logits, manifest(temperature=2.0))
    assert unsure.folder == "needs_review" and unsure.label == "cats"
    assert unsure.top3[0][0] == "cats" and len(unsure.top3) == 3


def test_a_model_published_under_an_older_threshold_rule_follows_the_current_one() -> None:
    """Thresholds come from the calibration predictions at every load, even for the target the
    model was published with: its stored ones may come from an older, bolder rule."""
    points = CalibrationPoints(predicted=[0] * 15, confidence=[0.9] * 15, correct=[True] * 15)
    published = manifest(threshold=0.6).model_copy(
        update={"calibration": points, "target_precision": 0.97}
    )
    loaded = retarget(published, 0.97)
    assert loaded.thresholds["cats"] > 1.0, "15 right answers do not show 97%"
    assert retarget(manifest(threshold=0.6), 0.97).thresholds["cats"] == 0.6  # no points: kept


def test_a_class_without_evidence_goes_to_review_even_at_a_confidence_of_one() -> None:
    """A temperature fitted on a few calibration pictures, all right, is tiny: the softmax is
    exactly 1.0, and a threshold of 1.0 would auto-sort every picture on no evidence."""
    points = CalibrationPoints(predicted=[0, 0, 1], confidence=[1.0] * 3, correct=[True] * 3)
    loaded = retarget(manifest().model_copy(update={"calibration": points}), 0.97)
    saturated = decide(
        np.array([40.0, 0.0, 0.0], np.float32), loaded.model_copy(update={"temperature": 0.05})
    )
    assert saturated.confidence == 1.0
    assert saturated.folder == "needs_review" and saturated.label == "cats"
    assert "too little calibration evidence" in saturated.describe()
    assert Manifest.model_validate(loaded.model_dump()).thresholds == loaded.thresholds


def test_not_sure_reasons_never_read_as_equal() -> None:
    """A first user read "0.60 < 0.60 for clothing" for a confidence of 0.598918."""
    from sortbox.daemon.console import not_sure_words

    assert not_sure_words(0.52, 0.6, "shirt") == "0.52 < 0.60 for shirt"
    assert not_sure_words(0.598918, 0.6, "clothing") == "0.599 < 0.600 for clothing"
    assert not_sure_words(0.59999, 0.6, "hat") == "0.599990 < 0.600000 for hat"
