"""`sortbox train`: the whole recipe, top to bottom.

data → cached trunk features → stage 1: a new head on frozen features → stage 2: fine-tune the
last block and head on augmented views, early stopping on validation loss → calibrate →
evaluate → export and check ONNX parity → gate against the current model → publish or keep as
a rejected candidate. Everything written goes through temp-then-rename.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from daemon.classify import load_classifier
from daemon.decide import softmax
from daemon.journal import Journal, TrainingRun
from daemon.manifest import Manifest, current_version, read_manifest
from daemon.preprocess import Preprocessing, prepare
from daemon.settings import Settings
from trainer.calibrate import calibrate, expected_calibration_error, precision_coverage
from trainer.data import Example, TrainingSet, gather
from trainer.evaluate import evaluate, gate, report_files
from trainer.export import check_parity, export_onnx
from trainer.features import FeatureCache
from trainer.model import FEATURES, TAIL_BLOCKS, EfficientNetLite0, imagenet_lite0
from trainer.publish import new_version, publish

EXIT_OK, EXIT_FAILED, EXIT_NOT_PUBLISHED = 0, 1, 3
PATIENCE = 3  # epochs without a better validation loss before fine-tuning stops
PARITY_IMAGES = 16


def run_training(
    settings: Settings, force: bool = False, dry_run: bool = False, progress: bool = True
) -> int:
    if dry_run:
        print(describe(gather(settings)))
        return EXIT_OK
    # one run at a time (the timer and someone at a terminal): the loser changes nothing
    with exclusive(settings.resolved_cache_dir / "train.lock") as held:
        if not held:
            return finish(settings, "skipped", None, "another `sortbox train` is running")
        return train_and_publish(settings, force, progress)


def train_and_publish(settings: Settings, force: bool, progress: bool) -> int:
    cfg = settings.train
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    timings: dict[str, float] = {}
    clock = time.monotonic()

    # 1. Data: labelled folders + the library, where the folder is the label.
    data = gather(settings)
    print(describe(data))
    if len(data.classes) < 2 or not data.val:
        return finish(
            settings,
            "failed",
            None,
            "need at least two classes with enough pictures, and a validation split",
        )
    current = _current_manifest(settings)
    if current is not None and current.training_set_hash == data.fingerprint and not force:
        return finish(
            settings,
            "skipped",
            current.version,
            "nothing changed since the current model was trained",
        )
    classes = data.classes
    y_train = torch.tensor([classes.index(e.label) for e in data.train])
    y_val = torch.tensor([classes.index(e.label) for e in data.val])
    timings["data_s"] = time.monotonic() - clock

    # 2. Trunk features, cached by picture hash: only new pictures cost a forward pass.
    network = imagenet_lite0()
    spec = Preprocessing()
    cache = FeatureCache(
        settings.resolved_cache_dir,
        network,
        spec,
        cfg.augmented_views,
        cfg.seed,
        cfg.threads,
        settings.max_pixels,
    )
    train_maps = torch.from_numpy(
        cache.maps(data.train, with_views=True, progress="features (train)" if progress else "")
    )
    val_maps = torch.from_numpy(
        cache.maps(data.val, with_views=False, progress="features (val)" if progress else "")
    )[:, 0]
    timings["features_s"] = time.monotonic() - clock - timings["data_s"]

    # 3. Stage 1: a new head on frozen pooled features (the tail still has ImageNet weights).
    network.classifier = torch.nn.Linear(FEATURES, len(classes))
    freeze_batchnorm(network)
    class_weights = balanced_weights(y_train, len(classes))
    with torch.no_grad():
        pooled_train = pooled(network, train_maps[:, 0])
        pooled_val = pooled(network, val_maps)
    head_optimizer = torch.optim.AdamW(network.classifier.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in tqdm(range(cfg.head_epochs), desc="stage 1: head", disable=not progress):
        for batch in torch.randperm(len(y_train)).split(cfg.batch_size):
            loss = F.cross_entropy(
                network.classifier(network.dropout(pooled_train[batch])),
                y_train[batch],
                weight=class_weights,
            )
            head_optimizer.zero_grad()
            loss.backward()
            head_optimizer.step()
    with torch.no_grad():
        stage1_logits = network.classifier(pooled_val)
        stage1_val_loss = F.cross_entropy(stage1_logits, y_val).item()
        # a logistic regression on frozen features: the baseline fine-tuning has to beat
        stage1_accuracy = (stage1_logits.argmax(dim=1) == y_val).float().mean().item()
    timings["head_s"] = time.monotonic() - clock - sum(timings.values())

    # 4. Stage 2: fine-tune the last block + head conv + classifier on augmented cached views.
    tail = [*network.blocks[-TAIL_BLOCKS:].parameters(), *network.head.parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": tail, "lr": 3e-4}, {"params": network.classifier.parameters(), "lr": 1e-3}],
        weight_decay=1e-4,
    )
    best_loss, best_state, stale, epochs_run = (
        stage1_val_loss,
        copy.deepcopy(network.state_dict()),
        0,
        0,
    )
    for _ in tqdm(range(cfg.finetune_epochs), desc="stage 2: fine-tune", disable=not progress):
        network.train()
        freeze_batchnorm(network)
        views = torch.randint(0, train_maps.shape[1], (len(y_train),))
        for batch in torch.randperm(len(y_train)).split(cfg.batch_size):
            maps = train_maps[batch, views[batch]].float()
            loss = F.cross_entropy(
                network.classifier(network.dropout(network.tail(maps))),
                y_train[batch],
                weight=class_weights,
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs_run += 1
        val_loss = F.cross_entropy(validation_logits(network, val_maps), y_val).item()
        if val_loss < best_loss - 1e-4:
            best_loss, best_state, stale = val_loss, copy.deepcopy(network.state_dict()), 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    network.load_state_dict(best_state)
    network.eval()
    timings["finetune_s"] = time.monotonic() - clock - sum(timings.values())

    # 5. Calibrate: temperature, then per-class thresholds for the target precision.
    logits = validation_logits(network, val_maps).numpy()
    labels = y_val.numpy()
    calibration = calibrate(logits, labels, classes, cfg.target_precision)
    probabilities = softmax(logits, calibration.temperature)

    # 6. Evaluate on the validation split.
    evaluation = evaluate(probabilities, labels, classes)
    predicted = [classes[i] for i in probabilities.argmax(axis=1)]

    # 7. Export, and check ONNX Runtime agrees with PyTorch on real validation pictures.
    version = new_version(settings.models_dir)
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.models_dir, prefix=".scratch-") as scratch:
        onnx_path = export_onnx(network, spec.crop, Path(scratch) / "model.onnx")
        parity = check_parity(
            network,
            onnx_path,
            pictures(data.val[:PARITY_IMAGES], spec, settings.max_pixels),
            calibration.temperature,
        )

        # 8. Gate: not worse than the current model on the same pictures and shared classes.
        truth = [e.label for e in data.val]
        before = current_predictions(settings, current, data.val)
        verdict = gate(
            truth, predicted, before, current.classes if current else [], cfg.max_macro_f1_drop
        )
        publishable = verdict.passed or force
        timings["calibrate_export_gate_s"] = time.monotonic() - clock - sum(timings.values())
        timings["total_s"] = time.monotonic() - clock

        # 9. Publish (and switch `current`), or keep the candidate with its report.
        outcome = "published" if publishable else "rejected"
        report = {
            "version": version,
            "created": datetime.now(UTC).isoformat(),
            "parent": current.version if current else None,
            "outcome": outcome
            + (" (forced past the gate)" if force and not verdict.passed else ""),
            "gate": asdict(verdict),
            "data": data_summary(data),
            "metrics": asdict(evaluation),
            "calibration": {
                **asdict(calibration),
                "target_precision": cfg.target_precision,
                "ece_before": expected_calibration_error(softmax(logits, 1.0), labels),
                "ece_after": expected_calibration_error(probabilities, labels),
            },
            "precision_coverage": precision_coverage(probabilities, labels),
            "wrong": wrong_answers(data.val, predicted, probabilities),
            "training": {
                "frozen_features_val_accuracy": stage1_accuracy,
                "epochs_finetuned": epochs_run,
                "best_val_loss": best_loss,
                "onnx_parity_max_diff": parity,
                "timings": timings,
            },
        }
        manifest = {
            "version": version,
            "created": datetime.now(UTC),
            "classes": classes,
            "preprocessing": spec.model_dump(),
            "temperature": calibration.temperature,
            "thresholds": calibration.thresholds,
            "parent": current.version if current else None,
            "training_set_hash": data.fingerprint,
            "expected_review_rate": 1.0 - calibration.expected_auto_share,
            "metrics": {
                "accuracy": evaluation.accuracy,
                "macro_f1": evaluation.macro_f1,
                "expected_auto_share": calibration.expected_auto_share,
                "expected_auto_precision": calibration.expected_auto_precision,
                "val_images": len(data.val),
            },
        }
        publish(
            settings.models_dir,
            onnx_path,
            manifest,
            extra_files=report_files(report, classes, evaluation),
            rejected=not publishable,
            keep=cfg.keep_versions,
        )
    summary = (
        f"{version}: accuracy {evaluation.accuracy:.3f}, macro-F1 {evaluation.macro_f1:.3f}, "
        f"{calibration.expected_auto_share:.0%} auto-sorted "
        f"at {calibration.expected_auto_precision:.1%} precision; "
        f"{verdict.reason}; {timings['total_s']:.1f}s"
    )
    return finish(settings, outcome, version, summary)


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[bool]:
    """Hold an exclusive flock for the block; yields False at once if another process has it.
    The kernel drops the lock when the process dies, so a crash never leaves it stuck."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def finish(settings: Settings, outcome: str, version: str | None, reason: str) -> int:
    """Say how the run ended, on stdout and in the journal (for `sortbox status`)."""
    print(f"train: {outcome}: {reason}")
    with Journal(settings.journal) as journal:
        journal.append([TrainingRun(outcome=outcome, model=version, reason=reason)])  # type: ignore[arg-type]
    return {"published": EXIT_OK, "skipped": EXIT_OK, "rejected": EXIT_NOT_PUBLISHED}.get(
        outcome, EXIT_FAILED
    )


