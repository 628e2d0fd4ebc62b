"""Benchmark the trainer on the full clothing-dataset-small, with its official split.

    git clone https://github.com/alexeygrigorev/clothing-dataset-small
    python benchmarks/bench_train.py clothing-dataset-small [--backbone lite0] [--budget-minutes 60]
                                     [--seed 0] [--no-retrain]

The dataset's train/ folder (less 10 pictures per class, held back to arrive later) is the
labelled data, validation/ the calibration split and test/ the test split: sortbox keeps a
dataset's own split. Prints, each next to a plain logistic regression on frozen features
measured in the same run (L2 strength chosen on validation/, thresholds calibrated there):
test accuracy and macro-F1, the share auto-sorted at the calibrated thresholds on test/ and
its precision (95% Wilson intervals), and the wall time of the fast model, of the fine-tune,
and of a retrain after 20 corrections made as a user makes them (moving files in the library).
Needs the trainer extra.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SORTBOX = [sys.executable, "-m", "sortbox.daemon.cli"]
HELD_BACK_PER_CLASS = 10
CORRECTIONS = 20
TARGET = 0.97


def sortbox(home: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run(
        [*SORTBOX, *args, "--config", str(home / "config.toml")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode not in (0, 3):
        raise SystemExit(
            f"sortbox {args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return time.monotonic() - started, result


def reports(home: Path) -> dict[str, dict]:
    """The newest report of each kind (fast, fine-tuned), published or refused."""
    found: dict[str, dict] = {}
    for manifest in sorted(
        (home / "models").glob("**/report.json"), key=lambda p: p.stat().st_mtime
    ):
        report = json.loads(manifest.read_text())
        found[report["kind"]] = report
    return found


def line(title: str, accuracy: float, macro_f1: float, auto: dict) -> str:
    share, precision = auto["share_interval"], auto["precision_interval"]
    return (
        f"  {title:34} accuracy {accuracy:.3f}  macro-F1 {macro_f1:.3f}  "
        f"auto-sorted {auto['share']:6.1%} [{share[0]:.1%}, {share[1]:.1%}] "
        f"at precision {auto['precision']:6.1%} [{precision[0]:.1%}, {precision[1]:.1%}]"
    )


def from_report(title: str, report: dict) -> str:
    m = report["metrics"]
    return line(
        f"{title} ({report['outcome']})", m["accuracy"], m["macro_f1"], report["test_auto_sorted"]
    )


def baseline(home: Path, dataset: Path) -> tuple[str, float]:
    """Multinomial logistic regression on frozen pooled features of the plain picture: the
    classic transfer-learning baseline. L2 chosen on validation/, temperature and thresholds
    calibrated there by sortbox's own calibration, measured on test/."""
    import torch
    from sortbox.daemon.settings import load_settings
    from sortbox.daemon.sorting.decide import softmax
    from sortbox.trainer.calibrate import calibrate
    from sortbox.trainer.data import gather
    from sortbox.trainer.evaluate import evaluate
    from sortbox.trainer.fast import HEAD_L2, logistic_regression
    from sortbox.trainer.features import FeatureCache
    from sortbox.trainer.model import imagenet_network
    from sortbox.trainer.ship import auto_sorted

    settings = load_settings(home / "config.toml")
    data = gather(settings)
    network = imagenet_network(settings.train.backbone, settings.train.trainable_stages)
    cache = FeatureCache(
        settings.resolved_cache_dir, network, os.cpu_count() or 1, torch.device("cpu")
    )
    x = {
        r: torch.from_numpy(cache.features(data.role(r))[:, 0])
        for r in ("train", "calibration", "test")
    }
    y = {r: torch.tensor([data.classes.index(e.label) for e in data.role(r)]) for r in x}

    classes = len(data.classes)
    heads = {l2: logistic_regression(x["train"], y["train"], classes, l2) for l2 in HEAD_L2}
    with torch.no_grad():
        best = max(
            heads,
            key=lambda l2: (
                (heads[l2](x["calibration"]).argmax(1) == y["calibration"]).float().mean().item()
            ),
        )
        logits = {r: heads[best](x[r]).numpy() for r in ("calibration", "test")}
    calibration = calibrate(logits["calibration"], y["calibration"].numpy(), data.classes, TARGET)
    probabilities = softmax(logits["test"], calibration.temperature)
    evaluation = evaluate(probabilities, y["test"].numpy(), data.classes)
    auto = auto_sorted(
        probabilities, y["test"].numpy(), calibration.thresholds, data.classes
    ).model_dump()
    return line(
        f"logistic regression (L2 {best:g})", evaluation.accuracy, evaluation.macro_f1, auto
    ), evaluation.accuracy


