"""Would the test pictures, once the gate has judged a model, make a better fast model?

    python benchmarks/bench_use_labelled.py clothing-dataset-small [--resplits 10]

Issue #33 asks to "use what is labelled": 15% of a user's labelled pictures are test pictures
that never reach the model. Every picture of the dataset is split again, per class, into four
roles: train 55%, calibration 15%, test 15%, and unseen 15% that stands in for the pictures a
user sorts later. Two fast models are made as `sortbox train` makes one (frozen Lite0
features through the trainer's cache, the head's L2 strength chosen on the calibration
pictures, four heads cross-fitted, their average shipped, thresholds and the unknown check
from the folds' out-of-sample predictions):
  * today: cross-fitted over train + calibration;
  * with the test pictures: cross-fitted over train + calibration + test (what the trainer
    would ship after the gate had judged the first on the test pictures).
Both are measured on the unseen pictures: accuracy, and at each target the share auto-sorted
and its precision. Prints each resplit and the mean difference with its spread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sortbox.trainer.fast import cross_fit, fit_unknown
from sortbox.trainer.unknown import mahalanobis_score

sys.path.insert(0, str(Path(__file__).parent))
from _cds_features import dataset_features
from bench_promise import by_role, head_on_train, measure

REPO = Path(__file__).resolve().parent.parent
FRACTIONS = (0.55, 0.15, 0.15, 0.15)
ROLES = ("train", "calibration", "test", "unseen")
WAYS = ("today", "with test")


def resplit(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A role index per picture, the fractions kept in each class."""
    roles = np.zeros(len(labels), dtype=int)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        edges = np.round(np.cumsum(FRACTIONS) * len(members)).astype(int)
        for role, (start, end) in enumerate(zip([0, *edges[:-1]], edges, strict=True)):
            roles[members[start:end]] = role
    return roles


def one_way(
    features: dict[str, torch.Tensor],
    labels: dict[str, np.ndarray],
    classes: int,
    l2: float,
    seed: int,
) -> tuple[tuple, tuple, np.ndarray, float]:
    """(evidence, unseen, shipped check's calibration scores, unseen accuracy) for a fast
    model cross-fitted over features["train"] + features["calibration"]."""
    scorer = fit_unknown(features["train"], labels["train"], classes)
    crossed = cross_fit(features, labels, classes, l2, seed=seed)
    with torch.no_grad():
        logits = crossed.head(features["unseen"][:, 0]).numpy()
    unseen = (logits, labels["unseen"], mahalanobis_score(scorer, features["unseen"][:, 0].numpy()))
    check = mahalanobis_score(scorer, features["calibration"][:, 0].numpy())
    accuracy = float((logits.argmax(1) == labels["unseen"]).mean())
    return (crossed.logits, crossed.labels, crossed.unknown), unseen, check, accuracy


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
    rows: dict[str, list[list[float]]] = {way: [] for way in WAYS}
    for n in range(args.resplits):
        roles = resplit(all_labels, rng)
        features, labels = by_role(all_features, all_labels, roles, ROLES)
        _, l2 = head_on_train(features, labels, len(names))
        joined = {
            **features,
            "calibration": torch.cat([features["calibration"], features["test"]]),
        }
        joined_labels = {
            **labels,
            "calibration": np.concatenate([labels["calibration"], labels["test"]]),
        }
        line = [f"resplit {n}:"]
        for way, (f, y) in zip(WAYS, ((features, labels), (joined, joined_labels)), strict=True):
            evidence, unseen, check, accuracy = one_way(f, y, len(names), l2, seed=n)
            row = [accuracy]
            for target in args.targets:
                row += measure(evidence, unseen, names, target, check)
            rows[way].append(row)
            figures = ", ".join(
                f"{t}: {row[1 + 2 * i + 1]:.1%} at {row[1 + 2 * i]:.1%}"
                for i, t in enumerate(args.targets)
            )
            line.append(f"{way} accuracy {accuracy:.3f} ({figures})")
        print(" ".join(line), flush=True)

    today, joined_rows = np.array(rows[WAYS[0]]), np.array(rows[WAYS[1]])
    gain = joined_rows - today
    print(f"\n{args.resplits} resplits; {len(labels['unseen'])} unseen pictures each")
    print(
        f"accuracy: today {today[:, 0].mean():.4f}, with test {joined_rows[:, 0].mean():.4f}; "
        f"gain {gain[:, 0].mean():+.4f} (sd {gain[:, 0].std(ddof=1):.4f}, "
        f"better in {(gain[:, 0] > 0).sum()} of {len(gain)})"
    )
    for i, target in enumerate(args.targets):
        p, c = 1 + 2 * i, 2 + 2 * i
        for way, table in zip(WAYS, (today, joined_rows), strict=True):
            held = int((table[:, p] >= target).sum())
            print(
                f"target {target}, {way:9}: precision >= target in {held} of {len(table)} "
                f"(lowest {table[:, p].min():.1%}); auto-sorted {table[:, c].mean():.1%}"
            )
        print(f"  coverage gain {gain[:, c].mean():+.2%} (sd {gain[:, c].std(ddof=1):.2%})")


if __name__ == "__main__":
    main()
