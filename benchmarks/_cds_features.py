"""Pooled frozen features of every picture of clothing-dataset-small, through the trainer's
feature cache (the fast model's path): shared by bench_unknown.py and bench_promise.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from sortbox.trainer.data import Example
from sortbox.trainer.features import FeatureCache
from sortbox.trainer.model import imagenet_network

SPLITS = ("train", "validation", "test")


def dataset_features(
    dataset: Path, cache_dir: Path, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(features N x 2 x 1280 float32: plain and mirrored view, class index N, split index N,
    class names), in a fixed order: split, class, file name."""
    classes = sorted(p.name for p in (dataset / "train").iterdir() if p.is_dir())
    examples, labels, splits = [], [], []
    for s, split in enumerate(SPLITS):
        for c, name in enumerate(classes):
            for path in sorted((dataset / split / name).iterdir()):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                examples.append(Example(path, digest, name, "dataset"))
                labels.append(c)
                splits.append(s)
    network = imagenet_network("lite0")
    cache = FeatureCache(cache_dir, network, os.cpu_count() or 1, torch.device("cpu"))
    features = cache.features(examples, "features" if progress else "")
    return features, np.array(labels), np.array(splits), classes