def correct_like_a_user(home: Path, limit: int) -> int:
    """Move pictures the model sent to review or to the wrong folder into the right one."""
    events = [json.loads(row) for row in (home / "journal.jsonl").read_text().splitlines()]
    made = 0
    for event in events:
        if made == limit or event.get("event") not in ("sorted", "review"):
            continue
        truth = event["src"].split("/", 1)[0]
        placed = home / "library" / event["dest"]
        if event["dest"].split("/", 1)[0] != truth and placed.exists():
            (home / "library" / truth).mkdir(exist_ok=True)
            placed.rename(home / "library" / truth / placed.name)
            made += 1
    return made


def prepare(home: Path, dataset: Path, backbone: str, budget: float, seed: int) -> None:
    shutil.rmtree(home, ignore_errors=True)
    for split in ("train", "validation", "test"):
        for folder in sorted((dataset / split).iterdir()):
            photos = sorted(folder.iterdir())
            held = photos[:HELD_BACK_PER_CLASS] if split == "train" else []
            (home / "dataset" / split / folder.name).mkdir(parents=True)
            for photo in photos:
                target = home / ("arriving" if photo in held else f"dataset/{split}") / folder.name
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(photo, target / photo.name)
    (home / "config.toml").write_text(
        'inbox = "inbox"\nlibrary = "library"\njournal = "journal.jsonl"\n'
        f'models_dir = "models"\ndataset = "dataset"\ntarget_precision = {TARGET}\n'
        "create_folders = true\n"
        f'[train]\nbackbone = "{backbone}"\nbudget_minutes = {budget}\nseed = {seed}\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "dataset", type=Path, help="clothing-dataset-small (train/, validation/, test/)"
    )
    parser.add_argument("--backbone", default="lite0", choices=["lite0", "lite2"])
    parser.add_argument("--budget-minutes", type=float, default=60.0)
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "train")
    parser.add_argument("--seed", type=int, default=0, help="train.seed: the fine-tune's order")
    parser.add_argument(
        "--no-retrain", action="store_true", help="stop after the first training (no corrections)"
    )
    args = parser.parse_args()
    home = args.workdir.absolute()
    prepare(home, args.dataset.absolute(), args.backbone, args.budget_minutes, args.seed)
    print(
        f"machine: {os.cpu_count()} CPUs; backbone {args.backbone}; budget {args.budget_minutes:g} min; "
        f"seed {args.seed}; target precision {TARGET}; cold caches\n"
    )

    seconds, first = sortbox(home, "train")
    print(first.stdout.splitlines()[0])
    made = reports(home)
    fast, deep = made["fast"], made.get("fine-tuned")
    baseline_line, baseline_accuracy = baseline(home, args.dataset)
    print("\non the official test split (372 pictures; nothing is tuned on them):")
    print(baseline_line)
    print(from_report("fast model (head on frozen features)", fast))
    if deep:
        print(from_report("fine-tuned model", deep))
        gain = deep["metrics"]["accuracy"] - baseline_accuracy
        print(f"  fine-tuned over the logistic regression: {100 * gain:+.1f} points of accuracy")
    print("\nwall time, first training (cold feature cache):")
    print(
        f"  fast model published after {fast['training']['seconds']:.0f} s (features, head, calibration, export, gate)"
    )
    if deep:
        t = deep["training"]
        print(
            f"  fine-tune {t['seconds'] / 60:.1f} min on {t['device']}: {t['epochs_run']} epochs "
            f"(planned {t['planned_epochs']}, best {t['best_epoch']}); blended with the fast "
            f"model at weight {t.get('blend_fast_weight', 0.0):g}; stopped: {t.get('stop_reason')}"
        )
    print(f"  whole `sortbox train`: {seconds / 60:.1f} min")
    if args.no_retrain:
        return

    sortbox(home, "sort", str(home / "arriving"))
    corrections = correct_like_a_user(home, CORRECTIONS)
    seconds, again = sortbox(home, "train")
    print(f"\nretrain after {corrections} corrections: {seconds / 60:.1f} min")
    for row in again.stdout.splitlines():
        if row.startswith("train: ") and "model" in row and " | " not in row:
            print(f"  {row}")


if __name__ == "__main__":
    main()
