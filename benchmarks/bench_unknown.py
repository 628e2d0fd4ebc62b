"""Which "unknown" score keeps pictures of no known class out of the class folders?

    python benchmarks/bench_unknown.py clothing-dataset-small [--partitions 6] [--known 6]

Held-out classes: for each partition, `--known` of the ten classes are the library's classes
and the rest are pictures of none of them. The fast model is made as `sortbox train` makes it
(logistic heads on the frozen Lite0 features, through the trainer's feature cache, cross-fitted
on train/ and validation/ of the known classes, their average shipped; the temperature and the
class threshold for the target from their out-of-sample predictions); each unknown score is
fitted on train/ and its threshold sends `--rate` of the known validation/ pictures to review;
measured on test/ of the known classes and on every picture of the held-out ones. Prints per
score: AUROC (known test against unknown), the share of unknown pictures auto-sorted, and the
coverage of known test pictures with and without the unknown check. Then photos of nothing
like the dataset (scikit-image's samples, the test extra, and with `--far FOLDER` every picture
in FOLDER, e.g. Debian's plasma-workspace-wallpapers): how many the check flags, for residual
weights around the shipped one (trainer/unknown.py), with the known coverage each costs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sortbox.daemon.sorting.decide import softmax
from sortbox.trainer.calibrate import calibrate
from sortbox.trainer.fast import cross_fit, fit_head
from sortbox.trainer.unknown import (
    RESIDUAL_WEIGHT,
    knn_score,
    mahalanobis_fit,
    mahalanobis_score,
)

sys.path.insert(0, str(Path(__file__).parent))
from _cds_features import dataset_features

REPO = Path(__file__).resolve().parent.parent
TRAIN, VALIDATION, TEST = 0, 1, 2


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(an unknown picture scores higher than a known one), ties half."""
    scores = np.concatenate([known, unknown])
    ranks = scores.argsort().argsort() + 1.0
    u = ranks[len(known) :].sum() - len(unknown) * (len(unknown) + 1) / 2
    return float(u / (len(known) * len(unknown)))


SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "colorwheel", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page",
    "retina", "rocket", "text",
)  # fmt: skip


def folder_features(folder: Path, cache_dir: Path) -> np.ndarray:
    """Pooled features of every JPEG and PNG below `folder`, one per file."""
    import hashlib
    import os

    from sortbox.trainer.data import Example
    from sortbox.trainer.features import FeatureCache
    from sortbox.trainer.model import imagenet_network

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    examples = [
        Example(p, hashlib.sha256(p.read_bytes()).hexdigest(), "none", "dataset") for p in files
    ]
    cache = FeatureCache(
        cache_dir, imagenet_network("lite0"), os.cpu_count() or 1, torch.device("cpu")
    )
    return cache.features(examples)[:, 0]


