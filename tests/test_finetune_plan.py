"""When the fine-tune stops (#33: "train until it stops improving"): a pure decision, after
every epoch, from how far it got, its best epoch and the budget left."""

from __future__ import annotations

import pytest
from sortbox.trainer.finetune import (
    COOLDOWN_EPOCHS,
    MAX_EXTENSIONS,
    PATIENCE,
    Cooldown,
    EpochProgress,
    learning_rate_factor,
    plan_after_epoch,
)

HOUR = 3600.0


def test_the_first_epoch_fits_the_schedule_to_the_budget() -> None:
    plan = plan_after_epoch(EpochProgress(1, 30, 1, 0), 100.0, HOUR - 100, HOUR)
    assert plan.planned_epochs == 30  # 32 fit: the plan stands
    small = plan_after_epoch(EpochProgress(1, 30, 1, 0), 600.0, HOUR - 600, HOUR)
    assert small.planned_epochs == 5 and "budget fits 5 epochs" in small.reason


def test_a_plateau_cools_down_then_stops_and_says_so() -> None:
    plan = plan_after_epoch(EpochProgress(12, 30, 12 - PATIENCE, 0), 30.0, HOUR, HOUR)
    assert plan.cool_down and plan.planned_epochs == 12 + COOLDOWN_EPOCHS
    assert plan.reason.startswith("plateau") and "cooling down" in plan.reason
    cooling = EpochProgress(14, 12 + COOLDOWN_EPOCHS, 4, 0, cooling=True)
    going = plan_after_epoch(cooling, 30.0, HOUR, HOUR)
    assert going.planned_epochs == 12 + COOLDOWN_EPOCHS and not going.cool_down
    end = EpochProgress(12 + COOLDOWN_EPOCHS, 12 + COOLDOWN_EPOCHS, 12 + COOLDOWN_EPOCHS, 0, True)
    ended = plan_after_epoch(end, 30.0, HOUR, HOUR)
    assert ended.planned_epochs == end.epoch and not ended.extended  # no extension at rate 0
    assert ended.reason.startswith("cooled down")


def test_a_plateau_cools_down_only_as_long_as_the_budget_allows() -> None:
    plan = plan_after_epoch(EpochProgress(12, 30, 12 - PATIENCE, 0), 30.0, 70.0, HOUR)
    assert plan.cool_down and plan.planned_epochs == 14
    none = plan_after_epoch(EpochProgress(12, 30, 12 - PATIENCE, 0), 30.0, 20.0, HOUR)
    assert none.planned_epochs == 12 and "no cool-down" in none.reason


def test_a_plateau_cools_down_only_within_the_plan() -> None:
    near_end = plan_after_epoch(EpochProgress(28, 30, 28 - PATIENCE, 0), 30.0, HOUR, HOUR)
    assert near_end.cool_down and near_end.planned_epochs == 30
    at_end = plan_after_epoch(EpochProgress(30, 30, 30 - PATIENCE, 0), 30.0, HOUR, HOUR)
    assert at_end.planned_epochs == 30 and not at_end.cool_down and not at_end.extended
    assert at_end.reason.startswith("plateau") and "the planned 30 epochs ran" in at_end.reason


def test_the_cool_down_falls_from_the_rate_reached_to_zero() -> None:
    steps, planned = 48, 30
    reached = learning_rate_factor(12 * steps, steps, planned)  # epoch 12 of a 30-epoch cosine
    cooldown = Cooldown(12, reached)
    end = 12 + COOLDOWN_EPOCHS
    assert learning_rate_factor(12 * steps, steps, end, cooldown) == pytest.approx(reached)
    halfway = round((12 + COOLDOWN_EPOCHS / 2) * steps)
    assert learning_rate_factor(halfway, steps, end, cooldown) == pytest.approx(reached / 2)
    assert learning_rate_factor(end * steps, steps, end, cooldown) == 0.0
    assert 0.5 < reached < 1  # a plateau at epoch 12 of 30 comes at a high rate


def test_still_improving_at_the_planned_end_extends_by_a_quarter() -> None:
    plan = plan_after_epoch(EpochProgress(30, 30, 30, 0), 30.0, HOUR, HOUR)
    assert plan.extended and plan.planned_epochs == 38
    assert "still improving at epoch 30 of 30" in plan.reason


def test_the_extensions_are_bounded_by_their_number_and_the_budget() -> None:
    done = plan_after_epoch(EpochProgress(48, 48, 48, MAX_EXTENSIONS), 30.0, HOUR, HOUR)
    assert done.planned_epochs == 48 and not done.extended
    tight = plan_after_epoch(EpochProgress(30, 30, 30, 0), 30.0, 70.0, HOUR)
    assert tight.planned_epochs == 32  # 63 s of the 70 left fit two more epochs
    none = plan_after_epoch(EpochProgress(30, 30, 30, 0), 30.0, 20.0, HOUR)
    assert none.planned_epochs == 30 and "budget fits no more" in none.reason


def test_the_planned_end_with_an_earlier_best_stops_there() -> None:
    plan = plan_after_epoch(EpochProgress(30, 30, 26, 0), 30.0, HOUR, HOUR)
    assert plan.planned_epochs == 30 and not plan.extended
    assert plan.reason == "the planned 30 epochs ran; the best was epoch 26"
