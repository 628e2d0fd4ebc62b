"""`sortbox train`: the whole recipe, top to bottom.

1. data: labelled folders and the library (the folder is the label), in train / calibration /
   test roles; pictures too poor to judge are measured and listed;
2. the fast model: a linear head on cached frozen features (trainer/fast.py); shipped at
   once, so a user has a working sorter within minutes;
3. the deep model: the last stages fine-tuned on augmented pictures within the time budget,
   until they stop improving (trainer/finetune.py; a run cut short resumes next time);
4. the blend: mixed with the fast model when that calibrates better (trainer/deep.py);
5. each candidate shipped (trainer/ship.py): calibrate → export → INT8 → evaluate → gate →
   publish; the fine-tuned one only if it is more accurate than the fast one on the test
   pictures and auto-sorts at most a few points fewer (trainer/evaluate.py: `falls_short_of`).

Calibration (temperature, thresholds, early stopping, the blend) uses only out-of-sample
predictions; the gate and every reported figure use only the test pictures. Everything
written goes through temp-then-rename.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

import torch
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.journal import Journal, TrainingRun
from sortbox.daemon.sorting.manifest import Manifest, published_versions
from sortbox.trainer.data import TrainingSet, describe, gather
from sortbox.trainer.deep import CHECKPOINT, blend_with_fast, fine_tune, keep_weights
from sortbox.trainer.evaluate import Standing
from sortbox.trainer.fast import CROSS_FIT_FOLDS, FastModel, train_fast_model
from sortbox.trainer.finetune import NoCuda, choose_device
from sortbox.trainer.judgeable import judge_pictures, leave_out
from sortbox.trainer.model import BACKBONES, BackboneMissing, weights_file
from sortbox.trainer.publish import REJECTED_DIR, current_manifest
from sortbox.trainer.report import TrainingFacts
from sortbox.trainer.ship import Candidate, Shipped, ship

EXIT_OK, EXIT_FAILED, EXIT_NOT_PUBLISHED = 0, 1, 3


def run_training(
    settings: Settings,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    drop_classes: bool = False,
) -> int:
    if dry_run:
        return predict_run(settings, drop_classes)
    # one run at a time (the timer and someone at a terminal): the loser changes nothing
    with exclusive(settings.resolved_cache_dir / "train.lock") as held:
        if not held:
            return finish(settings, "skipped", None, "another `sortbox train` is running")
        return train_and_publish(settings, force, progress, drop_classes)


def train_and_publish(
    settings: Settings, force: bool, progress: bool, drop_classes: bool = False
) -> int:
    cfg = settings.train
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    try:
        device = choose_device(cfg.device)
        weights_file(BACKBONES[cfg.backbone])
    except (NoCuda, BackboneMissing) as exc:
        return finish(settings, "failed", None, str(exc))

    # 1. Data: labelled folders + the library, where the folder is the label.
    data = gather(settings)
    print(describe(data))
    current = current_manifest(settings)
    problem = cannot_train(data, current, drop_classes)
    if problem is not None:
        return finish(settings, "failed", None, problem)
    judged = judge_pictures(settings, data, BACKBONES[cfg.backbone].preprocessing)
    labelled, data = data, leave_out(data, judged)
    same_data = current is not None and current.training_set_hash == data.fingerprint
    if same_data and not force and (cfg.finetune_epochs == 0 or fine_tuned_on(settings, data)):
        unchanged = "nothing changed since the current model"
        return finish(settings, "skipped", current.version if current else None, unchanged)
    print(judged.describe(labelled))  # not before a skip: the list would bury its one line

    # 2. The fast model, shipped at once unless the current one was trained on this data.
    fast = train_fast_model(settings, data, device, progress)
    outcomes: list[Shipped] = []
    if not same_data or force:
        outcomes.append(ship(settings, fast_candidate(fast), data, judged, force))
    if cfg.finetune_epochs == 0:
        print("train: no fine-tuned model: the fine-tune is off (train.finetune_epochs = 0)")
        return finish_all(settings, outcomes)

    # 3. The deep model: fine-tune until it stops improving, or the budget pauses it.
    tuned = fine_tune(settings, fast, data, current, progress)
    if tuned.outcome.network is None:
        outcomes.append(Shipped("paused", None, f"fine-tune {tuned.outcome.stop_reason}", None))
        return finish_all(settings, outcomes)

    # 4. The blend with the fast model, then 5. ship it if it passes the gate and the fast
    # model's bar.
    deep = blend_with_fast(settings, tuned.outcome.network, fast, data)
    facts = tuned.facts(device).model_copy(update={"blend_fast_weight": deep.fast_weight})
    bar = fast_standing(settings, outcomes, current, data)
    candidate = Candidate(
        "fine-tuned", deep.model, deep.logits, fast.unknown, facts,
        held_out_pass=fast.held_out_pass, must_beat=bar,
    )  # fmt: skip
    outcomes.append(ship(settings, candidate, data, judged, force))
    if outcomes[-1].outcome == "published" and outcomes[-1].version:
        keep_weights(settings, outcomes[-1].version, tuned.outcome.network)
    with contextlib.suppress(FileNotFoundError):
        (settings.resolved_cache_dir / CHECKPOINT).unlink()  # done: nothing to resume
    return finish_all(settings, outcomes)


def fast_candidate(fast: FastModel) -> Candidate:
    return Candidate(
        kind="fast",
        model=fast.model,
        logits=fast.logits,
        unknown=fast.unknown,
        facts=TrainingFacts(
            seconds=fast.seconds, onnx_parity_max_diff=0.0, cross_fitted_folds=CROSS_FIT_FOLDS
        ),
        cross_fitted=fast.crossed,
        held_out_pass=fast.held_out_pass,
    )


def fast_standing(
    settings: Settings, outcomes: list[Shipped], current: Manifest | None, data: TrainingSet
) -> Standing | None:
    """The fast model's results on the test pictures: judged in this run, or, where this run
    left it as it was (a fine-tune resumed after its budget paused it), the current model's,
    if it was measured on the same pictures for the same promise."""
    judged = next((o.standing for o in outcomes if o.standing is not None), None)
    if judged is not None or current is None:
        return judged
    if current.kind != "fast" or current.training_set_hash != data.fingerprint:
        return None
    other_rate = current.unknown_review_rate not in (None, settings.unknown_review_rate)
    if current.target_precision != settings.target_precision or other_rate:
        return None  # its auto-sorted share answered another promise
    macro_f1, auto_share = current.metrics.get("macro_f1"), current.metrics.get("test_auto_share")
    if macro_f1 is None or auto_share is None:
        return None
    return Standing(float(macro_f1), float(auto_share))


# -- before training: can it, and would it change anything ------------------------------------


def predict_run(settings: Settings, drop_classes: bool) -> int:
    """`train --dry-run`: the training set, and the real run's checks with its exit code,
    touching nothing (#32: it used to say "1 classes" and exit 0 where the run would fail)."""
    data = gather(settings)
    print(describe(data))
    current = current_manifest(settings)
    print(classes_change(current, data))
    problem = cannot_train(data, current, drop_classes)
    if problem is not None:
        print(f"train would stop: {problem}")
        return EXIT_FAILED
    print("train would learn from these pictures, and publish the model if the gate passes it")
    return EXIT_OK


def cannot_train(data: TrainingSet, current: Manifest | None, drop_classes: bool) -> str | None:
    """Why a run cannot train on this data (None: it can). The same checks for a real run and
    a dry run."""
    if len(data.classes) < 2 or not data.calibration or not data.test:
        return "need at least two classes with enough pictures for train, calibration and test"
    dropped = dropped_classes(current, data)
    if dropped and not drop_classes:
        return (
            f"the new model would no longer know {', '.join(dropped)} (no labelled pictures of "
            "them left); label some in their folders, or run `sortbox train --drop-classes` "
            "to let them go"
        )
    return None


def dropped_classes(current: Manifest | None, data: TrainingSet) -> list[str]:
    """Classes a trained current model knows that the new one would not. The default model's
    generic classes are not counted: training your own categories replaces them."""
    if current is None or current.kind == "default":
        return []
    return [name for name in current.classes if name not in data.classes]


def classes_change(current: Manifest | None, data: TrainingSet) -> str:
    if current is None:
        return f"classes: {', '.join(data.classes) or 'none'}"
    if current.kind == "default":
        return (
            f"classes: {', '.join(data.classes) or 'none'}, in place of the default model's "
            f"{len(current.classes)} generic ones"
        )
    dropped = dropped_classes(current, data)
    new = [name for name in data.classes if name not in current.classes]
    words = [f"classes: {', '.join(data.classes) or 'none'}"]
    if new:
        words.append(f"new: {', '.join(new)}")
    if dropped:
        words.append(f"the current model's {', '.join(dropped)} would be dropped")
    return "; ".join(words)


def fine_tuned_on(settings: Settings, data: TrainingSet) -> bool:
    """A fine-tuned model of exactly this data exists, published or refused by the gate."""
    return any(
        manifest.kind == "fine-tuned" and manifest.training_set_hash == data.fingerprint
        for folder in (settings.models_dir, settings.models_dir / REJECTED_DIR)
        for _, manifest in published_versions(folder)
    )


# -- how a run ends ----------------------------------------------------------------------------


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


def finish_all(settings: Settings, outcomes: list[Shipped]) -> int:
    """One journal line for the run: published if any stage was, else the last word."""
    published = [o for o in outcomes if o.outcome == "published"]
    final = published[-1] if published else outcomes[-1]
    # several stages: each says how it ended (the fast model published, the fine-tune refused)
    reason = " | ".join(
        f"{o.outcome}: {o.summary}" if len(outcomes) > 1 else o.summary for o in outcomes
    )
    # each stage said its result as it shipped: several end with which one the daemon runs now
    if len(outcomes) > 1:
        print(f"train: {final.outcome}: {final.version} (each stage above)")
    return finish(settings, final.outcome, final.version, reason, echo=False)


def finish(
    settings: Settings, outcome: str, version: str | None, reason: str, echo: bool = True
) -> int:
    """Say how the run ended, on stdout (`echo`) and in the journal (for `sortbox status`)."""
    if echo:
        print(f"train: {outcome}: {reason}")
    with Journal(settings.journal) as journal:
        journal.append([TrainingRun(outcome=outcome, model=version, reason=reason)])  # type: ignore[arg-type]
    return {"published": EXIT_OK, "skipped": EXIT_OK, "paused": EXIT_OK}.get(
        outcome, EXIT_NOT_PUBLISHED if outcome == "rejected" else EXIT_FAILED
    )
