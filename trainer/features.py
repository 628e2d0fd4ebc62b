"""Cached trunk features, so a retrain after a few corrections costs seconds, not minutes.

The frozen trunk of EfficientNet-Lite0 (everything before the fine-tuned tail) runs once per
picture and view, through ONNX Runtime (about twice as fast as PyTorch on 2 CPU cores), and its
output (192 x 7 x 7, float16) is stored under the picture's sha256. View 0 is the plain
preprocessed picture; views 1..N are deterministic augmentations of it, for fine-tuning.
The cache key covers everything that changes the numbers: weights, preprocessing, views, seed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image, ImageEnhance
from tqdm import tqdm

from daemon.atomic import replacing
from daemon.classify import open_session
from daemon.manifest import sha256_file
from daemon.preprocess import Preprocessing, decode_rgb, normalise, resize_and_crop
from trainer.data import Example
from trainer.export import export_onnx
from trainer.model import TAIL_BLOCKS, EfficientNetLite0, weights_file

_FORMAT = 3  # bump when the way features are made changes


class _Trunk(torch.nn.Module):
    def __init__(self, network: EfficientNetLite0) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.trunk(x)


class FeatureCache:
    def __init__(
        self,
        cache_dir: Path,
        network: EfficientNetLite0,
        spec: Preprocessing,
        views: int,
        seed: int,
        threads: int,
        max_pixels: int = 100_000_000,
    ) -> None:
        self.spec, self.views, self.seed, self.max_pixels = spec, views, seed, max_pixels
        recipe = {
            "format": _FORMAT,
            "weights": sha256_file(weights_file())[:16],
            "tail_blocks": TAIL_BLOCKS,
            "spec": spec.model_dump(),
            "views": views,
            "seed": seed,
        }
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = cache_dir / "features" / key
        self.folder.mkdir(parents=True, exist_ok=True)
        _remove_other_recipes(self.folder)
        self._network, self._threads = network, threads
        self._session: ort.InferenceSession | None = None

    def _trunk_session(self) -> ort.InferenceSession:
        if self._session is None:
            path = self.folder / "trunk.onnx"
            if not path.exists():
                export_onnx(_Trunk(self._network), self.spec.crop, path, output="maps")
            self._session = open_session(path, self._threads)
        return self._session

    def _path(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}.npy"

    def maps(self, examples: list[Example], with_views: bool, progress: str = "") -> np.ndarray:
        """N x (1 + views, or 1) x C x 7 x 7 float16, computing what the cache lacks."""
        missing = [e for e in examples if not self._path(e.sha256).exists()]
        if missing:
            self._compute(missing, progress)
        stacked = [np.load(self._path(e.sha256)) for e in examples]
        if not with_views:
            stacked = [m[:1] for m in stacked]
        return np.stack(stacked) if stacked else np.zeros((0, 1, 0, 0, 0), np.float16)

    def _compute(self, examples: list[Example], progress: str) -> None:
        session = self._trunk_session()
        for example in tqdm(
            examples, desc=progress or "features", unit="img", disable=not progress
        ):
            image = decode_rgb(example.path.read_bytes(), self.spec.resize, self.max_pixels)
            inputs = np.stack([self._view(image, example.sha256, v) for v in range(1 + self.views)])
            (maps,) = session.run(None, {"input": inputs})
            self._store(example.sha256, maps.astype(np.float16))

    def _view(self, image: Image.Image, sha256: str, view: int) -> np.ndarray:
        if view == 0:
            return normalise(resize_and_crop(image, self.spec), self.spec)
        rng = np.random.default_rng([int(sha256[:16], 16), view, self.seed])
        return normalise(augment(image, self.spec.crop, rng), self.spec)

    def _store(self, sha256: str, maps: np.ndarray) -> None:
        path = self._path(sha256)
        path.parent.mkdir(exist_ok=True)
        with replacing(path) as temporary, temporary.open("wb") as fh:
            np.save(fh, maps)


def _remove_other_recipes(keep: Path) -> None:
    """Features made another way (an older trainer, other views or seed) are never read again;
    without this the cache would grow by a full copy at every such change. Only called under
    the training lock."""
    for folder in keep.parent.iterdir():
        if folder != keep and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def augment(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """Random resized crop (50-100% of the area), horizontal flip, mild colour jitter."""
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(0.5, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            break
    else:
        w = h = min(width, height)
        left, top = (width - w) // 2, (height - h) // 2
    view = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhancer(view).enhance(float(rng.uniform(0.8, 1.2)))
    return view
