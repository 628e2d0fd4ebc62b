"""Does the precision sortbox promises hold on pictures it has never seen?

    python benchmarks/bench_promise.py clothing-dataset-small [--resplits 10]

Every picture of the dataset (train/, validation/ and test/ together) is split again, at
random and per class, into sortbox's roles (70% train, 15% calibration, 15% test) for each
resplit. The fast model (sortbox's logistic head on the frozen Lite0 features, through the
trainer's feature cache) is fitted on train, calibrated by sortbox's own calibration on the
calibration pictures, and the precision of what it auto-sorts is measured on the test ones.
The promise is "at least `target` with 90% confidence": it holds if the measured precision is
at least the target in at least 9 resplits of 10. Prints each resplit and the summary, per
target, with the share auto-sorted (coverage).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sortbox.daemon.decide import softmax
from sortbox.trainer.calibrate import calibrate
from sortbox.trainer.train import fit_head

sys.path.insert(0, str(Path(__file__).parent))
from _cds_features import dataset_features

REPO = Path(__file__).resolve().parent.parent
FRACTIONS = (0.70, 0.15, 0.15)


def resplit(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A role per picture (0 train, 1 calibration, 2 test), the fractions kept in each class."""
    roles = np.zeros(len(labels), dtype=int)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        calibration = round(FRACTIONS[1] * len(members))
        test = round(FRACTIONS[2] * len(members))
        roles[members[:calibration]] = 1
        roles[members[calibration : calibration + test]] = 2
    return roles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--resplits", type=int, default=10)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.97, 0.98])
    parser.add_argument("--cache", type=Path, default=REPO / ".bench" / "cache")
    args = parser.parse_args()
    features, labels, _, names = dataset_features(args.dataset, args.cache)
    plain = features[:, 0]
    rng = np.random.default_rng(0)
    results: dict[float, list[tuple[float, float, float]]] = {t: [] for t in args.targets}
    for n in range(args.resplits):
        roles = resplit(labels, rng)
        train, cal, test = (roles == r for r in range(3))
        head = fit_head(
            torch.from_numpy(features[train]),
            torch.from_numpy(labels[train]),
            torch.from_numpy(plain[cal]),
            torch.from_numpy(labels[cal]),
            len(names),
            False,
        )
        with torch.no_grad():
            logits = head(torch.from_numpy(plain)).numpy().astype(np.float64)
        accuracy = float((logits[test].argmax(1) == labels[test]).mean())
        line = [f"resplit {n}: accuracy {accuracy:.3f}"]
        for target in args.targets:
            calibration = calibrate(logits[cal], labels[cal], names, target)
            probabilities = softmax(logits[test], calibration.temperature)
            predicted = probabilities.argmax(axis=1)
            thresholds = np.array([calibration.thresholds[name] for name in names])
            auto = probabilities.max(axis=1) >= thresholds[predicted]
            precision = float((predicted[auto] == labels[test][auto]).mean()) if auto.any() else 1.0
            results[target].append((precision, float(auto.mean()), float(thresholds.max())))
            line.append(f"{target}: {precision:.1%} precise, {auto.mean():.1%} auto-sorted")
        print("; ".join(line), flush=True)
    print(
        f"\n{args.resplits} resplits, {int(cal.sum())} calibration, {int(test.sum())} test pictures"
    )
    for target, rows in results.items():
        precision, coverage, _ = np.array(rows).T
        held = int((precision >= target).sum())
        print(
            f"target {target}: precision >= target in {held} of {len(rows)} "
            f"(median {np.median(precision):.1%}, lowest {precision.min():.1%}); "
            f"auto-sorted {coverage.mean():.1%} on average ({coverage.min():.1%}-{coverage.max():.1%})"
        )


if __name__ == "__main__":
    main()
