"""INT8 ships when the daemon would decide with it as with the float model (#33): the same
class wherever both auto-sort, nearly as many auto-sorted, and no wholesale change of labels."""

from __future__ import annotations

import numpy as np
from sortbox.trainer.calibrate import Calibration
from sortbox.trainer.quantize import (
    MAX_COVERAGE_COST,
    MIN_AGREEMENT,
    DecisionsCompared,
    Outputs,
    auto_decisions,
)

CLASSES = ["hat", "pants"]


def calibration(threshold: float, unknown: float | None = None) -> Calibration:
    return Calibration(1.0, dict.fromkeys(CLASSES, threshold), None, 0.5, 0.97, unknown)  # type: ignore[arg-type]


def test_a_picture_goes_to_its_class_only_past_its_threshold_and_the_unknown_check() -> None:
    outputs = Outputs(
        logits=np.array([[4.0, 0.0], [0.0, 4.0], [0.2, 0.0], [4.0, 0.0]], dtype=np.float32),
        unknown=np.array([1.0, 1.0, 1.0, 9.0], dtype=np.float32),
    )
    assert auto_decisions(outputs, calibration(0.9), CLASSES).tolist() == [0, 1, -1, 0]
    assert auto_decisions(outputs, calibration(0.9, 5.0), CLASSES).tolist() == [0, 1, -1, -1]


def test_one_picture_filed_into_another_class_refuses_it() -> None:
    fine = DecisionsCompared(0.982, 0, 0.692, 0.669)  # measured on clothing-dataset-small
    assert fine.acceptable and round(fine.coverage_cost, 3) == 0.023
    assert not DecisionsCompared(0.99, 1, 0.69, 0.69).acceptable
    assert not DecisionsCompared(0.99, 0, 0.69, 0.69 - MAX_COVERAGE_COST - 0.01).acceptable
    assert not DecisionsCompared(MIN_AGREEMENT - 0.01, 0, 0.69, 0.69).acceptable


def test_the_comparison_uses_the_calibration_that_ships_with_both() -> None:
    """The INT8 model's own outputs on the calibration pictures are in-sample wherever the fast
    model's head is in it: it takes the float model's calibration, and is compared under it."""
    from sortbox.trainer.quantize import compare_decisions

    labels = np.array([0, 1] * 500)
    confident = np.where(labels[:, None] == np.arange(2), 3.0, 0.0).astype(np.float32)
    float_outputs = Outputs(confident, np.zeros(1000, np.float32))
    int8_outputs = Outputs(confident * 0.5, np.zeros(1000, np.float32))  # less sure of each
    shipped = calibration(0.9)  # the float model's: the INT8 one falls below it everywhere
    compared = compare_decisions(
        float_outputs, int8_outputs, labels, CLASSES, 0.97, 0.0, shipped=shipped
    )
    assert compared.float_auto_share == 1.0 and compared.int8_auto_share == 0.0
    assert not compared.acceptable  # all its pictures would go to review
    own = compare_decisions(float_outputs, int8_outputs, labels, CLASSES, 0.97, 0.0)
    assert own.int8_auto_share > 0.0  # calibrated on itself it would have looked as good
