"""`sortbox init`: a working sorter before anyone labels anything.

The ImageNet-pretrained EfficientNet-Lite0 with its 1,000 classes summed into a handful of
everyday folders (trainer/imagenet_groups.py). The ONNX graph outputs log group probabilities,
so the daemon's softmax recovers exactly the summed probabilities.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.manifest import current_version
from sortbox.daemon.sorting.preprocess import Preprocessing
from sortbox.trainer.export import check_parity, export_onnx
from sortbox.trainer.imagenet_groups import imagenet_groups
from sortbox.trainer.model import EfficientNetLite, imagenet_network
from sortbox.trainer.publish import new_version, publish

# No labelled data to calibrate on: a picture is auto-sorted when its folder's summed ImageNet
# probability is at least this; everything less certain goes to needs_review.
DEFAULT_THRESHOLD = 0.6


class GroupedImageNet(torch.nn.Module):
    def __init__(self, network: EfficientNetLite, groups: dict[str, list[int]]) -> None:
        super().__init__()
        self.network = network
        membership = torch.zeros(1000, len(groups))
        for column, indices in enumerate(groups.values()):
            membership[indices, column] = 1.0
        self.register_buffer("membership", membership)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = self.network(x).softmax(dim=-1)
        return torch.log(probabilities @ self.membership + 1e-12)


def create_default_model(settings: Settings) -> str:
    torch.manual_seed(0)
    groups = imagenet_groups()
    spec = Preprocessing()
    model = GroupedImageNet(imagenet_network("lite0"), groups).eval()
    version = new_version(settings.models_dir, "default")
    make_current = current_version(settings.models_dir) is None
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.models_dir, prefix=".scratch-") as scratch:
        onnx_path = export_onnx(model, spec.crop, Path(scratch) / "model.onnx")
        probe = (
            np.random.default_rng(0).uniform(-1, 1, (4, 3, spec.crop, spec.crop)).astype(np.float32)
        )
        check_parity(model, onnx_path, probe, 1.0)
        publish(
            settings.models_dir,
            onnx_path,
            {
                "version": version,
                "created": datetime.now(UTC),
                "kind": "default",
                "classes": list(groups),
                "preprocessing": spec.model_dump(),
                "temperature": 1.0,
                "thresholds": dict.fromkeys(groups, DEFAULT_THRESHOLD),
                "metrics": {"note": "ImageNet classes grouped by hand; not evaluated on your data"},
            },
            make_current=make_current,
            keep=settings.train.keep_versions,
        )
    if not make_current:
        print(
            f"published {version}; the current model stays "
            f"(to switch: sortbox models rollback {version})"
        )
    return version
