"""Benchmark the trainer on clothing10: quality at the calibrated thresholds, and wall time of a
first training (cold feature cache) and of a retrain after 20 corrections.

    python benchmarks/bench_train.py [--workdir .bench/train]

110 photos per class are the labelled dataset (split ~70/30 by content hash, so the split is
fixed from run to run); the other 10 per class arrive later through `sortbox sort`, and the
ones the model sent to review or got wrong are corrected by moving them to the right folder,
as a user would, until 20 corrections are made. Then `sortbox train` runs again.
Prints the frozen-feature logistic regression (stage 1) beside the fine-tuned model, as the
baseline to beat. Needs the trainer extra.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOTHING10 = REPO.parent / "shared" / "data" / "clothing10"
SORTBOX = [sys.executable, "-m", "daemon.cli"]
LABELLED_PER_CLASS = 110
CORRECTIONS = 20


def sortbox(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SORTBOX, *args, "--config", str(home / "config.toml")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip


def timed_train(home: Path) -> tuple[float, dict]:
    started = time.monotonic()
    result = sortbox(home, "train", "--force")
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"train failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    current = (home / "models" / "current").resolve()
    return elapsed, json.loads((current / "report.json").read_text())


def describe(title: str, seconds: float, report: dict) -> str:
    metrics, cal, training = report["metrics"], report["calibration"], report["training"]
    return (
        f"{title}\n"
        f"  wall time {seconds:.1f} s  ({', '.join(f'{k} {v:.1f}' for k, v in training['timings'].items())})\n"
        f"  data: {report['data']['train']} train / {report['data']['val']} validation pictures; "
        f"labels from {report['data']['origins']}\n"
        f"  validation accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}  "
        f"(logistic regression on frozen features: accuracy {training['frozen_features_val_accuracy']:.3f})\n"
        f"  at the calibrated thresholds: {cal['expected_auto_share']:.1%} auto-sorted, "
        f"precision {cal['expected_auto_precision']:.1%} (target {cal['target_precision']})\n"
        f"  temperature {cal['temperature']:.2f}; ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}; "
        f"ONNX parity {training['onnx_parity_max_diff']:.1e}"
    )


def unseen_pictures(home: Path) -> str:
    """The honest check: pictures used for neither training nor calibration, sorted by the
    daemon's own pipeline (`sortbox sort`)."""
    events = [json.loads(line) for line in (home / "journal.jsonl").read_text().splitlines()]
    placed = [e for e in events if e.get("event") in ("sorted", "review")]
    auto = [e for e in placed if e["event"] == "sorted"]
    right = [e for e in auto if e["dest"].split("/", 1)[0] == e["src"].split("/", 1)[0]]
    top1 = [e for e in placed if e["label"] == e["src"].split("/", 1)[0]]
    return (
        f"  {len(placed)} unseen pictures through `sortbox sort`: accuracy {len(top1) / len(placed):.3f}; "
        f"{len(auto) / len(placed):.1%} auto-sorted at {len(right) / max(1, len(auto)):.1%} precision"
    )


def correct_like_a_user(home: Path, limit: int) -> int:
    """Move pictures the model sent to review or to the wrong folder into the right one."""
    events = [json.loads(line) for line in (home / "journal.jsonl").read_text().splitlines()]
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "train")
    args = parser.parse_args()
    home = args.workdir.absolute()
    shutil.rmtree(home, ignore_errors=True)
    (home / "dataset").mkdir(parents=True)
    arriving = home / "arriving"
    for folder in sorted(p for p in CLOTHING10.iterdir() if p.is_dir()):
        photos = sorted(folder.iterdir())
        shutil.copytree(
            folder,
            home / "dataset" / folder.name,
            ignore=lambda d, names, keep=photos[:LABELLED_PER_CLASS]: [
                n for n in names if Path(d, n) not in keep
            ],
        )
        (arriving / folder.name).mkdir(parents=True)
        for photo in photos[LABELLED_PER_CLASS:]:
            shutil.copy(photo, arriving / folder.name / photo.name)
    (home / "config.toml").write_text(
        'inbox = "inbox"\nlibrary = "library"\njournal = "journal.jsonl"\n'
        'models_dir = "models"\ndataset = "dataset"\n'
    )

    print("machine: 2 CPUs; default training settings from config.toml; cold feature cache\n")
    seconds, report = timed_train(home)
    print(describe("first training", seconds, report))

    sorted_run = sortbox(home, "sort", str(arriving))
    if sorted_run.returncode != 0:
        raise SystemExit(sorted_run.stderr)
    print(unseen_pictures(home))
    made = correct_like_a_user(home, CORRECTIONS)
    seconds, report = timed_train(home)
    print(describe(f"\nretrain after {made} corrections (warm feature cache)", seconds, report))


if __name__ == "__main__":
    main()