def describe(data: TrainingSet) -> str:
    lines = [
        f"training set: {len(data.train)} train + {len(data.val)} validation pictures, "
        f"{len(data.classes)} classes"
    ]
    lines += [f"  {name:24} {t:5} train {v:5} val" for name, (t, v) in data.counts().items()]
    lines.append(
        "  labels from: "
        + (", ".join(f"{n} {o}" for o, n in sorted(data.origins().items())) or "nothing")
    )
    for what, why in data.excluded:
        lines.append(f"  excluded {what}: {why}")
    return "\n".join(lines)


def freeze_batchnorm(network: torch.nn.Module) -> None:
    """Keep BatchNorm on its ImageNet statistics: small CPU batches would only add noise."""
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


def balanced_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=classes).float().clamp(min=1)
    return counts.sum() / (classes * counts)


def pooled(network: EfficientNetLite0, maps: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return (
        torch.cat([network.tail(m.float()) for m in maps.split(batch)])
        if len(maps)
        else torch.zeros(0, FEATURES)
    )


def validation_logits(network: EfficientNetLite0, maps: torch.Tensor) -> torch.Tensor:
    network.eval()
    with torch.no_grad():
        return network.classifier(pooled(network, maps))


def pictures(examples: list[Example], spec: Preprocessing, max_pixels: int) -> np.ndarray:
    return np.stack([prepare(e.path.read_bytes(), spec, max_pixels) for e in examples])


def _current_manifest(settings: Settings) -> Manifest | None:
    version = current_version(settings.models_dir)
    return read_manifest(settings.models_dir / version) if version else None


def current_predictions(
    settings: Settings, current: Manifest | None, examples: list[Example]
) -> list[str] | None:
    """The current model's answers on the validation pictures, run as the daemon runs it."""
    if current is None:
        return None
    classifier = load_classifier(settings.models_dir / current.version, settings.train.threads)
    spec = classifier.manifest.preprocessing
    answers: list[str] = []
    for start in range(0, len(examples), 32):
        logits = classifier.logits(
            pictures(examples[start : start + 32], spec, settings.max_pixels)
        )
        answers += [current.classes[i] for i in logits.argmax(axis=1)]
    return answers


def data_summary(data: TrainingSet) -> dict[str, Any]:
    return {
        "train": len(data.train),
        "val": len(data.val),
        "counts": data.counts(),
        "origins": data.origins(),
        "excluded": data.excluded,
        "conflicts": data.conflicts,
    }


def wrong_answers(
    examples: list[Example], predicted: list[str], probabilities: np.ndarray
) -> list[dict[str, Any]]:
    return [
        {"path": str(e.path), "true": e.label, "predicted": p, "confidence": float(row.max())}
        for e, p, row in zip(examples, predicted, probabilities, strict=True)
        if p != e.label
    ]
