"""How unlike every known class a picture is: the "unknown" score (issue #33).

Measured on held-out classes of clothing-dataset-small (benchmarks/bench_unknown.py): the
energy score and max-logit, the Mahalanobis distance to the nearest class mean with one shared
covariance (Lee et al., 2018), and the distance to the k-th nearest training feature after L2
normalisation (Sun et al., 2022). On all 1280 dimensions the Mahalanobis distance did worst
(the covariance of a few thousand pictures is noise in most of them); on the 64 principal
components of the L2-normalised pooled features it kept the most pictures of held-out classes
out of the class folders for the coverage it cost. But a picture of nothing like the training
set (a cat in a library of clothes) can lie mostly outside those 64 components, where the
projection cannot see it: trained on 25 photos each of hats, trousers and shoes, the 64
components flagged 5 of 19 scikit-image photos, and adding the part of the feature outside
them (weighted by RESIDUAL_WEIGHT, relative to the training pictures' mean) flagged them all.
The weight was 0.1 until a user's library of all ten clothing classes auto-sorted a retina
photo as a hat: in such a library 0.1 flags 6 of 18 scikit-image photos and 117 of 215 KDE
wallpaper files, 0.5 flags them all for 1.2 more points of known pictures sent to review
(0.3 misses 2 photos for 0.1 point), and held-out clothing classes fare the same (32.0% auto-
sorted against 31.8%; benchmarks/bench_unknown.py, docs/benchmarks.md).
That is the score that ships:

    score = min over classes of |whitened projection - class centre|^2 / COMPONENTS
            + RESIDUAL_WEIGHT * |part outside the components|^2 / its training mean

It ships inside the ONNX graph as a second output (model.WithUnknown), so the daemon,
`sortbox sort`, Ray and `explain` all get it from the model: 1280 x 64 axes, a 64 x 64
whitening, a mean and a centre per class, about 400 KB. Higher means more unlike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

COMPONENTS = 64
SHRINKAGE = 0.1  # of the covariance in the components towards a scaled identity
RESIDUAL_WEIGHT = 0.5


@dataclass(frozen=True)
class Mahalanobis:
    mean: np.ndarray  # features: of the normalised training features
    axes: np.ndarray  # features x components, orthonormal
    whiten: np.ndarray  # components x components: L with L @ L.T the shrunk precision
    centres: np.ndarray  # classes x components, whitened
    residual_scale: float  # RESIDUAL_WEIGHT / the training pictures' mean squared residual


def normalised(features: np.ndarray) -> np.ndarray:
    x = features.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mahalanobis_fit(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    components: int | None = COMPONENTS,
    residual_weight: float = RESIDUAL_WEIGHT,
) -> Mahalanobis:
    """From training features (N x FEATURES, every view a row) and their class indices.
    `components=None`: on all dimensions, as Lee et al. (for the benchmark)."""
    x = normalised(features)
    mean = x.mean(axis=0)
    if components is None:
        axes = np.eye(x.shape[1])
    else:
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        axes = vt[: min(components, len(vt))].T
    z = (x - mean) @ axes
    present = [c for c in range(classes) if (labels == c).any()]
    means = np.zeros((classes, z.shape[1]))
    means[present] = np.stack([z[labels == c].mean(axis=0) for c in present])
    centred = z - means[labels]
    covariance = centred.T @ centred / max(1, len(z) - len(present))
    scale = np.trace(covariance) / len(covariance)
    shrunk = (1 - SHRINKAGE) * covariance + SHRINKAGE * scale * np.eye(len(covariance))
    whiten = np.linalg.cholesky(np.linalg.inv(shrunk))
    # a class without training pictures has no centre: far away, so it is never the nearest
    centres = np.where(np.isin(np.arange(classes), present)[:, None], means @ whiten, 1e6)
    residual = ((x - mean) ** 2).sum(axis=1) - (z**2).sum(axis=1)
    return Mahalanobis(
        mean, axes, whiten, centres, residual_weight / max(float(residual.mean()), 1e-12)
    )


def mahalanobis_score(fitted: Mahalanobis, features: np.ndarray) -> np.ndarray:
    centred = normalised(features) - fitted.mean
    z = centred @ fitted.axes
    nearest = ((z @ fitted.whiten)[:, None, :] - fitted.centres[None]) ** 2
    residual = (centred**2).sum(axis=1) - (z**2).sum(axis=1)
    return nearest.sum(axis=2).min(axis=1) / z.shape[1] + fitted.residual_scale * residual


def knn_score(bank: np.ndarray, features: np.ndarray, k: int) -> np.ndarray:
    """1 - the cosine similarity of the k-th nearest feature in the bank (the benchmark's)."""
    similarity = normalised(features) @ normalised(bank).T
    return 1.0 - (-np.partition(-similarity, k - 1, axis=1)[:, k - 1])


def unknown_threshold(calibration_scores: np.ndarray, review_rate: float) -> float | None:
    """The score above which a picture is "unlike any class": a split-conformal quantile of the
    known calibration pictures' scores, so at most `review_rate` of known pictures exceed it in
    expectation. With fewer calibration pictures than that quantile needs (19 at 5%), the
    largest of their scores: then 1/(n + 1) of known pictures may exceed it, a little more
    than asked, and a picture far from every class (a cat in a clothes library) still does.
    None (no check) without calibration pictures or with a rate of 0."""
    n = len(calibration_scores)
    if review_rate <= 0 or n == 0:
        return None
    rank = min(n, math.ceil((n + 1) * (1 - review_rate)))
    return float(np.sort(calibration_scores)[rank - 1])


class UnknownScore(nn.Module):
    """`mahalanobis_score` in PyTorch, for the ONNX graph: pooled features -> N scores."""

    def __init__(self, fitted: Mahalanobis) -> None:
        super().__init__()
        for name in ("mean", "axes", "whiten", "centres"):
            value = getattr(fitted, name).astype(np.float32)
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)))
        self.residual_scale = float(fitted.residual_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        centred = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12) - self.mean
        z = centred @ self.axes
        nearest = ((z @ self.whiten)[:, None, :] - self.centres[None]).square().sum(dim=2)
        residual = centred.square().sum(dim=1) - z.square().sum(dim=1)
        return nearest.amin(dim=1) / z.shape[1] + self.residual_scale * residual


def held_out_class_pass_share(
    train: np.ndarray,
    train_labels: np.ndarray,
    calibration: np.ndarray,
    calibration_labels: np.ndarray,
    classes: int,
    review_rate: float,
) -> float | None:
    """What the check does with a class it has never seen, on this library's own pictures:
    each class in turn is left out of the fit and the threshold (set on the other classes'
    calibration pictures), and the share of its calibration pictures the check lets through
    is measured; the mean over classes. `train`: N x views x FEATURES; `calibration`: M x
    FEATURES. None with fewer than three classes. Only the check: the class threshold sends
    some of the rest to review too."""
    shares = []
    if classes < 3:
        return None
    views = train.shape[1]
    for left_out in range(classes):
        kept = train_labels != left_out
        others = calibration_labels != left_out
        if not (~others).any() or not others.any():
            continue
        relabel = np.cumsum(np.arange(classes) != left_out) - 1  # the others, renumbered
        fitted = mahalanobis_fit(
            train[kept].reshape(-1, train.shape[2]),
            relabel[train_labels[kept]].repeat(views),
            classes - 1,
        )
        threshold = unknown_threshold(mahalanobis_score(fitted, calibration[others]), review_rate)
        if threshold is None:
            continue
        shares.append(float((mahalanobis_score(fitted, calibration[~others]) <= threshold).mean()))
    return float(np.mean(shares)) if shares else None
