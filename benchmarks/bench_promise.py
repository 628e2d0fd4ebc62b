"""Does the precision sortbox promises hold on pictures it has never seen?

    python benchmarks/bench_promise.py clothing-dataset-small [--resplits 10]

Every picture of the dataset (train/, validation/ and test/ together) is split again, at
random and per class, into sortbox's roles (70% train, 15% calibration, 15% test) for each
resplit. The fast model is made as `sortbox train` makes it, on the frozen Lite0 features
through the trainer's feature cache: its head's L2 strength chosen on the calibration
pictures, four heads cross-fitted on train and calibration pictures (their average ships),
thresholds (and the unknown check, at its default rate, set on the shipped check's scores of
the calibration pictures, the folds' rescaled onto it) from their out-of-sample predictions. The precision of what
it auto-sorts is measured on the test pictures. For comparison, the same with thresholds from
the calibration pictures alone and a head fitted on train (as the fine-tuned model is
calibrated). The promise is "at least `target` right, measured on 400 or more auto-sorted
pictures, with 90% confidence": the check is that the precision measured on the test pictures
(about 400 auto-sorted) reaches the target in at least 9 resplits of 10. Prints each resplit and a summary per target, with the
share of test pictures auto-sorted (coverage).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.decide import softmax
from sortbox.trainer.calibrate import calibrate
from sortbox.trainer.fast import cross_fit, fit_head, fit_unknown
from sortbox.trainer.unknown import mahalanobis_score

sys.path.insert(0, str(Path(__file__).parent))
from _cds_features import dataset_features

REPO = Path(__file__).resolve().parent.parent
FRACTIONS = (0.70, 0.15, 0.15)
ROLES = ("train", "calibration", "test")
REVIEW_RATE = Settings.model_fields["unknown_review_rate"].default


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


def by_role(
    all_features: np.ndarray, all_labels: np.ndarray, roles: np.ndarray, names: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Features and labels of each role of a resplit (`roles`: a role index per picture)."""
    features = {r: torch.from_numpy(all_features[roles == i]) for i, r in enumerate(names)}
    labels = {r: all_labels[roles == i] for i, r in enumerate(names)}
    return features, labels


def head_on_train(
    features: dict[str, torch.Tensor], labels: dict[str, np.ndarray], classes: int
) -> tuple[torch.nn.Linear, float]:
    """A head fitted on the train pictures, its L2 strength chosen on the calibration ones,
    as `sortbox train` chooses it."""
    return fit_head(
        features["train"],
        torch.from_numpy(labels["train"]),
        features["calibration"][:, 0],
        torch.from_numpy(labels["calibration"]),
        classes,
        False,
    )


def measure(
    evidence: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    names: list[str],
    target: float,
    check_scores: np.ndarray | None = None,
) -> tuple[float, float]:
    """(precision, coverage) on the test pictures, calibrated on `evidence`; each a tuple of
    logits, labels and unknown scores. `check_scores`: the shipped check's scores on the
    calibration pictures, where `evidence` holds the folds' (as the trainer calibrates)."""
    calibration = calibrate(
        evidence[0], evidence[1], names, target, evidence[2], REVIEW_RATE, check_scores
    )
    probabilities = softmax(test[0], calibration.temperature)
    predicted = probabilities.argmax(axis=1)
    threshold = np.array([calibration.thresholds[name] for name in names])[predicted]
    auto = probabilities.max(axis=1) >= threshold
    if calibration.unknown_threshold is not None:
        auto &= test[2] <= calibration.unknown_threshold
    right = predicted[auto] == test[1][auto]
    return (float(right.mean()) if auto.any() else 1.0), float(auto.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--resplits", type=int, default=10)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.97, 0.98])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=REPO / ".bench" / "cache")
    args = parser.parse_args()
    all_features, all_labels, _, names = dataset_features(args.dataset, args.cache)
    rng = np.random.default_rng(args.seed)
    ways = ("cross-fitted (fast model)", "calibration pictures only")
    results: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for n in range(args.resplits):
        roles = resplit(all_labels, rng)
        features, labels = by_role(all_features, all_labels, roles, ROLES)
        train_head, l2 = head_on_train(features, labels, len(names))
        scorer = fit_unknown(features["train"], labels["train"], len(names))
        crossed = cross_fit(features, labels, len(names), l2, seed=n)
        head = crossed.head
        unknown = {r: mahalanobis_score(scorer, features[r][:, 0].numpy()) for r in ROLES}
        with torch.no_grad():
            test_logits = head(features["test"][:, 0]).numpy()
            alone = {r: train_head(features[r][:, 0]).numpy() for r in ("calibration", "test")}
        accuracy = float((test_logits.argmax(1) == labels["test"]).mean())
        line = [f"resplit {n}: accuracy {accuracy:.3f}"]
        for target in args.targets:
            for way in ways:
                check_scores = None
                if way == ways[0]:
                    evidence = (crossed.logits, crossed.labels, crossed.unknown)
                    test = (test_logits, labels["test"], unknown["test"])
                    check_scores = unknown["calibration"]
                else:
                    evidence = (alone["calibration"], labels["calibration"], unknown["calibration"])
                    test = (alone["test"], labels["test"], unknown["test"])
                precision, coverage = measure(evidence, test, names, target, check_scores)
                results.setdefault((way, target), []).append((precision, coverage))
            p, c = results[(ways[0], target)][-1]
            line.append(f"{target}: {p:.1%} precise, {c:.1%} auto-sorted")
        print("; ".join(line), flush=True)
    print(
        f"\n{args.resplits} resplits; {len(labels['calibration'])} calibration and "
        f"{len(labels['test'])} test pictures each; unknown check at {REVIEW_RATE:.0%}"
    )
    for (way, target), rows in results.items():
        precision, coverage = np.array(rows).T
        held = int((precision >= target).sum())
        print(
            f"target {target}, {way:26}: precision >= target in {held} of {len(rows)} "
            f"(median {np.median(precision):.1%}, lowest {precision.min():.1%}); "
            f"auto-sorted {coverage.mean():.1%} on average "
            f"({coverage.min():.1%} to {coverage.max():.1%})"
        )


if __name__ == "__main__":
    main()
