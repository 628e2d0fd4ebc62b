"""The deep model: the last stages fine-tuned from the fast model, then blended with it.

The fine-tune starts from the fast model's head that never saw the calibration pictures
(they judge the epochs), or from the current fine-tuned model with a fifth of the schedule
when it knows the same classes (a warm start after a few corrections). The blend mixes its
logits with the fast model's when that calibrates better (trainer/calibrate.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sortbox.daemon.layout import replacing
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.manifest import Manifest
from sortbox.trainer.calibrate import blend, choose_blend
from sortbox.trainer.data import TrainingSet
from sortbox.trainer.fast import JUDGED_ROLES, FastModel, start_for_finetune
from sortbox.trainer.finetune import FinetuneJob, FinetuneOutcome, finetune, logits_of, recipe_key
from sortbox.trainer.model import Blended, EfficientNetLite, WithUnknown
from sortbox.trainer.report import TrainingFacts

WARM_FRACTION = 5  # a warm-started fine-tune runs a fifth of the epochs
CHECKPOINT = "finetune.pt"


@dataclass(frozen=True)
class Tuned:
    outcome: FinetuneOutcome
    warm_from: str | None  # the version it started from, or None (the fast model)
    seconds: float  # this run's

    def facts(self, device: torch.device) -> TrainingFacts:
        o = self.outcome
        return TrainingFacts(
            seconds=self.seconds,
            onnx_parity_max_diff=0.0,  # filled in when exported
            device=device.type,
            warm_start_from=self.warm_from,
            epochs_run=o.epochs_run,
            planned_epochs=o.planned_epochs,
            best_epoch=o.best_epoch,
            best_calibration_loss=o.best_calibration_loss,
            resumed_from_epoch=o.resumed_from_epoch,
            finetune_seconds_all_runs=o.seconds,
            stop_reason=o.stop_reason,
            calibration_losses=list(o.calibration_losses),
        )


def fine_tune(
    settings: Settings,
    fast: FastModel,
    data: TrainingSet,
    current: Manifest | None,
    progress: bool,
) -> Tuned:
    cfg = settings.train
    started = time.monotonic()
    start = start_for_finetune(fast)
    warm = warm_start(settings, current, data)
    epochs = cfg.finetune_epochs
    if warm is not None:
        start.load_state_dict(warm)
        epochs = max(2, cfg.finetune_epochs // WARM_FRACTION)
    warm_from = current.version if warm is not None and current is not None else None
    labels = data.labels()
    job = FinetuneJob(
        start=start,
        frozen=fast.cache.frozen,
        train=data.train,
        train_labels=labels["train"],
        calibration=data.calibration,
        calibration_labels=labels["calibration"],
        settings=cfg,
        epochs=epochs,
        checkpoint=settings.resolved_cache_dir / CHECKPOINT,
        key=recipe_key(data.fingerprint, cfg, epochs, warm_from),
        max_pixels=settings.max_pixels,
        progress=progress,
        warm_started=warm is not None,
    )
    # the same seed trains the same network whatever ran before it (the fast model's
    # cross-fitting draws from torch's generator too): dropout and drop-connect draw from it
    torch.manual_seed(cfg.seed)
    outcome = finetune(job)
    print(f"train: fine-tune: {outcome.stop_reason}")
    return Tuned(outcome, warm_from, time.monotonic() - started)


@dataclass(frozen=True)
class DeepModel:
    model: WithUnknown
    logits: dict[str, np.ndarray]  # by role: calibration, test
    fast_weight: float  # the blend's share of the fast model (0: none)


def blend_with_fast(
    settings: Settings, tuned: EfficientNetLite, fast: FastModel, data: TrainingSet
) -> DeepModel:
    """The fine-tuned model's logits mixed with the fast model's, when that calibrates better
    on the calibration pictures by enough to pay for a second tail. The fast model learnt from
    those pictures: its cross-fitted (out-of-sample) logits stand in for it there."""
    tuned_logits = {
        role: logits_of(tuned, fast.cache.frozen, data.role(role), settings.max_pixels)
        for role in JUDGED_ROLES
    }
    fast_logits = {**fast.logits, "calibration": fast.crossed.logits[len(data.train) :]}
    calibration_labels = data.labels()["calibration"]
    weight = (
        choose_blend(tuned_logits["calibration"], fast_logits["calibration"], calibration_labels)
        if settings.train.blend
        else 0.0
    )
    network = Blended(tuned, fast.network, weight) if weight else tuned
    logits = {role: blend(tuned_logits[role], fast_logits[role], weight) for role in JUDGED_ROLES}
    return DeepModel(WithUnknown(network, fast.network, fast.scorer), logits, weight)


def weights_path(settings: Settings, version: str) -> Path:
    return settings.resolved_cache_dir / "finetuned" / f"{version}.pt"


def keep_weights(settings: Settings, version: str, network: EfficientNetLite) -> None:
    """The published fine-tuned model's PyTorch weights, to start the next fine-tune from
    (ONNX folds BatchNorm away, so they cannot be read back from model.onnx). One is kept."""
    path = weights_path(settings, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as temporary:
        torch.save(network.state_dict(), temporary)
    for other in path.parent.glob("*.pt"):
        if other != path:
            other.unlink(missing_ok=True)


def warm_start(
    settings: Settings, current: Manifest | None, data: TrainingSet
) -> dict[str, torch.Tensor] | None:
    """The current model's weights, if it is a fine-tuned model of this backbone and these
    classes whose weights were kept; else None (fine-tune from the fast model)."""
    if current is None or current.kind != "fine-tuned" or current.classes != data.classes:
        return None
    if current.backbone != settings.train.backbone:
        return None
    try:
        return torch.load(weights_path(settings, current.version), weights_only=True)
    except (OSError, RuntimeError):
        return None