def far_out_features(cache_dir: Path) -> np.ndarray:
    """Pooled features of scikit-image's sample photos: pictures of nothing in the dataset."""
    import hashlib
    import os
    import tempfile

    from PIL import Image
    from skimage import data
    from sortbox.trainer.data import Example
    from sortbox.trainer.features import FeatureCache
    from sortbox.trainer.model import imagenet_network

    folder = Path(tempfile.mkdtemp())
    examples = []
    for name in SKIMAGE_PHOTOS:
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).convert("RGB").save(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        examples.append(Example(path, digest, "none", "dataset"))
    cache = FeatureCache(
        cache_dir, imagenet_network("lite0"), os.cpu_count() or 1, torch.device("cpu")
    )
    return cache.features(examples)[:, 0]


def far_out(features, labels, splits, names, far_sets: dict[str, np.ndarray], rate: float) -> None:
    """Photos of nothing like the dataset against a library of 3 classes of 25 photos (as a
    user's first library) and of all 10 classes: how many the check flags."""
    print("\nfar out: " + "; ".join(f"{name}: {len(far)}" for name, far in far_sets.items()))
    for title, chosen, per_class in (("3 classes x 25 photos", ("hat", "pants", "shoes"), 25),
                                     ("10 classes, all of train/", tuple(names), None)):  # fmt: skip
        classes = [names.index(n) for n in chosen]
        pick = lambda c, role: np.flatnonzero((labels == c) & (splits == role))  # noqa: E731
        train = np.concatenate([pick(c, TRAIN)[:per_class] for c in classes])
        cal = np.concatenate([pick(c, VALIDATION) for c in classes])
        y = np.array([classes.index(int(c)) for c in labels[train]])
        bank, bank_labels = features[train].reshape(-1, features.shape[2]), np.repeat(y, 2)
        for label, weight in residual_weights():
            fitted = mahalanobis_fit(bank, bank_labels, len(classes), residual_weight=weight)
            limit = np.quantile(mahalanobis_score(fitted, features[cal][:, 0]), 1 - rate)
            flags = [
                f"{int((mahalanobis_score(fitted, far) > limit).sum())} of {len(far)} {name}"
                for name, far in far_sets.items()
            ]
            print(f"  {title:26} {label:26} flags {', '.join(flags)}")


def note_held_out(
    by_class: dict[int, list[tuple[bool, int]]],
    labels: np.ndarray,
    unknown: np.ndarray,
    auto_sorted: np.ndarray,
    predicted: np.ndarray,
) -> None:
    """Per held-out picture of a partition: auto-sorted (past both checks) or not, and the
    known class the model would file it into."""
    for i in np.flatnonzero(unknown):
        by_class.setdefault(int(labels[i]), []).append((bool(auto_sorted[i]), int(predicted[i])))


def print_held_out(by_class: dict[int, list[tuple[bool, int]]], names: list[str]) -> None:
    """Which held-out classes get past the shipped check, and into which known class: the
    pictures the check misses are of classes a known one looks like."""
    print("\nheld-out classes with the shipped check: auto-sorted, and where most of those went")
    for c in sorted(by_class, key=lambda c: -np.mean([a for a, _ in by_class[c]])):
        taken = [into for auto, into in by_class[c] if auto]
        where = ", ".join(
            f"{names[into]} {taken.count(into) / len(taken):.0%}"
            for into in sorted(set(taken), key=taken.count, reverse=True)[:2]
        )
        share = len(taken) / len(by_class[c])
        print(f"  {names[c]:12} {share:6.1%} of {len(by_class[c]):5}   {where}")


def residual_weights() -> list[tuple[str, float]]:
    """The Mahalanobis score with the part outside its components weighted in at several
    strengths, the shipped one marked."""
    weights = sorted({0.0, 0.1, 0.3, RESIDUAL_WEIGHT, 1.0})
    return [
        (("shipped: " if w == RESIDUAL_WEIGHT else "") + f"64 PCs + rest x{w:g}", w)
        for w in weights
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--known", type=int, default=6)
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--cache", type=Path, default=REPO / ".bench" / "cache")
    parser.add_argument("--far", type=Path, help="a folder of pictures of nothing in the dataset")
    args = parser.parse_args()
    features, labels, splits, names = dataset_features(args.dataset, args.cache)
    plain = features[:, 0]
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    by_class: dict[int, list[tuple[bool, int]]] = {}
    for partition in range(args.partitions):
        known_classes = np.sort(rng.choice(len(names), args.known, replace=False))
        is_known = np.isin(labels, known_classes)
        remap = {int(c): n for n, c in enumerate(known_classes)}
        y = np.array([remap.get(int(c), -1) for c in labels])
        train, cal = is_known & (splits == TRAIN), is_known & (splits == VALIDATION)
        test, unknown = is_known & (splits == TEST), ~is_known & (splits != TRAIN)
        _, l2 = fit_head(
            torch.from_numpy(features[train]),
            torch.from_numpy(y[train]),
            torch.from_numpy(plain[cal]),
            torch.from_numpy(y[cal]),
            args.known,
            False,
        )
        # the fast model as `sortbox train` makes it: cross-fitted, its folds' average head
        crossed = cross_fit(
            {
                "train": torch.from_numpy(features[train]),
                "calibration": torch.from_numpy(features[cal]),
            },
            {"train": y[train], "calibration": y[cal]},
            args.known,
            l2,
            partition,
        )
        with torch.no_grad():
            logits = crossed.head(torch.from_numpy(plain)).numpy().astype(np.float64)
        known_names = [names[c] for c in known_classes]
        calibration = calibrate(crossed.logits, crossed.labels, known_names, args.target)
        threshold = next(iter(calibration.thresholds.values()))
        probabilities = softmax(logits, calibration.temperature)
        confident = probabilities.max(axis=1) >= threshold
        bank = features[train].reshape(-1, features.shape[2])
        bank_labels = np.repeat(y[train], features.shape[1])
        full = mahalanobis_fit(bank, bank_labels, args.known, components=None, residual_weight=0)
        with_rest = {
            label: mahalanobis_score(
                mahalanobis_fit(bank, bank_labels, args.known, residual_weight=weight), plain
            )
            for label, weight in residual_weights()
            if weight > 0
        }
        pca = mahalanobis_fit(bank, bank_labels, args.known, residual_weight=0)
        scores = {
            "max softmax (none)": -probabilities.max(axis=1),
            "max logit": -logits.max(axis=1),
            "energy": -np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) - logits.max(1),
            "mahalanobis 1280-d": mahalanobis_score(full, plain),
            "mahalanobis 64 PCs": mahalanobis_score(pca, plain),
            **with_rest,
            "knn k=1": knn_score(bank, plain, 1),
            "knn k=5": knn_score(bank, plain, 5),
            "knn k=20": knn_score(bank, plain, 20),
        }
        shipped = scores[next(label for label, w in residual_weights() if w == RESIDUAL_WEIGHT)]
        familiar = shipped <= np.quantile(shipped[cal], 1 - args.rate)
        predicted = known_classes[logits.argmax(axis=1)]
        note_held_out(by_class, labels, unknown, confident & familiar, predicted)
        for name, score in scores.items():
            limit = np.quantile(score[cal], 1 - args.rate)
            familiar = score <= limit
            rows.setdefault(name, []).append(
                (
                    auroc(score[test], score[unknown]),
                    float((confident & familiar)[unknown].mean()),
                    float(confident[unknown].mean()),
                    float((confident & familiar)[test].mean()),
                    float(confident[test].mean()),
                )
            )
        print(f"partition {partition}: known {known_names}", file=sys.stderr)
    print(
        f"{args.partitions} partitions, {args.known} known classes, unknown threshold at "
        f"{args.rate:.0%} of known calibration pictures, class threshold for {args.target}"
    )
    print(
        f"{'score':28} {'AUROC':>6} {'unknown auto-sorted':>20} {'(no check)':>11} "
        f"{'known coverage':>15} {'(no check)':>11} {'cost':>6}"
    )
    for name, values in rows.items():
        a, u, u0, k, k0 = np.mean(values, axis=0)
        print(
            f"{name:28} {a:6.3f} {u:20.1%} {u0:11.1%} {k:15.1%} {k0:11.1%} {100 * (k0 - k):5.1f}p"
        )
    print_held_out(by_class, names)
    far_sets = {"scikit-image photos": far_out_features(args.cache)}
    if args.far is not None:
        far_sets[args.far.name] = folder_features(args.far, args.cache)
    far_out(features, labels, splits, names, far_sets, args.rate)


if __name__ == "__main__":
    main()
