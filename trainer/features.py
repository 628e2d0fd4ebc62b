"""The frozen part of the network, run fast, and the fast model's cached features.

The frozen part (stem and early stages) is never trained, so it needs no autograd: on the CPU
ONNX Runtime runs it (about twice as fast as PyTorch on 2 cores); on a GPU, PyTorch does.

The fast model is a linear head on the ImageNet network's pooled features. Those depend only
on the picture, so they are computed once per picture (plain and mirrored) and stored under
its sha256: a retrain after a few corrections costs seconds, not minutes. The cache key covers
everything that changes the numbers: backbone, weights, split point, preprocessing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sortbox.daemon.layout import replacing
from sortbox.daemon.sorting.classify import open_session
from sortbox.daemon.sorting.manifest import sha256_file
from sortbox.daemon.sorting.preprocess import prepare
from sortbox.trainer.data import Example
from sortbox.trainer.export import export_onnx
from sortbox.trainer.model import EfficientNetLite, Frozen, weights_file
from tqdm import tqdm

_FORMAT = 4  # bump when the way features are made changes
VIEWS = 2  # the picture and its mirror image


class FrozenPart:
    """images (N x 3 x crop x crop float32) → frozen maps, as a torch tensor on `device`."""

    def __init__(
        self, network: EfficientNetLite, folder: Path, threads: int, device: torch.device
    ) -> None:
        self.device = device
        self._session: ort.InferenceSession | None = None
        self._module: Frozen | None = None
        if device.type == "cpu":
            path = folder / "frozen.onnx"
            if not path.exists():
                export_onnx(Frozen(network), network.backbone.crop, path, output="maps")
            self._session = open_session(path, threads)
        else:  # a copy on the GPU: the caller's network stays on the CPU, where it is exported
            self._module = Frozen(copy.deepcopy(network)).to(device).eval()

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        if self._session is not None:
            (maps,) = self._session.run(None, {"input": images})
            return torch.from_numpy(maps).contiguous(memory_format=torch.channels_last)
        assert self._module is not None
        with torch.no_grad():
            return self._module(torch.from_numpy(images).to(self.device))


class FeatureCache:
    def __init__(
        self,
        cache_dir: Path,
        network: EfficientNetLite,
        threads: int,
        device: torch.device,
        max_pixels: int = 100_000_000,
    ) -> None:
        backbone = network.backbone
        self.spec, self.max_pixels = backbone.preprocessing, max_pixels
        recipe = {
            "format": _FORMAT,
            "backbone": backbone.name,
            "weights": sha256_file(weights_file(backbone))[:16],
            "split": network.split,
            "spec": self.spec.model_dump(),
        }
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = cache_dir / "features" / key
        self.folder.mkdir(parents=True, exist_ok=True)
        _remove_other_recipes(self.folder)
        self._network = network
        self.frozen = FrozenPart(network, self.folder, threads, device)

    def _path(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}.npy"

    def features(self, examples: list[Example], progress: str = "") -> np.ndarray:
        """N x VIEWS x FEATURES float32, computing what the cache lacks."""
        missing = [e for e in examples if not self._path(e.sha256).exists()]
        for start in tqdm(
            range(0, len(missing), 16), desc=progress or "features", disable=not progress
        ):
            self._compute(missing[start : start + 16])
        stacked = [np.load(self._path(e.sha256)).astype(np.float32) for e in examples]
        return np.stack(stacked) if stacked else np.zeros((0, VIEWS, 0), np.float32)

    def _compute(self, examples: list[Example]) -> None:
        views = []
        for example in examples:
            plain = prepare(
                example.path.read_bytes(), self.spec, self.max_pixels, example.path.name
            )
            views += [plain, np.ascontiguousarray(plain[:, :, ::-1])]
        self._network.eval()
        with torch.no_grad():
            maps = self.frozen(np.stack(views)).cpu()  # the network is on the CPU
            pooled = self._network.tail(maps).numpy()
        for n, example in enumerate(examples):
            self._store(example.sha256, pooled[n * VIEWS : (n + 1) * VIEWS].astype(np.float16))

    def _store(self, sha256: str, features: np.ndarray) -> None:
        path = self._path(sha256)
        path.parent.mkdir(exist_ok=True)
        with replacing(path) as temporary, temporary.open("wb") as fh:
            np.save(fh, features)


def _remove_other_recipes(keep: Path) -> None:
    """Features made another way (an older trainer, another backbone) are never read again;
    without this the cache would grow by a full copy at every such change. Only called under
    the training lock."""
    for folder in keep.parent.iterdir():
        if folder != keep and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
