"""The deep model: fine-tune the last stages on freshly augmented pictures, within a budget.

Every epoch sees new random-resized crops (35-100% of the picture), mirror images and mild
colour jitter, decoded from the pictures themselves by a background thread. The frozen part
runs without autograd (FrozenPart); the tail's BatchNorm learns the new statistics, since a
batch of 64 estimates them well. AdamW, one warm-up epoch, then a cosine decay; label
smoothing 0.1. The model that is evaluated and kept is an exponential moving average of the
weights (over up to the last 100 steps), which is steadier than the last step's weights on a
few thousand pictures. The epoch kept is the one with the lowest calibration
loss after temperature scaling: the daemon sees the model through its fitted temperature, and
raw cross-entropy would also punish the growing confidence of later, better epochs.

A checkpoint is written after every epoch (temp-then-rename). A run stopped by the timer's
budget, a reboot or kill -9 resumes from it on the next `sortbox train` with the same data;
other data starts afresh.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from sortbox.daemon.layout import replacing
from sortbox.daemon.settings import TrainSettings
from sortbox.daemon.sorting.preprocess import Preprocessing, decode_rgb, normalise, prepare
from sortbox.trainer.calibrate import tempered_nll
from sortbox.trainer.data import Example
from sortbox.trainer.features import FrozenPart
from sortbox.trainer.model import EfficientNetLite
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

LEARNING_RATE = {"tail": 1e-3, "classifier": 3e-3}
# A warm start (the current fine-tuned model, a few new corrections) is already converged: at
# the full rate its first epochs undo more than the corrections teach. Measured on
# clothing-dataset-small after 20 corrections, calibration loss (tempered): 0.310 for the
# current model, 0.337 after a warm start at the full rate, 0.301 at a tenth of it.
WARM_START_LR_SCALE = 0.1
WEIGHT_DECAY = 0.01
LABEL_SMOOTHING = 0.1
PATIENCE = 8  # epochs without a better calibration loss: a plateau
# On a plateau the learning rate is still high (a plateau comes at epochs 13-20 of 30), and a
# network stopped there never gets the low-rate epochs a schedule's end gives: so it is not
# stopped at once but cooled down, its rate falling linearly to zero over these epochs.
COOLDOWN_EPOCHS = 5
MIN_BATCH_FOR_BATCHNORM = 16  # below this, batch statistics are noise: keep ImageNet's
EMA_DECAY = 0.99  # at most, per step: the average spans 100 steps (two epochs of 3,000 pictures)
CHECKPOINT_FORMAT = 4  # 4: the cool-down (where it started) is in it


class NoCuda(RuntimeError):
    pass


def choose_device(setting: str) -> torch.device:
    """`auto`: the GPU when torch sees one, else the CPU. Same recipe, same outputs."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise NoCuda("train.device = 'cuda', but torch sees no CUDA GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def augment(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """Random resized crop (35-100% of the area, aspect 3:4 to 4:3), mirror, colour jitter."""
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(0.35, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            break
    else:
        w = h = min(width, height)
        left, top = (width - w) // 2, (height - h) // 2
    view = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhancer(view).enhance(float(rng.uniform(0.8, 1.2)))
    return view


def training_batches(
    examples: list[Example],
    labels: np.ndarray,
    network: EfficientNetLite,
    batch_size: int,
    seed: int,
    epoch: int,
    max_pixels: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of augmented batches, made two batches ahead on a background thread.
    The order and the crops depend only on (seed, epoch): a resumed run sees the same."""
    spec = network.backbone.preprocessing
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(examples))
    ahead: queue.Queue[tuple[np.ndarray, np.ndarray] | BaseException | None] = queue.Queue(2)

    def produce() -> None:
        try:
            for start in range(0, len(order) - batch_size + 1, batch_size):  # full batches only
                chosen = order[start : start + batch_size]
                pixels = np.stack(
                    [
                        normalise(
                            augment(
                                decode_rgb(
                                    examples[i].path.read_bytes(),
                                    spec.resize,
                                    max_pixels,
                                    examples[i].path.name,
                                ),
                                spec.crop,
                                np.random.default_rng([seed, epoch, int(i)]),
                            ),
                            spec,
                        )
                        for i in chosen
                    ]
                )
                ahead.put((pixels, labels[chosen]))
            ahead.put(None)
        except BaseException as exc:  # surface decoding errors in the training loop
            ahead.put(exc)

    threading.Thread(target=produce, name="augment", daemon=True).start()
    while (item := ahead.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def plain_pictures(
    examples: list[Example], spec: Preprocessing, max_pixels: int
) -> Iterator[np.ndarray]:
    """The daemon's own preprocessing, in batches of 32."""
    for start in range(0, len(examples), 32):
        yield np.stack(
            [
                prepare(e.path.read_bytes(), spec, max_pixels, e.path.name)
                for e in examples[start : start + 32]
            ]
        )


def logits_of(
    network: EfficientNetLite, frozen: FrozenPart, examples: list[Example], max_pixels: int
) -> np.ndarray:
    network.eval()
    device = next(network.parameters()).device  # the frozen part's may differ (a GPU)
    rows = []
    with torch.no_grad():
        for pixels in plain_pictures(examples, network.backbone.preprocessing, max_pixels):
            maps = frozen(pixels).to(device)
            rows.append(network.classifier(network.tail(maps)).float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, network.classifier.out_features))


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tune: where it starts, what it learns from, and how."""

    start: EfficientNetLite  # the fast model, or the current fine-tuned one (a warm start)
    frozen: FrozenPart
    train: list[Example]
    train_labels: np.ndarray
    calibration: list[Example]  # judge the epochs
    calibration_labels: np.ndarray
    settings: TrainSettings
    epochs: int
    checkpoint: Path
    key: str  # recipe_key: a checkpoint of another recipe or data is not resumed
    max_pixels: int
    progress: bool = False
    warm_started: bool = False  # gentler: a tenth of the learning rate


@dataclass(frozen=True)
class FinetuneOutcome:
    network: EfficientNetLite | None  # None: the budget ran out; the checkpoint waits
    epochs_run: int
    planned_epochs: int
    best_epoch: int
    best_calibration_loss: float
    seconds: float  # over all runs that built this model, resumed ones included
    resumed_from_epoch: int
    stop_reason: str  # why it stopped where it did, in words
    calibration_losses: tuple[float, ...] = ()  # each epoch's, over all runs that built it


def recipe_key(fingerprint: str, cfg: TrainSettings, epochs: int, warm_from: str | None) -> str:
    recipe = {
        "format": CHECKPOINT_FORMAT,
        "data": fingerprint,
        "warm_from": warm_from,
        "backbone": cfg.backbone,
        "trainable_stages": cfg.trainable_stages,
        "epochs": epochs,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "lr": LEARNING_RATE,
        "wd": WEIGHT_DECAY,
        "warm_lr_scale": WARM_START_LR_SCALE,
        "ema": EMA_DECAY,
        "selection": "tempered calibration loss",
        "cooldown_epochs": COOLDOWN_EPOCHS,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def finetune(job: FinetuneJob) -> FinetuneOutcome:
    """Fine-tune a copy of `job.start`, epoch by epoch, until the plan says stop or the budget
    runs out (then the checkpoint waits for the next run)."""
    network = copy.deepcopy(job.start).to(job.frozen.device)
    optimizer = _optimizer(network, job.warm_started)
    averaged = AveragedModel(network, multi_avg_fn=_moving_average, use_buffers=True)
    state = _resume(job, network, averaged, optimizer)
    resumed_from = state["epoch"]
    budget_s = job.settings.budget_minutes * 60
    run_started = time.monotonic()
    bar = tqdm(
        total=state["planned_epochs"],
        initial=resumed_from,
        desc="fine-tune",
        disable=not job.progress,
    )
    while state["epoch"] < state["planned_epochs"]:
        epoch_started = time.monotonic()
        _train_one_epoch(job, network, averaged, optimizer, state)
        cal_loss = _judge_epoch(job, averaged.module, state)
        epoch_s = time.monotonic() - epoch_started
        state["seconds"] += epoch_s
        budget_left_s = budget_s - (time.monotonic() - run_started)
        plan = plan_after_epoch(_progress(state), epoch_s, budget_left_s, budget_s)
        if plan.cool_down:  # from the rate the schedule had reached here
            steps = _steps_per_epoch(job)
            factor = learning_rate_factor(state["epoch"] * steps, steps, state["planned_epochs"])
            state["cooldown"] = [state["epoch"], factor]
        state["planned_epochs"], state["stop_reason"] = plan.planned_epochs, plan.reason
        state["extensions"] += plan.extended
        _save_checkpoint(job.checkpoint, state, network, averaged, optimizer)
        bar.total = state["planned_epochs"]
        bar.update(1)
        bar.set_postfix(cal_loss=f"{cal_loss:.3f}", best=state["best_epoch"])
        if epoch_s > budget_left_s and state["epoch"] < state["planned_epochs"]:
            state["stop_reason"] = (
                f"paused at epoch {state['epoch']}/{state['planned_epochs']} when the "
                f"{job.settings.budget_minutes:g}-minute budget ran out; the next run resumes it"
            )
            break
    bar.close()
    finished = state["epoch"] >= state["planned_epochs"]
    if finished and state["best"] is not None:
        network.load_state_dict(state["best"])
    return FinetuneOutcome(
        network.cpu().eval() if finished else None,
        state["epoch"],
        state["planned_epochs"],
        state["best_epoch"],
        state["best_loss"],
        state["seconds"],
        resumed_from,
        state["stop_reason"],
        tuple(state["calibration_losses"]),
    )


# -- what to do after an epoch: a pure decision ---------------------------------------------

PLATEAU_EXTENSION = 0.25  # still improving at the planned end: a quarter more epochs
MAX_EXTENSIONS = 2


@dataclass(frozen=True)
class EpochProgress:
    epoch: int  # epochs done
    planned_epochs: int
    best_epoch: int
    extensions: int  # times the schedule has been extended already
    cooling: bool = False  # a plateau started the cool-down


@dataclass(frozen=True)
class Plan:
    planned_epochs: int
    reason: str  # what the plan is, or why it stops, in words
    extended: bool = False
    cool_down: bool = False  # a plateau: the rate falls to zero by the planned end


def plan_after_epoch(
    progress: EpochProgress, epoch_s: float, budget_left_s: float, budget_s: float
) -> Plan:
    """How many epochs to run in all, now that one more is done.

    - after the first, the schedule shrinks to what the budget fits;
    - PATIENCE epochs without a better calibration loss: a plateau, cool down over
      COOLDOWN_EPOCHS more (what the plan and the budget fit), then stop;
    - at the planned end with the best epoch the last, it was still improving: extend by a
      quarter (at most MAX_EXTENSIONS times, and only what the budget fits)."""
    done, planned, best = progress.epoch, progress.planned_epochs, progress.best_epoch
    if done == 1:
        fits = max(2, int(budget_s * 0.9 // max(epoch_s, 1e-3)))
        if fits < planned:
            return Plan(fits, f"the {budget_s / 60:g}-minute budget fits {fits} epochs")
    plateau = f"plateau: no better calibration loss in the {PATIENCE} epochs after epoch {best}"
    if progress.cooling:
        if done >= planned:
            return Plan(done, f"cooled down to epoch {done} after a plateau; the best was {best}")
        return Plan(planned, "cooling down after a plateau")
    if done - best >= PATIENCE:
        if done >= planned:  # the schedule's own decay has already reached zero
            return Plan(done, f"{plateau}; the planned {planned} epochs ran")
        # never past the plan: near its end the cosine is already low, and epochs beyond it
        # would run at a rate of zero
        more = min(
            COOLDOWN_EPOCHS, planned - done, int(budget_left_s * 0.9 // max(epoch_s, 1e-3))
        )
        if more > 0:
            return Plan(
                done + more, f"{plateau}: cooling down to epoch {done + more}", cool_down=True
            )
        return Plan(done, f"{plateau}; the budget fits no cool-down")
    if done >= planned and best == done and progress.extensions < MAX_EXTENSIONS:
        more = min(
            max(1, round(planned * PLATEAU_EXTENSION)),
            int(budget_left_s * 0.9 // max(epoch_s, 1e-3)),
        )
        if more > 0:
            return Plan(
                done + more,
                f"still improving at epoch {done} of {planned}: extended to {done + more}",
                extended=True,
            )
        return Plan(done, f"still improving at epoch {done}, but the budget fits no more")
    if done >= planned:
        return Plan(done, f"the planned {planned} epochs ran; the best was epoch {best}")
    return Plan(planned, "running")


def _progress(state: dict[str, Any]) -> EpochProgress:
    return EpochProgress(
        state["epoch"],
        state["planned_epochs"],
        state["best_epoch"],
        state["extensions"],
        cooling=state["cooldown"] is not None,
    )


def _steps_per_epoch(job: FinetuneJob) -> int:
    return max(1, len(job.train) // job.settings.batch_size)


# -- the steps of an epoch ---------------------------------------------------------------------


def _optimizer(network: EfficientNetLite, warm_started: bool) -> torch.optim.AdamW:
    scale = WARM_START_LR_SCALE if warm_started else 1.0
    parts = {"tail": network.tail_parameters(), "classifier": network.classifier.parameters()}
    return torch.optim.AdamW(
        # "peak": each group's rate before warm-up and decay (_set_learning_rate)
        [
            {
                "params": params,
                "lr": LEARNING_RATE[part] * scale,
                "peak": LEARNING_RATE[part] * scale,
            }
            for part, params in parts.items()
        ],
        weight_decay=WEIGHT_DECAY,
    )


def _resume(
    job: FinetuneJob,
    network: EfficientNetLite,
    averaged: AveragedModel,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """The checkpoint's state, loaded into the network, average and optimizer; or a new one."""
    state = _load_checkpoint(job.checkpoint, job.key, job.frozen.device)
    if state is None:
        return {
            "key": job.key,
            "epoch": 0,
            "planned_epochs": job.epochs,
            "best": None,
            "best_loss": float("inf"),
            "best_epoch": 0,
            "seconds": 0.0,
            "extensions": 0,
            "cooldown": None,  # [epoch, rate factor] once a plateau starts it
            "calibration_losses": [],
            "stop_reason": "not started",
        }
    network.load_state_dict(state["network"])
    averaged.load_state_dict(state["averaged"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return state


def _train_one_epoch(
    job: FinetuneJob,
    network: EfficientNetLite,
    averaged: AveragedModel,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    cfg, device = job.settings, job.frozen.device
    class_weights = balanced_weights(
        torch.from_numpy(job.train_labels), network.classifier.out_features
    ).to(device)
    steps_per_epoch = _steps_per_epoch(job)
    cooldown = Cooldown(*state["cooldown"]) if state["cooldown"] is not None else None
    network.train()
    _freeze_frozen_batchnorm(network, train_batchnorm=cfg.batch_size >= MIN_BATCH_FOR_BATCHNORM)
    batches = training_batches(
        job.train,
        job.train_labels,
        network,
        cfg.batch_size,
        cfg.seed,
        state["epoch"],
        job.max_pixels,
    )
    for step, (pixels, labels) in enumerate(batches):
        _set_learning_rate(
            optimizer,
            state["epoch"] * steps_per_epoch + step,
            steps_per_epoch,
            state["planned_epochs"],
            cooldown,
        )
        logits = network.classifier(network.dropout(network.tail(job.frozen(pixels))))
        loss = F.cross_entropy(
            logits,
            torch.from_numpy(labels).to(device),
            weight=class_weights,
            label_smoothing=LABEL_SMOOTHING,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        averaged.update_parameters(network)
    state["epoch"] += 1


def _judge_epoch(job: FinetuneJob, smoothed: EfficientNetLite, state: dict[str, Any]) -> float:
    """The smoothed weights' calibration loss; kept when the best so far."""
    logits = logits_of(smoothed, job.frozen, job.calibration, job.max_pixels)
    cal_loss = tempered_nll(logits, job.calibration_labels)
    state["calibration_losses"].append(round(cal_loss, 5))
    if cal_loss < state["best_loss"] - 1e-4:
        state["best"] = {k: v.detach().cpu().clone() for k, v in smoothed.state_dict().items()}
        state["best_loss"], state["best_epoch"] = cal_loss, state["epoch"]
    return cal_loss


@dataclass(frozen=True)
class Cooldown:
    """The rate's last stretch after a plateau: from `factor` of the peak at epoch `start`,
    straight down to zero at the planned end."""

    start: int
    factor: float


def _set_learning_rate(
    optimizer: torch.optim.Optimizer,
    step: int,
    steps_per_epoch: int,
    epochs: int,
    cooldown: Cooldown | None = None,
) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["peak"] * learning_rate_factor(step, steps_per_epoch, epochs, cooldown)


def learning_rate_factor(
    step: int, steps_per_epoch: int, epochs: int, cooldown: Cooldown | None = None
) -> float:
    """The share of the peak rate at this step: a linear warm-up over the first epoch, then a
    cosine decay to zero at the planned end; in a cool-down, a straight line to zero."""
    if cooldown is not None:
        start = cooldown.start * steps_per_epoch
        remaining = max(1, epochs * steps_per_epoch - start)
        return cooldown.factor * max(0.0, 1.0 - (step - start) / remaining)
    total = max(1, epochs * steps_per_epoch)
    if step < steps_per_epoch:
        return 0.1 + 0.9 * step / steps_per_epoch
    progress = (step - steps_per_epoch) / max(1, total - steps_per_epoch)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _moving_average(
    averages: list[torch.Tensor], current: list[torch.Tensor], steps: torch.Tensor
) -> None:
    """One step of the weights' moving average. Its decay, (1 + n) / (10 + n) after n steps,
    grows towards EMA_DECAY (reached after 900), so the average follows a short run (a
    few corrections, a test) and an early epoch closely and spans more steps later."""
    decay = min(EMA_DECAY, (1 + int(steps)) / (10 + int(steps)))
    for average, now in zip(averages, current, strict=True):
        if average.is_floating_point():
            average.lerp_(now, 1 - decay)
        else:  # BatchNorm's step counter
            average.copy_(now)


def _freeze_frozen_batchnorm(network: EfficientNetLite, train_batchnorm: bool) -> None:
    """The frozen part keeps ImageNet's statistics; the tail learns new ones if it may."""
    for module in network.stem.modules():
        module.eval()
    for block in network.blocks[: network.split]:
        block.eval()
    if not train_batchnorm:
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()


def balanced_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Loss weights that make every class count the same, however many pictures it has."""
    counts = torch.bincount(labels, minlength=classes).float().clamp(min=1)
    return counts.sum() / (classes * counts)


def _save_checkpoint(
    path: Path,
    state: dict[str, Any],
    network: EfficientNetLite,
    averaged: AveragedModel,
    optimizer: torch.optim.Optimizer,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        **state,
        "network": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "averaged": {k: v.detach().cpu() for k, v in averaged.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    with replacing(path) as temporary:
        torch.save(payload, temporary)


def _load_checkpoint(path: Path, key: str, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint of this very recipe and data, or None (then any other one is removed)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # torn or from another torch: start afresh rather than fail the run
        path.unlink(missing_ok=True)
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        path.unlink(missing_ok=True)
        return None
    return state
